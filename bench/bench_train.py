"""Benchmark fine-tuning: training pairs per second and peak memory. Prints JSON (and writes it with --out).

    python bench/bench_train.py [--sizes tiny mid] [--steps 6] [--warmup 2] [--batch 2] [--frames 4]
                                [--max-pixels 12544] [--out bench/results/train.json]

For each size (``tiny``: the test model; ``mid``: ~100M parameters, see
:mod:`model.tiny`) a base Qwen2-VL directory and a small synthetic pairs CSV are
made on the spot, and the real recipe (:class:`training.trainer.FinetuneRun`,
LoRA + full vision tower + merger + reward-token rows, btt loss) runs ``steps``
optimizer steps. Each size runs in its own process, so peak memory is that run's:
the resident set size high-water mark on the CPU, ``max_memory_allocated`` on a GPU.
Steps before ``--warmup`` are not timed. Decoding is included (it is part of a
training step when the DataLoader has no workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_pairs(root: Path, n: int) -> Path:
    from tests.media import write_video

    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = ["path_A,path_B,prompt,VQ,MQ,TA"]
    for i in range(n):
        for side in "AB":
            write_video(root / "videos" / f"{i}_{side}.mp4", num_frames=16, width=128, height=128, fps=8,
                        pattern="moving" if side == "A" else "static")
        label = ("A", "B", "same")[i % 3]
        lines.append(f"videos/{i}_A.mp4,videos/{i}_B.mp4,a green square moves,{label},{label},{label}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"


def run_one(size: str, steps: int, warmup: int, batch: int, frames: int, max_pixels: int) -> dict:
    """One size, in this process."""
    import torch
    from transformers import TrainerCallback

    from model.tiny import write_base
    from training.config import load_config
    from training.trainer import FinetuneRun, trainable_summary

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix=f"bench-train-{size}-") as tmp:
        tmp_path = Path(tmp)
        base = write_base(tmp_path / "base", size=size)
        csv = make_pairs(tmp_path / "data", max(4, batch * 2))
        cfg = load_config(ROOT / "examples" / "tiny.yaml", [
            f"output_dir={tmp_path / 'out'}", f"max_steps={steps}", f"data.train_csv={csv}",
            f"data.root={tmp_path / 'data'}", f"base_model={base}", f"data.num_frames={frames}",
            f"data.max_pixels={max_pixels}", f"train.per_device_batch_size={batch}", "train.report_to=[]",
            "train.export_at_end=false", "train.logging_steps=1000", "train.device=auto",
        ])
        run = FinetuneRun(cfg)
        timer = StepTimer()
        run.trainer.add_callback(timer)
        on_gpu = torch.cuda.is_available()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run.train()
        total = time.perf_counter() - t0
        timed = timer.times[warmup - 1 :] if warmup > 0 else [t0, *timer.times]
        per_step = (timed[-1] - timed[0]) / max(1, len(timed) - 1)
        params = sum(p.numel() for p in run.setup.model.parameters())
        trainable = trainable_summary(run.setup.model)
        tokens = int(run.train_dataset[0]["a"].num_tokens)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if on_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    )
    return {
        "size": size,
        "parameters_M": round(params / 1e6, 1),
        "trainable_M": round(trainable["total"] / 1e6, 2),
        "device": "cuda" if on_gpu else "cpu",
        "pairs_per_step": batch,
        "tokens_per_video": tokens,
        "frames": frames,
        "max_pixels": max_pixels,
        "steps_timed": len(timed) - 1,
        "seconds_per_step": round(per_step, 3),
        "pairs_per_second": round(batch / per_step, 2),
        "videos_per_second": round(2 * batch / per_step, 2),
        "peak_memory_MiB": round(peak, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if on_gpu else "process max RSS",
        "wall_seconds_total": round(total, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "mid"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="pairs per step")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--max-pixels", type=int, default=112 * 112)
    p.add_argument("--out", type=Path)
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: run one size, print its JSON
    a = p.parse_args()
    if a.steps <= a.warmup:
        p.error("--steps must exceed --warmup")
    if a.one:
        print(json.dumps(run_one(a.one, a.steps, a.warmup, a.batch, a.frames, a.max_pixels)))
        return
    results = []
    for size in a.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--batch", str(a.batch), "--frames", str(a.frames), "--max-pixels", str(a.max_pixels)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"benchmark for size {size} failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    report = {
        "benchmark": "training (training.trainer.FinetuneRun, btt, LoRA + vision + merger + reward tokens)",
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
