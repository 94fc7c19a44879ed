"""LoRA mixed fine-tuning of the VideoReward model on preference pairs.

One process (CPU, or one GPU/NPU)::

    python -m training.finetune --config examples/tiny.yaml \\
        output_dir=runs/tiny max_steps=100 data.train_csv=pairs.csv data.root=data/ base_model=tiny-base/

Data parallel on one node, 8 devices (gradient accumulation, mixed precision and
the rest come from the config; each rank reads its share of the pairs)::

    torchrun --nproc-per-node 8 -m training.finetune --config examples/videoreward_2b.yaml \\
        output_dir=runs/vr2b data.train_csv=train.csv data.root=/data/videos base_model=/models/Qwen2-VL-2B-Instruct

Everything after ``--config`` is a ``key=value`` override of the YAML (dotted for
nested keys: ``optim.lr=1e-5``, ``lora.r=16``, ``data.augment.color_jitter_p=0.3``).
``--skip-bad-rows`` is ``data.skip_bad_rows=true``; ``--resume`` is ``resume_from=latest``
(continue from ``OUTPUT_DIR/latest``); ``resume_from=auto`` resumes only if a checkpoint exists
(for jobs that may be preempted and restarted with the same command).

Writes ``OUTPUT_DIR/checkpoint-N`` (periodic, atomic, the last ``train.keep_last`` kept,
``OUTPUT_DIR/latest`` naming the newest), ``OUTPUT_DIR/serving`` (the serving checkpoint,
LoRA merged) and ``OUTPUT_DIR/results.json``. Re-export any checkpoint with
``python -m training.export OUTPUT_DIR/checkpoint-N OUT``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from model.errors import VideoRewardError

from .config import load_config

logger = logging.getLogger("training.finetune")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description="LoRA mixed fine-tuning of the VideoReward model (see the module docstring for launch commands).",
    )
    p.add_argument("--config", help="YAML config (e.g. examples/tiny.yaml); overrides follow as key=value")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad CSV rows instead of failing")
    p.add_argument(
        "--resume", action="store_true",
        help="resume from OUTPUT_DIR/latest (resume_from=auto resumes only if one exists; resume_from=PATH a given one)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. output_dir=runs/x max_steps=100")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.skip_bad_rows:
        overrides.append("data.skip_bad_rows=true")
    if args.resume:
        overrides.append("resume_from=latest")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(args.config, overrides)
        from .trainer import run  # heavy imports after the config is known to be valid

        result = run(cfg)
    except VideoRewardError as e:
        logger.error("%s", e)
        return 2
    if rank == 0:
        logger.info("done: checkpoints in %s, serving checkpoint %s", result.output_dir, result.serving_dir)
        if result.eval_metrics:
            logger.info("final evaluation: %s", {k: round(v, 4) for k, v in result.eval_metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
