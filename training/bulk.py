"""Bulk scoring on Ray Data: a manifest of (video, prompt) rows in, a Parquet file of scores out.

    python -m training.bulk --checkpoint DIR --manifest videos.csv|videos.parquet --out scores.parquet \
        [--data-root DIR] [--actors MAX] [--min-actors MIN] [--batch-size N] [--device cpu|cuda|npu] \
        [--dtype fp32|bf16|fp16] [--no-norm] [--address auto|local|ray://HEAD:10001]

Needs the ``ray`` extra: ``pip install '.[ray]'``.

The manifest has a ``video`` column (a path, absolute or relative to ``--data-root``, which defaults to
the manifest's folder) and a ``prompt`` column; optional ``fps``, ``num_frames`` and ``max_pixels``
columns override the checkpoint's sampling per row (empty cells keep the default). Other columns are
copied to the output unchanged, in the manifest's row order, followed by one column per score dimension
(``VQ``, ``MQ``, ``TA``), ``Overall``, ``error_code`` and ``error`` (null when the row was scored),
``sampled_frames`` and ``num_tokens``. A row that fails (unreadable video, bad prompt, failed forward
pass) keeps null scores and its error: no row is ever dropped.

The pipeline, all in Ray Data:

    manifest rows ─► prepare (CPU tasks)  decode + sample + resize + processor, with the same
                 │                        model.inputs.InputBuilder as the service; the prepared
                 │                        tensors travel as numpy arrays in Arrow blocks
                 ─► score (actor pool)    ActorPoolStrategy(min_size, max_size): each actor loads
                 │                        the checkpoint once and runs padded forward passes
                 ─► OUT.parquet           written by the driver, + OUT.bulk.json (config and summary)

Locally (``--address local``, or no Ray cluster running) Ray starts on this machine. On a cluster, run
the same command on the head node or as a Ray job (``--address auto``): the checkpoint and the videos
must be readable at the same paths on every node (a shared filesystem), and the image or runtime
environment must have this package installed (``docker build --build-arg EXTRAS=ray``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.errors import InvalidInputError, VideoRewardError
from model.inputs import InputBuilder, PreparedItem
from model.reward_config import RewardConfig
from training.pairs import resolve_path

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video", "prompt")
SAMPLING_COLUMNS = ("fps", "num_frames", "max_pixels")
STATUS_COLUMNS = ("error_code", "error", "sampled_frames", "num_tokens")
INSTALL_HINT = "Ray is not installed: bulk scoring needs the ray extra, `pip install '.[ray]'` (or `pip install 'ray[data]'`)"


class BulkError(InvalidInputError):
    """The bulk job's configuration or manifest is unusable."""

    code = "bulk_invalid"


