"""The demo reward model: a small Qwen2-VL that this project trains itself, from scratch, on synthetic videos.

Build it (about 12 minutes on 2 CPU cores; ``--quick``: about 4 minutes, lower accuracy)::

    python -m training.demo [--out checkpoints/demo] [--quick] [--seed 0]

Check a running server with it (a clean clip must beat its degraded twin on each dimension)::

    python -m training.demo smoke [--url http://127.0.0.1:8000]

Serve it (``scripts/serve-demo.sh`` builds it first when it is missing)::

    python -m service --checkpoint checkpoints/demo/checkpoint

The build runs the whole chain on data with known answers:

1. :func:`training.synthetic.generate` writes train and held-out test pairs (``OUT/data``): a coloured
   shape moving in a direction, at graded visual quality, motion quality and text alignment; the two
   clips of a pair are twins that differ only in their quality.
2. :func:`model.tiny.write_base` writes a from-scratch Qwen2-VL (``OUT/base``, size ``demo``: a 4-layer,
   hidden-128 language model and a 2-layer vision tower, 2.0M parameters with the embedding, the
   project's own tokenizer).
3. :mod:`training.trainer` trains it on the pairs (``OUT/run``; Bradley-Terry loss, AdamW 3e-4 with a
   200-step warmup and cosine decay, gradient clipping at 1.0, 16 pairs per step).
4. :func:`training.export.export_serving` writes the serving checkpoint (``OUT/checkpoint``).
5. :func:`training.evaluate.evaluate_pairs` scores the held-out pairs with the exported checkpoint on
   the serving path (``OUT/eval``: ``eval_accuracy.json``, xlsx, PNG).
6. The accuracy table is printed and written into the checkpoint (``DEMO.md`` and ``demo.json``). The
   ``demo.json`` card is what makes ``/v1/model`` answer ``"demo": true`` and the service log a warning:
   this model knows moving shapes, nothing else. It is not VideoReward. ``OUT/examples`` holds clean
   clips and their degraded twins for trying the service.

**Full training, not LoRA.** LoRA adapts a pretrained model while keeping its weights; here the
language model is random, so there is nothing to keep, and freezing it leaves random features in the
way. The run uses the project's trainer unchanged and then marks every language-model weight
trainable before the optimizer is built (:func:`train_language_model_in_full`); the vision tower,
merger, ``rm_head`` and reward-token rows train in full as in the mixed recipe. The exported
checkpoint is an ordinary serving checkpoint.

**Short sequences.** The checkpoint's own sampling takes the clip's 8 frames at 56x56 (a 4x4 grid of
14-pixel patches, so 16 visual tokens per video after the 2x2 merge), and its prompt template is a
single line, so a video is about 90 tokens and a training step of 16 pairs takes ~0.33 s on 2 cores.

Everything is deterministic for a seed (data, initial weights, data order); the weights are
reproducible on the same machine and thread count (CPU matmul reductions depend on both).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import DEMO_CARD_NAME
from model.reward_config import REWARD_CONFIG_NAME
from model.tiny import write_base
from training.config import FinetuneConfig, config_from_dict
from training.metrics import PairAccuracy
from training.synthetic import DIMS, Quality, Scene, generate, render, write_frames

logger = logging.getLogger("training.demo" if __name__ == "__main__" else __name__)

DEFAULT_OUT = Path("checkpoints/demo")
DEMO_NAME = "videoreward-synthetic-demo"
DEMO_NOTE = (
    "Synthetic demo model, trained by `python -m training.demo` on generated clips of a coloured shape "
    "moving over a grey background. Its scores mean something for such clips only. It is NOT VideoReward: "
    "serve real weights with `python -m service --checkpoint DIR`."
)
# One line: a from-scratch model gains nothing from a descriptive template, and every token costs time.
DEMO_PROMPT_TEMPLATE = '"{prompt}"\nVQ <|VQ_reward|> MQ <|MQ_reward|> TA <|TA_reward|>'
CLIP_SIZE, CLIP_FRAMES, CLIP_FPS = 64, 8, 8  # the synthetic clips
FRAME_PIXELS = 56 * 56  # sampled frames: min_pixels = max_pixels, so every clip becomes 56x56


@dataclass(frozen=True)
class DemoPreset:
    """How much data and training a demo build uses."""

    name: str
    train_pairs: int
    test_pairs: int
    steps: int
    warmup_steps: int
    batch_pairs: int = 16
    lr: float = 3e-4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, DemoPreset] = {
    "full": DemoPreset("full", train_pairs=4000, test_pairs=300, steps=2000, warmup_steps=200),
    # The test suite's reduced build (tests/test_demo.py) and the container's first start: ~4 minutes.
    "quick": DemoPreset("quick", train_pairs=1500, test_pairs=200, steps=600, warmup_steps=100),
}


@dataclass
class DemoResult:
    out: Path
    checkpoint: Path
    eval_dir: Path
    accuracy: dict[str, PairAccuracy]
    timings_s: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
def finetune_config(out: Path, data: Path, base: Path, preset: DemoPreset, seed: int) -> FinetuneConfig:
    """The fine-tuning config of a demo build (saved as ``OUT/run/finetune_config.yaml``)."""
    return config_from_dict({
        "output_dir": str(out / "run"),
        "base_model": str(base),
        "seed": seed,
        "max_steps": preset.steps,
        "data": {
            "train_csv": str(data / "train.csv"),
            "root": str(data),
            "num_frames": CLIP_FRAMES,
            "max_pixels": FRAME_PIXELS,
            "min_pixels": FRAME_PIXELS,
            "use_tied_data": True,
            "cache_dir": str(data / "prepared"),  # each clip is decoded once, then read back
        },
        "model": {
            "dtype": "fp32",
            "tune_vision": True,
            "tune_merger": True,
            "reward": {"prompt_template": DEMO_PROMPT_TEMPLATE},
        },
        # No LoRA adapters: train_language_model_in_full trains the language model itself.
        "lora": {"target_modules": [], "dropout": 0.0},
        "optim": {
            "lr": preset.lr,
            "scheduler": "cosine",
            "warmup_steps": preset.warmup_steps,
            "max_grad_norm": 1.0,
            "weight_decay": 0.0,
        },
        "loss": {"type": "bt"},
        "train": {
            "per_device_batch_size": preset.batch_pairs,
            "logging_steps": 50,
            "report_to": "auto",
            "device": "cpu",
            "export_at_end": False,  # exported below, straight into OUT/checkpoint
        },
    })


def train_language_model_in_full(run: Any) -> int:
    """Make every language-model weight of a :class:`training.trainer.FinetuneRun` trainable; returns their count.

    Call it before ``run.train()``: the Trainer builds its optimizer when training starts, so these
    weights join the ``base`` parameter group (learning rate ``optim.lr``).
    """
    from training.export import base_model_of

    lm = base_model_of(run.setup.model).model.language_model
    count = 0
    for p in lm.parameters():
        if not p.requires_grad:
            p.requires_grad_(True)
            count += p.numel()
    logger.info("training the language model in full: %.3fM more trainable parameters", count / 1e6)
    return count


def _data(out: Path, preset: DemoPreset, seed: int) -> Path:
    """Generate the pairs, or reuse ``out`` when it holds exactly these (the generator is deterministic)."""
    params = {
        "train_pairs": preset.train_pairs, "test_pairs": preset.test_pairs, "seed": seed,
        "size": CLIP_SIZE, "frames": CLIP_FRAMES, "fps": CLIP_FPS,
    }
    stamp = out / "params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params and (out / "test.csv").is_file():
        logger.info("reusing the synthetic pairs in %s", out)
        return out
    if out.exists():
        shutil.rmtree(out)
    generate(out, n_train=preset.train_pairs, n_test=preset.test_pairs, seed=seed, size=CLIP_SIZE, frames=CLIP_FRAMES, fps=CLIP_FPS)
    stamp.write_text(json.dumps(params, indent=2) + "\n")
    return out


def build(out: str | Path = DEFAULT_OUT, *, quick: bool = False, seed: int = 0, preset: DemoPreset | None = None) -> DemoResult:
    """Generate data, train, export to ``out/checkpoint``, evaluate into ``out/eval``, write the card.

    ``out/checkpoint/demo.json`` is written last: its presence means the build finished.
    """
    from model.scorer import VideoRewardScorer
    from training.evaluate import evaluate_pairs
    from training.export import export_serving
    from training.pairs import read_pairs
    from training.trainer import FinetuneRun

    out = Path(out)
    preset = preset or PRESETS["quick" if quick else "full"]
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, eval_dir, run_dir = out / "checkpoint", out / "eval", out / "run"
    for stale in (checkpoint, eval_dir, run_dir, out / "base"):
        if stale.exists():
            shutil.rmtree(stale)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    logger.info("building the demo model (%s preset, seed %d) in %s", preset.name, seed, out)

    t = time.perf_counter()
    data = _data(out / "data", preset, seed)
    base = write_base(out / "base", seed=seed, size="demo")
    timings["data_and_base"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = finetune_config(out, data, base, preset, seed)
    run = FinetuneRun(cfg)
    train_language_model_in_full(run)
    train_result = run.train()
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    export_serving(run.setup, checkpoint)
    for stale in run_dir.glob("checkpoint-*"):
        # The Trainer's own end-of-run checkpoint: training.export could not rebuild this set-up
        # (full language-model training is not a config option), and OUT/checkpoint already holds it.
        shutil.rmtree(stale)
    (run_dir / "latest").unlink(missing_ok=True)
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    scorer = VideoRewardScorer.from_pretrained(checkpoint, device="cpu", dtype="fp32")
    table = read_pairs(data / "test.csv", data, tuple(scorer.reward_config.eval_dims))
    report = evaluate_pairs(scorer, table, data_root=data, out_dir=eval_dir, batch_size=32, progress=True)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    accuracy = {d: report.accuracy[d] for d in DIMS if d in report.accuracy}
    write_card(checkpoint, preset=preset, seed=seed, accuracy=accuracy, timings=timings,
               final_loss=train_result.train_metrics.get("train_loss"))
    write_examples(out / "examples", seed=seed)
    logger.info("demo model ready: %s (%.0f s in all)", checkpoint, timings["total"])
    return DemoResult(out=out, checkpoint=checkpoint, eval_dir=eval_dir, accuracy=accuracy, timings_s=timings)


# ---------------------------------------------------------------------------
# The card: what the checkpoint is and how well it did
# ---------------------------------------------------------------------------
def accuracy_table(accuracy: dict[str, PairAccuracy]) -> str:
    """A markdown table of held-out accuracy per dimension."""
    lines = [
        "| dimension | accuracy without ties | accuracy with ties | pairs (of which ties) |",
        "| --- | --- | --- | --- |",
    ]
    for dim, acc in accuracy.items():
        lines.append(f"| {dim} | {acc.without_ties:.3f} | {acc.with_ties:.3f} | {acc.pairs} ({acc.ties}) |")
    return "\n".join(lines)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_card(
    checkpoint: Path,
    *,
    preset: DemoPreset,
    seed: int,
    accuracy: dict[str, PairAccuracy],
    timings: dict[str, float],
    final_loss: float | None = None,
) -> Path:
    """``demo.json`` (read by the service) and ``DEMO.md`` (for people) in the checkpoint folder."""
    built = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    card = {
        "demo": True,
        "name": DEMO_NAME,
        "note": DEMO_NOTE,
        "preset": preset.to_dict(),
        "seed": seed,
        "heldout_accuracy": {d: acc.to_dict() for d, acc in accuracy.items()},
        "final_train_loss": final_loss,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "built": built,
        "machine": _machine(),
        "command": f"python -m training.demo --seed {seed}" + (" --quick" if preset.name == "quick" else ""),
    }
    (checkpoint / "DEMO.md").write_text(
        f"# {DEMO_NAME}\n\n{DEMO_NOTE}\n\n"
        f"Built {built} with `{card['command']}` ({preset.name} preset: {preset.train_pairs} training pairs, "
        f"{preset.steps} steps of {preset.batch_pairs} pairs, {timings['total'] / 60:.1f} min on {card['machine']}).\n\n"
        f"Held-out accuracy ({preset.test_pairs} test pairs that share no video with training):\n\n"
        f"{accuracy_table(accuracy)}\n"
    )
    path = checkpoint / DEMO_CARD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)  # last: its presence means the build finished
    return path


def is_built(out: str | Path) -> bool:
    """Whether ``out`` holds a finished demo build (scripts/serve-demo.sh checks the same files)."""
    ckpt = Path(out) / "checkpoint"
    return (ckpt / REWARD_CONFIG_NAME).is_file() and (ckpt / DEMO_CARD_NAME).is_file()


# ---------------------------------------------------------------------------
# Clean clips and their degraded twins (examples and the smoke check)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Twin:
    """A clean clip and the same clip degraded on one dimension (level 2 of 2)."""

    dim: str
    prompt: str
    clean: np.ndarray  # (T, H, W, 3) uint8
    degraded: np.ndarray


# What each twin's degraded clip shows (level 2 of 2).
TWIN_DEGRADATION = {"VQ": "heavy noise", "MQ": "frozen: no motion at all", "TA": "two of colour, shape, direction wrong"}


def twins(seed: int = 0, scene: Scene | None = None) -> list[Twin]:
    """One twin per dimension: the same clip (same nuisance draws), clean and degraded at level 2 on that dimension."""
    scene = scene or Scene("circle", "red", "right")
    out = []
    for j, dim in enumerate(DIMS):
        worst = Quality(*(2 if k == j else 0 for k in range(3)))
        clips = [
            render(scene, q, np.random.default_rng([seed, j]), size=CLIP_SIZE, frames=CLIP_FRAMES,
                   pair_rng=np.random.default_rng([seed, j, 1]), vq_kind="noise", mq_kind="frozen")
            for q in (Quality(0, 0, 0), worst)
        ]
        out.append(Twin(dim, scene.prompt, clips[0], clips[1]))
    return out


def write_examples(folder: Path, seed: int = 0) -> list[dict[str, str]]:
    """Write each twin as ``clean_<dim>.mp4`` / ``degraded_<dim>.mp4`` plus ``examples.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for tw in twins(seed):
        clean = write_frames(folder / f"clean_{tw.dim}.mp4", tw.clean, CLIP_FPS)
        bad = write_frames(folder / f"degraded_{tw.dim}.mp4", tw.degraded, CLIP_FPS)
        listing.append({"dim": tw.dim, "prompt": tw.prompt, "clean": str(clean), "degraded": str(bad)})
    (folder / "examples.json").write_text(json.dumps(listing, indent=2) + "\n")
    return listing


