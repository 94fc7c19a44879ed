"""Training checkpoints ↔ serving checkpoints.

    python -m training.export TRAIN_CKPT OUT_SERVING_DIR

``TRAIN_CKPT`` is a periodic checkpoint (``OUTPUT_DIR/checkpoint-N``), or a run's
output directory (its ``latest`` checkpoint is used). The model is rebuilt from
the checkpoint's saved config exactly as training built it (same base or serving
checkpoint, same LoRA set-up), the trained weights are loaded, LoRA and the
reward-token rows are merged into the plain weights, and the result is written in
the serving format (:func:`model.checkpoint.save_checkpoint`), which the service
and :class:`model.scorer.VideoRewardScorer` load unchanged.

A training checkpoint directory holds:

- ``adapter_model.safetensors`` + ``adapter_config.json``: the peft adapter (LoRA
  and the reward-token embedding rows), readable by ``peft``;
- ``trainable.safetensors``: every other trained weight (vision tower, merger,
  ``rm_head``) under its name in :class:`model.modeling.VideoRewardModel`;
- ``finetune_config.yaml``, ``reward_config.json`` and the processor files;
- the Trainer's ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth`` and
  ``trainer_state.json`` (tensors and plain values, read with ``weights_only=True``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.checkpoint import save_checkpoint
from model.errors import CheckpointError, VideoRewardError
from model.modeling import VideoRewardModel

from .config import CONFIG_NAME, load_config

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
LATEST_NAME = "latest"
ADAPTER_MARKERS = ("lora_", "trainable_tokens_delta")


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model_of(model: nn.Module) -> VideoRewardModel:
    """The :class:`VideoRewardModel` inside a (possibly peft-wrapped) model."""
    base = model.get_base_model() if is_peft(model) else model
    if not isinstance(base, VideoRewardModel):
        raise CheckpointError(f"expected a VideoRewardModel, got {type(base).__name__}")
    return base


def non_adapter_trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable weights that are not peft's (vision tower, merger, rm_head), by their base-model name."""
    return {
        n: p
        for n, p in base_model_of(model).named_parameters()
        if p.requires_grad and not any(m in n for m in ADAPTER_MARKERS)
    }


def save_train_state(model: nn.Module, directory: str | Path) -> None:
    """Write the adapter and the other trained weights (safetensors only)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        # save_embedding_layers=False: the reward-token rows are in the adapter; the frozen
        # rest of the embedding is the base model's and must not be copied into every checkpoint.
        model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
        readme = out / "README.md"
        if readme.is_file():  # peft's model-card template says nothing about this model
            readme.unlink()
    tensors = {n: p.detach().cpu().contiguous() for n, p in non_adapter_trainable(model).items()}
    save_file(tensors, str(out / TRAINABLE_FILE), metadata={"format": "pt"})


def load_train_state(model: nn.Module, directory: str | Path) -> None:
    """Load what :func:`save_train_state` wrote. Every missing, unexpected or mis-shaped tensor is an error."""
    from peft import set_peft_model_state_dict

    ckpt = Path(directory)
    problems: list[str] = []
    if is_peft(model):
        adapter_path = ckpt / ADAPTER_FILE
        if not adapter_path.is_file():
            raise CheckpointError(f"{ckpt} has no {ADAPTER_FILE}: not a training checkpoint of this run's set-up")
        adapter = load_file(str(adapter_path))
        expected = {
            n for n, p in model.named_parameters() if p.requires_grad and any(m in n for m in ADAPTER_MARKERS)
        }
        try:
            result = set_peft_model_state_dict(model, adapter)
        except RuntimeError as e:  # size mismatches: the checkpoint was made with other LoRA settings
            raise CheckpointError(
                f"cannot load the adapter of {ckpt}: {e}. Resume and export with the config saved in the checkpoint"
            ) from None
        unexpected = sorted(result.unexpected_keys)
        missing = sorted(k for k in result.missing_keys if k in expected)
        if unexpected:
            problems.append(f"unexpected adapter keys {unexpected[:5]}")
        if missing:
            problems.append(f"adapter keys missing {missing[:5]}")
    trainable_path = ckpt / TRAINABLE_FILE
    if not trainable_path.is_file():
        raise CheckpointError(f"{ckpt} has no {TRAINABLE_FILE}: not a training checkpoint")
    saved = load_file(str(trainable_path))
    params = non_adapter_trainable(model)
    if set(saved) != set(params):
        problems.append(
            f"trained weights differ from this set-up: missing {sorted(set(params) - set(saved))[:5]}, "
            f"unexpected {sorted(set(saved) - set(params))[:5]} (was the config changed since the checkpoint?)"
        )
    for name in sorted(set(saved) & set(params)):
        if saved[name].shape != params[name].shape:
            problems.append(f"{name}: checkpoint {tuple(saved[name].shape)}, model {tuple(params[name].shape)}")
    if problems:
        raise CheckpointError(f"cannot load training checkpoint {ckpt}: " + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def merged_model(model: nn.Module) -> VideoRewardModel:
    """Fold LoRA and the reward-token rows into the plain weights (in place) and return the bare model."""
    if is_peft(model):
        model = model.merge_and_unload()
    if not isinstance(model, VideoRewardModel):
        raise CheckpointError(f"merging left a {type(model).__name__}, not a VideoRewardModel")
    model.requires_grad_(False)
    return model.eval()


def export_serving(setup, out_dir: str | Path) -> Path:
    """Write ``setup`` (a :class:`training.trainer.TrainSetup`) as a serving checkpoint. Consumes ``setup.model``."""
    model = merged_model(setup.model)
    out = save_checkpoint(out_dir, model, setup.processor, setup.reward_config)
    logger.info("wrote serving checkpoint %s", out)
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir whose ``latest`` pointer names one."""
    p = Path(path)
    if (p / LATEST_NAME).is_file():
        name = (p / LATEST_NAME).read_text().strip()
        p = p / name
    if not (p / CONFIG_NAME).is_file() or not (p / TRAINABLE_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a training checkpoint (needs {CONFIG_NAME} and {TRAINABLE_FILE}); "
            "pass OUTPUT_DIR/checkpoint-N or a run's OUTPUT_DIR with a 'latest' pointer"
        )
    return p


def load_training_checkpoint(path: str | Path):
    """Rebuild the model of a training checkpoint and load its weights (eval mode). Returns a ``TrainSetup``."""
    from .trainer import build_model

    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt / CONFIG_NAME)
    setup = build_model(cfg, for_training=False)
    load_train_state(setup.model, ckpt)
    setup.model.eval()
    return setup


def export(train_ckpt: str | Path, out_dir: str | Path) -> Path:
    """``python -m training.export`` as a function."""
    setup = load_training_checkpoint(train_ckpt)
    return export_serving(setup, out_dir)


def write_latest(run_dir: str | Path, name: str) -> None:
    """Point ``run_dir/latest`` at checkpoint ``name``, atomically."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{LATEST_NAME}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, run_dir / LATEST_NAME)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("train_ckpt", help="OUTPUT_DIR/checkpoint-N, or OUTPUT_DIR (uses its 'latest')")
    p.add_argument("out_dir", help="where to write the serving checkpoint")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export(args.train_ckpt, args.out_dir)
    except VideoRewardError as e:
        logger.error("%s", e)
        return 2
    logger.info("done: %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