def require_ray() -> Any:
    """Import Ray lazily: it is an optional extra, not a dependency of the service or the library."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as e:
        raise BulkError(INSTALL_HINT) from e
    return ray


def _arrow() -> Any:
    """pyarrow (it comes with the ray extra), imported on first use like Ray."""
    try:
        importlib.import_module("pyarrow.csv")
        importlib.import_module("pyarrow.parquet")
        return importlib.import_module("pyarrow")
    except ImportError as e:
        raise BulkError(INSTALL_HINT) from e


@dataclass
class BulkConfig:
    """One bulk scoring job. Saved, with a summary, beside the output as ``<out>.bulk.json``."""

    checkpoint: str
    manifest: str
    out: str
    data_root: str | None = None  # default: the manifest's folder
    device: str = "cpu"  # cpu, cuda or npu: one device per scoring actor
    dtype: str = "fp32"
    normalize: bool | None = None  # None: the checkpoint's setting
    max_actors: int | None = None  # None: 1 on cpu, the cluster's GPU / NPU count otherwise
    min_actors: int = 1
    batch_size: int = 8  # rows per forward-pass call of an actor
    max_batch_tokens: int = 32768  # padded tokens per forward pass; a call's rows are split to fit
    prepare_batch_size: int = 4  # rows per prepare call (prepared tensors are large: keep it small)
    actor_cpus: float = 1.0
    prepare_cpus: float = 1.0
    address: str | None = None  # None: Ray's default (RAY_ADDRESS, else a local Ray); "local"; "auto"; ray://...

    def validate(self) -> None:
        if not Path(self.checkpoint).is_dir():
            raise BulkError(f"checkpoint directory {self.checkpoint} does not exist; make one with `python -m model.tiny DIR`")
        RewardConfig.load(self.checkpoint)  # a clear error when it is not a serving checkpoint
        if not Path(self.manifest).is_file():
            raise BulkError(f"manifest {self.manifest} does not exist")
        if Path(self.manifest).suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise BulkError(f"manifest {self.manifest} must be a .csv or .parquet file")
        if Path(self.out).suffix.lower() != ".parquet":
            raise BulkError(f"--out {self.out} must end in .parquet")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise BulkError(f"--data-root {self.data_root} is not a directory")
        if self.device not in ("cpu", "cuda", "npu"):
            raise BulkError(f"--device must be cpu, cuda or npu (Ray gives each actor its own device), got {self.device!r}")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise BulkError(f"--dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.min_actors < 1 or (self.max_actors is not None and self.max_actors < self.min_actors):
            raise BulkError(f"need 1 <= --min-actors <= --actors, got {self.min_actors} and {self.max_actors}")
        for name in ("batch_size", "prepare_batch_size", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise BulkError(f"--{name.replace('_', '-')} must be >= 1")
        if self.actor_cpus <= 0 or self.prepare_cpus <= 0:
            raise BulkError("--actor-cpus and --prepare-cpus must be > 0")

    @property
    def root(self) -> Path:
        return Path(self.data_root) if self.data_root else Path(self.manifest).resolve().parent


@dataclass
class BulkSummary:
    rows: int
    scored: int
    errors: dict[str, int]
    seconds: float
    out: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the manifest -------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> pa.Table:
    """The manifest as an Arrow table, column types as written (CSV: text columns stay text, "NA" included)."""
    pa = _arrow()
    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = pa.csv.read_csv(
            path, convert_options=pa.csv.ConvertOptions(column_types={c: pa.string() for c in REQUIRED_COLUMNS})
        )
    else:
        table = pa.parquet.read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise BulkError(f"manifest {path} has no column {missing}; it has {table.column_names}. Required: video, prompt")
    for c in SAMPLING_COLUMNS:
        if c in table.column_names and not (pa.types.is_integer(table[c].type) or pa.types.is_floating(table[c].type) or pa.types.is_null(table[c].type)):
            raise BulkError(f"manifest column {c!r} must be numeric (empty cells keep the default), got {table[c].type}")
    return table


def _work_table(manifest: pa.Table) -> pa.Table:
    """What travels through Ray: the row number, the inputs, and sampling overrides as float64 (NaN: default)."""
    pa = _arrow()
    n = manifest.num_rows
    cols: dict[str, Any] = {
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "video": manifest["video"].cast(pa.string()),
        "prompt": manifest["prompt"].cast(pa.string()),
    }
    for c in SAMPLING_COLUMNS:
        # nulls (empty cells) become NaN: "keep the checkpoint's default"
        values = manifest[c].cast(pa.float64()).to_numpy(zero_copy_only=False) if c in manifest.column_names else np.full(n, np.nan)
        cols[c] = pa.array(values, type=pa.float64())
    return pa.table(cols)


def _blocks(table: pa.Table) -> list[pa.Table]:
    """Small blocks for small manifests (parallel prepare tasks), up to 64 rows for big ones."""
    n = table.num_rows
    size = max(1, min(64, math.ceil(n / 64)))
    return [table.slice(i, size) for i in range(0, n, size)]


# --- prepare: CPU tasks -------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _builder(checkpoint: str) -> InputBuilder:
    """One InputBuilder per worker process and checkpoint (Ray reuses worker processes across tasks)."""
    from transformers import AutoProcessor

    return InputBuilder(AutoProcessor.from_pretrained(checkpoint), RewardConfig.load(checkpoint))


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of arrays of different shapes: Ray stores it as a variable-shaped tensor column."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def _override(value: float, as_int: bool) -> float | int | None:
    if value is None or math.isnan(value):
        return None
    return int(value) if as_int else float(value)


def prepare_batch(batch: dict[str, np.ndarray], *, checkpoint: str, data_root: str) -> dict[str, np.ndarray]:
    """Decode and prepare rows (Ray Data map_batches, numpy format). A failing row gets an error, not an exception."""
    builder = _builder(checkpoint)
    n = len(batch["row"])
    ids, types, pixels, grids = [], [], [], []
    codes, messages, frames = [], [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        code, message = "", ""
        try:
            path = resolve_path(Path(data_root), batch["video"][i])
            if not path.is_file():
                raise InvalidInputError(f"video {path} does not exist (paths are relative to --data-root {data_root})")
            prompt = batch["prompt"][i]
            item = builder.prepare(
                path,
                prompt if isinstance(prompt, str) else "",
                fps=_override(batch["fps"][i], as_int=False),
                num_frames=_override(batch["num_frames"][i], as_int=True),
                max_pixels=_override(batch["max_pixels"][i], as_int=True),
            )
        except VideoRewardError as e:
            code, message = e.code, e.message
        except Exception as e:  # a bug or an odd file: record it on the row, keep the job going
            logger.exception("row %d: unexpected error while preparing %r", batch["row"][i], batch["video"][i])
            code, message = "internal_error", f"{type(e).__name__}: {e}"
        if code:
            ids.append(np.zeros(0, dtype=np.int64))
            types.append(np.zeros(0, dtype=np.int32))
            pixels.append(np.zeros((0, 0), dtype=np.float32))
            grids.append(np.zeros(3, dtype=np.int64))
        else:
            ids.append(item.input_ids.numpy())
            types.append(item.mm_token_type_ids.numpy())
            pixels.append(item.pixel_values_videos.numpy())
            grids.append(item.video_grid_thw.numpy())
            frames[i] = item.meta["num_frames"]
        codes.append(code)
        messages.append(message)
    return {
        "row": batch["row"],
        "input_ids": _ragged(ids),
        "mm_token_type_ids": _ragged(types),
        "pixel_values_videos": _ragged(pixels),
        "video_grid_thw": np.stack(grids),
        "error_code": np.array(codes, dtype=object),
        "error": np.array(messages, dtype=object),
        "sampled_frames": frames,
    }


# --- score: the actor pool ---------------------------------------------------------------------
def _tensor(a: np.ndarray) -> torch.Tensor:
    # Arrow-backed arrays are read-only; torch wants writable memory.
    return torch.from_numpy(np.require(a, requirements="W"))


def _token_groups(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped so each group's padded size (longest x count) fits max_tokens; sorted by length to pad less."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        groups.append(current)
    return groups


class ScoreActor:
    """Loads the checkpoint once per actor; scores prepared rows in padded forward passes."""

    def __init__(self, checkpoint: str, device: str, dtype: str, normalize: bool | None, max_batch_tokens: int) -> None:
        from model.scorer import VideoRewardScorer

        t0 = time.perf_counter()
        self.scorer = VideoRewardScorer.from_pretrained(checkpoint, device=device, dtype=dtype)
        self.normalize = self.scorer.default_normalize() if normalize is None else normalize
        self.dims = list(self.scorer.reward_config.eval_dims)
        self.max_batch_tokens = max_batch_tokens
        logger.info("actor loaded %s on %s in %.1f s", checkpoint, self.scorer.device, time.perf_counter() - t0)

    def _forward(self, items: list[PreparedItem]) -> list[dict[str, float] | VideoRewardError]:
        """Scores for items; when a batch fails, each item is retried alone so one bad item fails alone."""
        try:
            return self.scorer.postprocess(self.scorer.forward(items), self.normalize)
        except Exception as e:
            if len(items) == 1:
                logger.exception("forward pass failed")
                return [VideoRewardError(f"forward pass failed: {type(e).__name__}: {e}", code="inference_failed")]
            logger.warning("a batch of %d failed (%s); retrying its items one at a time", len(items), e)
            return [r for it in items for r in self._forward([it])]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["row"])
        codes = [c if isinstance(c, str) else "" for c in batch["error_code"]]  # "": prepared fine
        messages = [m if isinstance(m, str) else "" for m in batch["error"]]
        scores = {d: np.full(n, np.nan) for d in [*self.dims, "Overall"]}
        ok = [i for i in range(n) if not codes[i]]
        items = {
            i: PreparedItem(
                input_ids=_tensor(batch["input_ids"][i]),
                mm_token_type_ids=_tensor(batch["mm_token_type_ids"][i]),
                pixel_values_videos=_tensor(batch["pixel_values_videos"][i]),
                video_grid_thw=_tensor(batch["video_grid_thw"][i]),
            )
            for i in ok
        }
        lengths = [items[i].num_tokens for i in ok]
        for group in _token_groups(lengths, self.max_batch_tokens):
            rows = [ok[g] for g in group]
            for i, result in zip(rows, self._forward([items[i] for i in rows]), strict=True):
                if isinstance(result, VideoRewardError):
                    codes[i], messages[i] = result.code, result.message
                else:
                    for d, v in result.items():
                        scores[d][i] = v
        num_tokens = np.array([items[i].num_tokens if i in items else 0 for i in range(n)], dtype=np.int64)
        return {
            "row": batch["row"],
            **scores,
            "error_code": np.array(codes, dtype=object),
            "error": np.array(messages, dtype=object),
            "sampled_frames": batch["sampled_frames"],
            "num_tokens": num_tokens,
        }


# --- the job --------------------------------------------------------------------------------------
def connect(ray: Any, address: str | None) -> bool:
    """Start or join Ray unless this process already has; True when we started it (and should shut it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local")
    else:
        ray.init(address=address)  # None: RAY_ADDRESS, else a new local Ray
    return True


def _actor_resources(ray: Any, cfg: BulkConfig) -> tuple[int, dict[str, Any]]:
    """(max actors, ray_remote_args of each actor) for the device."""
    kind = cfg.device
    remote: dict[str, Any] = {"num_cpus": cfg.actor_cpus}
    if kind == "cpu":
        return (cfg.max_actors or 1), remote
    resource = "GPU" if kind == "cuda" else "NPU"
    available = int(ray.cluster_resources().get(resource, 0))
    if available < 1:
        raise BulkError(
            f"--device {kind} but the Ray cluster has no {resource}: start Ray on hosts with {resource}s "
            f"(`ray start --resources` for NPUs) or use --device cpu"
        )
    if kind == "cuda":
        remote["num_gpus"] = 1
    else:
        remote["resources"] = {"NPU": 1}
    return (cfg.max_actors or available), remote


def _prepare_remote_args() -> dict[str, Any]:
    return {"scheduling_strategy": "SPREAD"}


def build_dataset(ray: Any, cfg: BulkConfig, work: pa.Table) -> Any:
    """The lazy Ray Data pipeline: prepare in CPU tasks, score in an autoscaling actor pool."""
    ds = ray.data.from_arrow(_blocks(work))
    ds = ds.map_batches(
        prepare_batch,
        fn_kwargs={"checkpoint": str(Path(cfg.checkpoint).resolve()), "data_root": str(cfg.root.resolve())},
        batch_size=cfg.prepare_batch_size,
        batch_format="numpy",
        num_cpus=cfg.prepare_cpus,
        # Spread decoding over the cluster's CPUs. Args given by a function also keep Ray from fusing
        # decoding into the scoring actors (it fuses ops whose args are known to match): the actors
        # only run forward passes while CPU tasks decode the next rows.
        ray_remote_args_fn=_prepare_remote_args,
    )
    max_actors, remote = _actor_resources(ray, cfg)
    min_actors = min(cfg.min_actors, max_actors)
    return ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "checkpoint": str(Path(cfg.checkpoint).resolve()),
            "device": cfg.device,
            "dtype": cfg.dtype,
            "normalize": cfg.normalize,
            "max_batch_tokens": cfg.max_batch_tokens,
        },
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        **remote,
    )


