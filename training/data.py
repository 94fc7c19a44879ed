"""Preference pairs for training: rows → (A, B) prepared items, labels and MOS; the pair collator.

Every video goes through :mod:`model.video` and :class:`model.inputs.InputBuilder`,
the code serving uses, with the sampling options that end up in the exported
checkpoint, so a trained model sees at serving time exactly what it saw in training.

Row problems (a missing or unreadable file, an unusable prompt, no valid label,
a bad MOS or sampling cell) are found at start where that is cheap and raise a
:class:`DataError` naming the CSV line; with ``skip_bad_rows`` they are skipped,
counted and logged instead. A label other than A / B / same in one dimension is
masked out of the loss for that dimension only, counted and reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as tvf
from tqdm.auto import tqdm

from model.errors import InvalidInputError, VideoRewardError
from model.inputs import InputBuilder, PreparedItem, collate
from model.video import DecodedVideo, SamplingConfig, VideoMetadata, load_video, probe, sample_indices

from .config import AugmentConfig
from .pairs import PairTable

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"
MAX_LISTED_BAD_ROWS = 10


class DataError(InvalidInputError):
    """A training or evaluation CSV row cannot be used."""

    code = "invalid_training_data"


@dataclass(frozen=True)
class BadRow:
    row: int  # 0-based data row; the CSV line is row + 2 (after the header)
    reason: str

    def describe(self) -> str:
        return f"line {self.row + 2} (row {self.row}): {self.reason}"


# ---------------------------------------------------------------------------
# Cache of prepared items
# ---------------------------------------------------------------------------
class PreparedCache:
    """Prepared items (or decoded frames, when augmenting) on disk, one safetensors file per key.

    The key hashes the video's bytes, the sampling options, the full model text and
    the processor's settings, so any change to the inputs or the preprocessing
    misses instead of serving stale tensors. Files are written to a temporary name
    and renamed, so concurrent DataLoader workers and ranks never read half a file.
    Only tensors are stored (safetensors), never pickled objects.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                metadata = dict(f.metadata() or {})
        except (SafetensorError, OSError) as e:
            logger.warning("ignoring unreadable cache entry %s (%s); it will be rebuilt", path, e)
            self.misses += 1
            return None
        self.hits += 1
        return tensors, metadata

    def put(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def processor_signature(builder: InputBuilder) -> str:
    """A digest of everything in the processor that shapes a prepared item."""
    proc = builder.processor
    parts = [
        proc.video_processor.to_json_string() if hasattr(proc, "video_processor") else "",
        str(len(proc.tokenizer)),
        str(getattr(proc, "chat_template", "")),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------
def augment_frames(frames: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Frame shuffle and colour jitter on (T, C, H, W) uint8 frames, drawn from ``gen``.

    The same jitter applies to every frame of a video, so jitter changes how the
    video looks without adding flicker (which would be a motion artefact).
    """

    def coin(p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=gen)) < p

    def factor(span: float) -> float:
        return 1.0 + (float(torch.rand((), generator=gen)) * 2 - 1) * span

    if coin(cfg.frame_shuffle_p):
        frames = frames[torch.randperm(frames.shape[0], generator=gen)]
    if coin(cfg.color_jitter_p):
        frames = tvf.adjust_brightness(frames, factor(cfg.brightness))
        frames = tvf.adjust_contrast(frames, factor(cfg.contrast))
        frames = tvf.adjust_saturation(frames, factor(cfg.saturation))
    return frames.contiguous()


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------
def read_mos(frame: pd.DataFrame, dims: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """``MOS_A_<dim>`` / ``MOS_B_<dim>`` as (N, D) float arrays (NaN where absent or blank).

    Returns the arrays and {row: reason} for cells that hold something other than a number.
    """
    n = len(frame)
    out = {"A": np.full((n, len(dims)), np.nan), "B": np.full((n, len(dims)), np.nan)}
    bad: dict[int, str] = {}
    for side in ("A", "B"):
        for j, dim in enumerate(dims):
            col = f"MOS_{side}_{dim}"
            if col not in frame.columns:
                continue
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
            raw = frame[col]
            for i in np.flatnonzero(np.isnan(values)):
                cell = raw.iloc[i]
                if isinstance(cell, str) and cell.strip():
                    bad.setdefault(int(i), f"{col}={cell!r} is not a number")
            out[side][:, j] = values
    return out["A"], out["B"], bad


def _seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of tuples varies across processes)."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class DataReport:
    """What reading a pairs CSV kept, masked and dropped."""

    rows: int
    used: int
    bad_rows: list[BadRow] = field(default_factory=list)
    invalid_labels: dict[str, int] = field(default_factory=dict)
    dropped_ties: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bad_rows"] = [b.describe() for b in self.bad_rows]
        return d


class PairDataset(Dataset):
    """One preference pair per item: ``{"a", "b": PreparedItem, "labels", "mos_a", "mos_b": (D,), "row"}``."""

    def __init__(
        self,
        table: PairTable,
        builder: InputBuilder,
        dims: Sequence[str],
        *,
        csv_name: str = "pairs.csv",
        row_sampling: str = "none",
        use_tied_data: bool = True,
        skip_bad_rows: bool = False,
        strict_labels: bool = False,
        check_videos: bool = True,
        require_mos: bool = False,
        require_labels: bool = True,
        cache: PreparedCache | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.table = table
        self.builder = builder
        self.dims = tuple(dims)
        self.csv_name = csv_name
        self.row_sampling = row_sampling
        self.skip_bad_rows = skip_bad_rows
        self.cache = cache
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        self._digests: dict[tuple[str, int, int], str] = {}
        self._proc_sig = processor_signature(builder) if cache is not None else ""
        self.skipped_at_load: list[BadRow] = []

        n = len(table)
        missing = [d for d in self.dims if d not in table.labels]
        if require_labels and missing:
            raise DataError(f"{csv_name}: no label column(s) {missing}; found {list(table.frame.columns)}")
        self.labels = np.stack(
            [table.labels.get(d, np.full(n, np.nan)) for d in self.dims], axis=1
        ) if self.dims else np.zeros((n, 0))  # (N, D)
        self.mos_a, self.mos_b, bad_mos = read_mos(table.frame, self.dims)

        bad: dict[int, str] = {}
        for i, reason in bad_mos.items():
            bad.setdefault(i, reason)
        self._check_rows(bad, strict_labels=strict_labels, require_mos=require_mos, require_labels=require_labels)
        if check_videos:
            self._probe_videos(bad)
        bad_rows = [BadRow(i, r) for i, r in sorted(bad.items())]
        if bad_rows and not skip_bad_rows:
            listed = "\n  ".join(b.describe() for b in bad_rows[:MAX_LISTED_BAD_ROWS])
            more = f"\n  ... and {len(bad_rows) - MAX_LISTED_BAD_ROWS} more" if len(bad_rows) > MAX_LISTED_BAD_ROWS else ""
            raise DataError(
                f"{csv_name}: {len(bad_rows)} bad row(s):\n  {listed}{more}\n"
                "Fix these rows, or set data.skip_bad_rows=true (--skip-bad-rows) to skip and count them."
            )
        rows = [i for i in range(n) if i not in bad]
        dropped_ties = 0
        if not use_tied_data:
            keep = []
            for i in rows:
                valid = np.isfinite(self.labels[i])
                if valid.any() and (self.labels[i][valid] == 0).all():
                    dropped_ties += 1
                else:
                    keep.append(i)
            rows = keep
        if not rows:
            raise DataError(f"{csv_name}: no usable rows ({len(bad_rows)} bad, {dropped_ties} all-tie rows dropped)")
        self.rows = rows
        self.report = DataReport(
            rows=n,
            used=len(rows),
            bad_rows=bad_rows,
            invalid_labels={d: int(np.isnan(self.labels[rows, j]).sum()) for j, d in enumerate(self.dims)},
            dropped_ties=dropped_ties,
        )
        self._log_report()

    # -- start-up checks ------------------------------------------------------------
    def _check_rows(self, bad: dict[int, str], *, strict_labels: bool, require_mos: bool, require_labels: bool) -> None:
        frame = self.table.frame
        for i in range(len(self.table)):
            if i in bad:
                continue
            for side, path in (("A", self.table.path_a[i]), ("B", self.table.path_b[i])):
                if not path.is_file():
                    raw = frame.at[i, f"path_{side}"]
                    bad[i] = f"video file path_{side}={raw!r} not found (resolved to {path})"
                    break
            if i in bad:
                continue
            try:
                self.builder.check_prompt(frame.at[i, "prompt"])
                for side in ("A", "B"):
                    self._sampling_for(i, side)
            except VideoRewardError as e:
                bad[i] = e.message
                continue
            raw_labels = {d: frame.at[i, d] if d in frame.columns else None for d in self.dims}
            valid = np.isfinite(self.labels[i])  # (D,)
            if strict_labels:
                odd = {d: raw_labels[d] for j, d in enumerate(self.dims) if not valid[j] and isinstance(raw_labels[d], str)}
                if odd:
                    bad[i] = f"label(s) {odd} are not A, B or same"
                    continue
            if require_labels and not valid.any():
                bad[i] = f"no valid label (A, B or same) in any of {list(self.dims)}: {raw_labels}"
                continue
            if require_mos and not (np.isfinite(self.mos_a[i]).any() and np.isfinite(self.mos_b[i]).any()):
                bad[i] = "the loss needs MOS_A_<dim> and MOS_B_<dim> values, and this row has none"

    def _probe_videos(self, bad: dict[int, str]) -> None:
        """Probe each distinct video once (metadata only) and check that sampling can draw its frames."""
        todo = [(i, s) for i in range(len(self.table)) if i not in bad for s in ("A", "B")]
        seen: dict[tuple[Path, SamplingConfig], str | None] = {}
        for i, side in tqdm(todo, desc=f"checking videos in {self.csv_name}", unit="video", leave=False):
            if i in bad:
                continue
            path = self.table.path_a[i] if side == "A" else self.table.path_b[i]
            sampling = self._sampling_for(i, side)
            key = (path, sampling)
            if key not in seen:
                try:
                    meta = probe(path)
                    sample_indices(meta.total_frames, meta.fps, sampling)
                    seen[key] = None
                except VideoRewardError as e:
                    seen[key] = e.message
            if seen[key] is not None:
                bad[i] = f"video path_{side} ({path.name}): {seen[key]}"

    def _log_report(self) -> None:
        r = self.report
        logger.info("%s: %d of %d rows used", self.csv_name, r.used, r.rows)
        if r.bad_rows:
            logger.warning(
                "%s: skipped %d bad row(s) (data.skip_bad_rows): %s%s",
                self.csv_name, len(r.bad_rows), "; ".join(b.describe() for b in r.bad_rows[:MAX_LISTED_BAD_ROWS]),
                " ..." if len(r.bad_rows) > MAX_LISTED_BAD_ROWS else "",
            )
        masked = {d: c for d, c in r.invalid_labels.items() if c}
        if masked:
            logger.warning("%s: labels masked out of the loss (blank or not A/B/same), per dimension: %s", self.csv_name, masked)
        if r.dropped_ties:
            logger.info("%s: dropped %d rows where every dimension is a tie (use_tied_data=false)", self.csv_name, r.dropped_ties)

    # -- items ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, row, side): reproducible, and resumable mid-run."""
        self.epoch = int(epoch)

    def _sampling_for(self, row: int, side: str) -> SamplingConfig:
        if self.row_sampling == "none":
            return self.builder.sampling_for()
        value = self.table.sampling(row, side)[self.row_sampling]
        if value is None:
            return self.builder.sampling_for()
        return self.builder.sampling_for(**{self.row_sampling: value})

    def _digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _sha256_file(path)
        return self._digests[key]

    def _cache_key(self, kind: str, path: Path, sampling: SamplingConfig, prompt: str) -> str:
        text = self.builder.render_text(prompt) if kind == "item" else ""
        payload = json.dumps(
            [CACHE_VERSION, kind, self._digest(path), sampling.to_dict(), text, self._proc_sig], sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _decoded(self, path: Path, sampling: SamplingConfig) -> DecodedVideo:
        if self.cache is None:
            return load_video(path, sampling)
        key = self._cache_key("frames", path, sampling, "")
        hit = self.cache.get(key)
        if hit is not None:
            tensors, meta = hit
            return DecodedVideo(
                frames=tensors["frames"],
                indices=tuple(int(x) for x in tensors["indices"].tolist()),
                metadata=VideoMetadata(**json.loads(meta["metadata"])),
                sampling=sampling,
            )
        video = load_video(path, sampling)
        self.cache.put(
            key,
            {"frames": video.frames, "indices": torch.tensor(video.indices, dtype=torch.long)},
            {"metadata": json.dumps(dataclasses.asdict(video.metadata))},
        )
        return video

    def _prepare(self, row: int, side: str) -> PreparedItem:
        path = self.table.path_a[row] if side == "A" else self.table.path_b[row]
        prompt = self.table.frame.at[row, "prompt"]
        sampling = self._sampling_for(row, side)
        if self.augment is not None:
            video = self._decoded(path, sampling)
            gen = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, row, 0 if side == "A" else 1))
            video = dataclasses.replace(video, frames=augment_frames(video.frames, self.augment, gen))
            return self.builder.prepare(video, prompt)
        if self.cache is None:
            return self.builder.prepare(load_video(path, sampling), prompt)
        key = self._cache_key("item", path, sampling, prompt)
        hit = self.cache.get(key)
        if hit is not None:
            t, _ = hit
            return PreparedItem(
                input_ids=t["input_ids"], mm_token_type_ids=t["mm_token_type_ids"],
                pixel_values_videos=t["pixel_values_videos"], video_grid_thw=t["video_grid_thw"], meta={"cached": True},
            )
        item = self.builder.prepare(load_video(path, sampling), prompt)
        self.cache.put(
            key,
            {
                "input_ids": item.input_ids, "mm_token_type_ids": item.mm_token_type_ids,
                "pixel_values_videos": item.pixel_values_videos, "video_grid_thw": item.video_grid_thw,
            },
            {"version": CACHE_VERSION},
        )
        return item

    def example(self, row: int) -> dict[str, Any]:
        """The item for CSV data row ``row`` (errors name the row)."""
        try:
            a, b = self._prepare(row, "A"), self._prepare(row, "B")
        except VideoRewardError as e:
            raise DataError(f"{self.csv_name}: {BadRow(row, e.message).describe()}") from e
        return {
            "a": a,
            "b": b,
            "labels": torch.tensor(self.labels[row], dtype=torch.float32),
            "mos_a": torch.tensor(self.mos_a[row], dtype=torch.float32),
            "mos_b": torch.tensor(self.mos_b[row], dtype=torch.float32),
            "row": row,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        if not self.skip_bad_rows:
            return self.example(row)
        # A file that probed fine can still fail to decode. Skipping here would change the batch size,
        # so substitute the next usable row (deterministically) and count the skip.
        for k in range(len(self.rows)):
            candidate = self.rows[(index + k) % len(self.rows)]
            try:
                return self.example(candidate)
            except DataError as e:
                logger.warning("skipping a row that failed to load: %s", e.message)
                self.skipped_at_load.append(BadRow(candidate, e.message))
        raise DataError(f"{self.csv_name}: no row could be loaded")


def pairs_dataset(
    csv_path: str | Path,
    root: str | Path,
    builder: InputBuilder,
    dims: Sequence[str],
    **kwargs: Any,
) -> PairDataset:
    """Read a pairs CSV (both ``videos/x`` and ``./videos/x`` resolve under ``root``) into a dataset."""
    from .pairs import read_pairs

    table = read_pairs(csv_path, root, tuple(dims), require_labels=kwargs.get("require_labels", True))
    return PairDataset(table, builder, dims, csv_name=Path(csv_path).name, **kwargs)


class PairCollator:
    """Batches pairs into one padded forward: A videos first, then B videos (2B sequences).

    One forward for both sides keeps DDP to one reducer pass per step and lets the
    padded batch share the vision tower's work.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise DataError("cannot collate an empty batch of pairs")
        batch = collate([e["a"] for e in examples] + [e["b"] for e in examples], self.pad_token_id)
        out = batch.as_kwargs()
        out["pair_labels"] = torch.stack([e["labels"] for e in examples])  # (B, D)
        out["mos_a"] = torch.stack([e["mos_a"] for e in examples])  # (B, D)
        out["mos_b"] = torch.stack([e["mos_b"] for e in examples])  # (B, D)
        out["rows"] = torch.tensor([e["row"] for e in examples], dtype=torch.long)
        return out


def split_rewards(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, D) rewards from :class:`PairCollator` order → (r_a, r_b), each (B, D)."""
    if rewards.shape[0] % 2:
        raise InvalidInputError(f"expected an even number of rewards (A then B), got {rewards.shape[0]}")
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]