def smoke(url: str, *, seed: int = 0, api_key: str | None = None, timeout: float = 120.0) -> int:
    """Compare clean clips with their degraded twins on a running server; 0 when the clean clip wins every time."""
    from service.client import VideoRewardClient  # the demo is the one part of training that talks to a server

    failures = 0
    with VideoRewardClient(url, api_key=api_key) as client, tempfile.TemporaryDirectory(prefix="demo-smoke-") as tmp:
        client.wait_ready(timeout)
        info = client.model()
        kind = "the synthetic DEMO model" if info.get("demo") else "NOT the demo model (real weights?)"
        print(f"server {url}: model {info['id']}: {kind}")
        pairs, rows = [], []
        for tw in twins(seed):
            a = write_frames(Path(tmp) / f"clean_{tw.dim}.mp4", tw.clean, CLIP_FPS)
            b = write_frames(Path(tmp) / f"degraded_{tw.dim}.mp4", tw.degraded, CLIP_FPS)
            pairs.append((a, b, tw.prompt))
            rows.append(tw)
        response = client.compare(pairs)
        print(f'prompt "{rows[0].prompt}"; A = clean clip, B = the same clip degraded on one dimension')
        print(f"{'degraded on':<12}{'score A':>10}{'score B':>10}{'margin':>10}  winner  result")
        for tw, result in zip(rows, response["results"], strict=True):
            if result.get("error"):
                print(f"{tw.dim:<12} error: {result['error']}")
                failures += 1
                continue
            d = result["dims"][tw.dim]
            ok = d["winner"] == "A"
            failures += not ok
            print(f"{tw.dim:<12}{d['A']:>10.3f}{d['B']:>10.3f}{d['margin']:>10.3f}  {d['winner']:<6}  {'ok' if ok else 'FAIL'}")
    print("smoke: ok, the clean clip wins on every dimension" if not failures else f"smoke: FAILED on {failures} dimension(s)")
    return 0 if not failures else 1


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("build", help="build the demo checkpoint (the default command)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    b.add_argument("--quick", action="store_true", help="a much shorter run (a few minutes, lower accuracy)")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("smoke", help="check a running server: clean clips must beat their degraded twins")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--api-key", default=os.environ.get("VIDEOREWARD_API_KEY"))
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to be ready")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in ("build", "smoke", "-h", "--help"):
        args_list.insert(0, "build")  # `python -m training.demo --quick` means build
    args = _parser().parse_args(args_list)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "smoke":
        import httpx

        try:
            return smoke(args.url, seed=args.seed, api_key=args.api_key, timeout=args.timeout)
        except (httpx.HTTPError, TimeoutError) as e:
            logger.error("cannot reach the service at %s: %s (start it with `bash scripts/serve-demo.sh`)", args.url, e)
            return 2
    result = build(args.out, quick=args.quick, seed=args.seed)
    print(f"\nDemo model (synthetic, NOT VideoReward): {result.checkpoint}")
    print(f"Held-out accuracy ({result.eval_dir / 'eval_accuracy.json'}):\n")
    print(accuracy_table(result.accuracy))
    print(f"\nBuilt in {result.timings_s['total'] / 60:.1f} min. Serve it: python -m service --checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