def _results_table(batches: list[pa.Table], n: int, dims: list[str]) -> pa.Table:
    """Results in manifest order, every row present exactly once; scores null where the row failed."""
    pa = _arrow()
    if not batches:
        if n:
            raise RuntimeError(f"bulk scoring returned no rows for a manifest of {n}; this is a bug, please report it")
        floats = {d: pa.array([], pa.float64()) for d in [*dims, "Overall"]}
        texts = {c: pa.array([], pa.string()) for c in ("error_code", "error")}
        ints = {c: pa.array([], pa.int64()) for c in ("sampled_frames", "num_tokens")}
        return pa.table({**floats, **texts, **ints})
    table = pa.concat_tables(batches, promote_options="default")
    rows = table["row"].to_numpy()
    if len(rows) != n or not np.array_equal(np.sort(rows), np.arange(n)):
        raise RuntimeError(f"bulk scoring returned {len(rows)} rows for a manifest of {n}; this is a bug, please report it")
    table = table.take(pa.array(np.argsort(rows, kind="stable")))
    code = np.array([c or None for c in table["error_code"].to_pylist()], dtype=object)
    failed = np.array([c is not None for c in code])
    out: dict[str, Any] = {}
    for d in [*dims, "Overall"]:
        out[d] = pa.array(table[d].to_numpy(), mask=failed, type=pa.float64())
    out["error_code"] = pa.array(code, type=pa.string())
    out["error"] = pa.array([m if f else None for m, f in zip(table["error"].to_pylist(), failed, strict=True)], type=pa.string())
    out["sampled_frames"] = pa.array(table["sampled_frames"].to_numpy(), mask=failed, type=pa.int64())
    out["num_tokens"] = pa.array(table["num_tokens"].to_numpy(), mask=failed, type=pa.int64())
    return pa.table(out)


def run_bulk(cfg: BulkConfig) -> BulkSummary:
    """Score every manifest row; write ``cfg.out`` (Parquet) and ``<out>.bulk.json``."""
    cfg.validate()
    ray = require_ray()
    t0 = time.perf_counter()
    manifest = read_manifest(cfg.manifest)
    dims = list(RewardConfig.load(cfg.checkpoint).eval_dims)
    output_columns = [*dims, "Overall", *STATUS_COLUMNS]
    clash = [c for c in manifest.column_names if c in output_columns]
    if clash:
        logger.warning("manifest columns %s are output columns: replaced by this run's values", clash)
        manifest = manifest.drop_columns(clash)
    n = manifest.num_rows
    logger.info("scoring %d rows of %s with %s on %s", n, cfg.manifest, cfg.checkpoint, cfg.device)
    started = connect(ray, cfg.address)
    try:
        batches: list[pa.Table] = []
        if n:
            ds = build_dataset(ray, cfg, _work_table(manifest))
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                batches.append(batch)
    finally:
        if started:
            ray.shutdown()
    results = _results_table(batches, n, dims)
    final = manifest
    for name in results.column_names:
        final = final.append_column(name, results[name])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _arrow().parquet.write_table(final, out)
    errors = Counter(c for c in results["error_code"].to_pylist() if c)
    summary = BulkSummary(
        rows=n, scored=n - sum(errors.values()), errors=dict(errors), seconds=round(time.perf_counter() - t0, 3), out=str(out)
    )
    meta = {"config": dataclasses.asdict(cfg), "summary": summary.to_dict(), "ray": getattr(ray, "__version__", None)}
    out.with_suffix(".bulk.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %s: %d rows, %d scored, errors %s, %.1f s", out, n, summary.scored, summary.errors or "none", summary.seconds)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.bulk", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="serving checkpoint directory (readable on every node)")
    p.add_argument("--manifest", required=True, help="CSV or Parquet with columns video, prompt [, fps, num_frames, max_pixels]")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--data-root", default=None, help="folder relative video paths start from (default: the manifest's folder)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"], help="one device per scoring actor")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-norm", action="store_true", help="raw scores, without the checkpoint's normalisation")
    p.add_argument("--actors", type=int, default=None, help="most scoring actors (default: 1 on cpu, every GPU/NPU otherwise)")
    p.add_argument("--min-actors", type=int, default=1, help="fewest scoring actors (the pool autoscales in between)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward-pass call of an actor")
    p.add_argument("--max-batch-tokens", type=int, default=32768, help="padded tokens per forward pass")
    p.add_argument("--prepare-batch-size", type=int, default=4, help="rows per CPU prepare call")
    p.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs reserved per scoring actor")
    p.add_argument("--prepare-cpus", type=float, default=1.0, help="CPUs reserved per prepare task")
    p.add_argument("--address", default=None, help="Ray address: auto (a running cluster), local, ray://HEAD:10001; default: RAY_ADDRESS or local")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    cfg = BulkConfig(
        checkpoint=args.checkpoint, manifest=args.manifest, out=args.out, data_root=args.data_root, device=args.device,
        dtype=args.dtype, normalize=False if args.no_norm else None, max_actors=args.actors, min_actors=args.min_actors,
        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, prepare_batch_size=args.prepare_batch_size,
        actor_cpus=args.actor_cpus, prepare_cpus=args.prepare_cpus, address=args.address,
    )
    try:
        summary = run_bulk(cfg)
    except VideoRewardError as e:
        print(json.dumps({"error": e.to_dict()}), file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    # Run the importable module's main: Ray pickles prepare_batch and ScoreActor by reference, and
    # workers can import training.bulk, not this __main__.
    from training.bulk import main as _main

    sys.exit(_main())
