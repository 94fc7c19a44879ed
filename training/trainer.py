"""The fine-tuning recipe: model set-up (LoRA, trainable parts), the pairwise Trainer, and the run.

The engine is transformers' :class:`~transformers.Trainer`: torchrun data
parallelism, gradient accumulation, schedulers, mixed precision, logging
(console and TensorBoard), periodic evaluation and save/resume all come from it.
This module adds only what is specific to reward modelling:

- :func:`build_model`: start from a base Qwen2-VL (:func:`model.checkpoint.init_from_base`)
  or a serving checkpoint (:func:`model.checkpoint.load_checkpoint`); wrap with peft
  (LoRA on the language model's linears; the reward-token embedding rows as peft
  *trainable tokens*); then mark the vision tower, merger and ``rm_head`` trainable.
- :class:`PairRewardTrainer`: the pairwise loss, evaluation margins for
  :func:`training.metrics.pair_accuracy`, parameter groups with their own learning
  rates, and atomic checkpoints in the format :mod:`training.export` reads.

Only the reward-token rows of the embedding can change: the embedding itself is
frozen and never reaches the optimizer; peft's trainable-tokens layer holds a
separate (n_tokens, H) parameter that replaces those rows in the forward pass and
is written into the embedding only when the model is merged for serving. So the
other rows are bitwise unchanged by construction, whatever the optimizer or its
weight decay does (tests/test_training.py checks it bitwise).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, ProcessorMixin, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from model.checkpoint import init_from_base, load_checkpoint
from model.device import resolve_dtype
from model.errors import CheckpointError
from model.inputs import InputBuilder
from model.modeling import VideoRewardModel
from model.reward_config import RewardConfig

from .config import ConfigError, FinetuneConfig
from .data import PairCollator, PairDataset, PreparedCache, pairs_dataset, split_rewards
from .export import LATEST_NAME, base_model_of, export_serving, load_train_state, save_train_state, write_latest
from .losses import pair_loss
from .metrics import pair_accuracy

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")
TRAINER_STATE_NAME = "trainer_state.json"


# ---------------------------------------------------------------------------
# Model set-up
# ---------------------------------------------------------------------------
@dataclass
class TrainSetup:
    model: nn.Module  # a peft PeftModel around a VideoRewardModel (or the bare model when peft has nothing to do)
    processor: ProcessorMixin
    reward_config: RewardConfig  # what the exported checkpoint will say (sampling included)
    reward_token_ids: tuple[int, ...]


def reward_config_for_base(cfg: FinetuneConfig) -> RewardConfig:
    r = cfg.model.reward
    special = tuple(r.special_tokens or [f"<|{d}_reward|>" for d in r.eval_dims])
    output_dim = r.output_dim or (1 if r.reward_token == "special" else len(r.eval_dims))
    try:
        return RewardConfig(
            eval_dims=tuple(r.eval_dims),
            reward_token=r.reward_token,
            output_dim=output_dim,
            special_tokens=special,
            prompt_template=r.prompt_template,
            normalization=r.normalization,
        )
    except CheckpointError as e:
        raise ConfigError(f"model.reward: {e.message}") from None


def training_reward_config(cfg: FinetuneConfig, start: RewardConfig) -> RewardConfig:
    """The starting reward config with the run's sampling overrides (they are served as trained)."""
    d = cfg.data
    sampling = start.sampling
    if d.fps is not None or d.num_frames is not None:
        sampling = sampling.with_overrides(fps=d.fps, num_frames=d.num_frames)
    sampling = sampling.with_overrides(max_pixels=d.max_pixels, min_pixels=d.min_pixels)
    # Published normalisation statistics describe the starting model's score distribution, not the trained one.
    normalization = cfg.model.reward.normalization if "normalization" in cfg.model.reward.model_fields_set else None
    if start.normalization is not None and normalization is None:
        logger.info("dropping the starting checkpoint's normalization statistics: they describe the untrained model")
    return dataclasses.replace(start, sampling=sampling, normalization=normalization)


def lora_target_regex(cfg: FinetuneConfig) -> str:
    """A full-match regex over module names: the LM's linears, and the vision blocks' when vision LoRA is on."""
    lm = "|".join(re.escape(t) for t in cfg.lora.target_modules)
    parts = [rf".*\.language_model\..*\.(?:{lm})"] if cfg.lora.enabled and cfg.lora.target_modules else []
    if cfg.lora.vision and cfg.lora.vision_target_modules:
        vis = "|".join(re.escape(t) for t in cfg.lora.vision_target_modules)
        parts.append(rf".*\.visual\.blocks\.\d+\..*\.(?:{vis})")
    return "|".join(f"(?:{p})" for p in parts)


def _wrap_peft(model: nn.Module, cfg: FinetuneConfig, token_ids: tuple[int, ...]) -> nn.Module:
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    targets = lora_target_regex(cfg)
    tokens = {"embed_tokens": list(token_ids)} if token_ids else None
    if targets:
        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            use_rslora=cfg.lora.rslora,
            target_modules=targets,
            exclude_modules=list(cfg.lora.exclude) or None,
            trainable_token_indices=tokens,
            bias="none",
        )
    elif token_ids:
        peft_config = TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=list(token_ids))
    else:
        return model
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ConfigError(f"LoRA set-up failed ({e}); check lora.target_modules and lora.exclude") from None


def _mark_trainable(model: VideoRewardModel, cfg: FinetuneConfig) -> None:
    """Full-parameter parts on top of peft's adapters (peft froze everything else)."""
    visual = model.model.visual
    if cfg.model.tune_vision:
        for name, p in visual.named_parameters():
            if not name.startswith("merger.") and "lora_" not in name:
                p.requires_grad_(True)
    if cfg.model.tune_merger:
        visual.merger.requires_grad_(True)
    model.rm_head.requires_grad_(True)


def build_model(cfg: FinetuneConfig, *, for_training: bool = True) -> TrainSetup:
    """Load the starting weights and set up exactly what trains; export rebuilds the same way."""
    dtype = resolve_dtype(cfg.model.dtype)
    if cfg.base_model is not None:
        loaded = init_from_base(cfg.base_model, reward_config_for_base(cfg), dtype=dtype, seed=cfg.seed)
    else:
        extra = sorted(cfg.model.reward.model_fields_set - {"normalization"})
        if extra:
            raise ConfigError(
                f"model.reward.{extra[0]} applies to a fresh model from base_model; a serving checkpoint "
                "(init_checkpoint) brings its own reward config (only model.reward.normalization may be set)"
            )
        loaded = load_checkpoint(cfg.init_checkpoint, dtype=dtype)
    rc = training_reward_config(cfg, loaded.reward_config)
    model = loaded.model
    # the rows that may change: only with special pooling are there reward tokens
    token_ids = tuple(loaded.reward_token_ids) if rc.reward_token == "special" else ()
    model.requires_grad_(False)
    peft_model = _wrap_peft(model, cfg, token_ids)
    _mark_trainable(model, cfg)
    if for_training:
        if cfg.model.vision_grad_ckpt:
            model.model.visual.activation_checkpointing_enable({"use_reentrant": False})
        if cfg.model.lm_grad_ckpt:
            model.model.language_model.activation_checkpointing_enable({"use_reentrant": False})
        counts = trainable_summary(peft_model)
        logger.info("trainable parameters: %s", ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items()))
    return TrainSetup(model=peft_model, processor=loaded.processor, reward_config=rc, reward_token_ids=token_ids)


def param_group_name(name: str) -> str:
    """Which learning rate a trainable parameter gets: special_token, merger, vision or base (LoRA, rm_head)."""
    if "trainable_tokens_delta" in name:
        return "special_token"
    if ".visual.merger." in name:
        return "merger"
    if ".visual." in name:
        return "vision"
    return "base"


def trainable_summary(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {"total": 0}
    for n, p in model.named_parameters():
        if p.requires_grad:
            g = param_group_name(n)
            counts[g] = counts.get(g, 0) + p.numel()
            counts["total"] += p.numel()
    return counts


def param_groups(model: nn.Module, cfg: FinetuneConfig, decay_names: set[str]) -> list[dict[str, Any]]:
    """Optimizer groups: (lr, vision_lr, merger_lr, special_token_lr) × (decay, no decay).

    No weight decay on biases, norms (anything 1-D) and the reward-token rows.
    """
    o = cfg.optim
    lrs = {
        "base": o.lr,
        "vision": o.vision_lr or o.lr,
        "merger": o.merger_lr or o.lr,
        "special_token": o.special_token_lr or o.lr,
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = param_group_name(n)
        decay = g != "special_token" and n in decay_names and p.ndim >= 2
        groups.setdefault((g, decay), []).append(p)
    order = ["base", "vision", "merger", "special_token"]  # base first: the Trainer logs group 0's lr
    return [
        {
            "params": groups[key],
            "lr": lrs[key[0]],
            "weight_decay": o.weight_decay if key[1] else 0.0,
            "name": f"{key[0]}{'' if key[1] else '_no_decay'}",
        }
        for key in sorted(groups, key=lambda k: (order.index(k[0]), not k[1]))
    ]


# ---------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------
def pair_metrics(dims: tuple[str, ...]):
    """compute_metrics for the Trainer: accuracy with and without ties per dimension (training.metrics)."""

    def compute(pred: EvalPrediction) -> dict[str, float]:
        rewards = np.asarray(pred.predictions, dtype=np.float64)  # (N, D, 2): A, B
        labels = np.asarray(pred.label_ids, dtype=np.float64)  # (N, D)
        margins = rewards[..., 0] - rewards[..., 1]
        out: dict[str, float] = {}
        for j, dim in enumerate(dims):
            acc = pair_accuracy(labels[:, j], margins[:, j])
            out[f"{dim}_acc_with_ties"] = acc.with_ties
            out[f"{dim}_acc_without_ties"] = acc.without_ties
            out[f"{dim}_pairs"] = acc.pairs
        return out

    return compute


class EpochToDataset(TrainerCallback):
    """Tell the training set which epoch starts, so augmentation draws differ per epoch.

    Accelerate forwards ``set_epoch`` to the dataset only when the sampler has none, which
    is not the case under DDP; this runs before each epoch's DataLoader iterator is made.
    """

    def __init__(self, dataset: PairDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class PairRewardTrainer(Trainer):
    """A Trainer for (A, B) preference pairs; everything else is the library's."""

    def __init__(self, *args: Any, finetune_config: FinetuneConfig, setup: TrainSetup, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ft = finetune_config
        self.setup = setup
        # compute_loss returns a per-micro-batch mean: the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = False

    def _rewards(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = model(**{k: inputs[k] for k in MODEL_INPUT_KEYS})  # (2B, D): A videos, then B videos
        return split_rewards(rewards)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r_a, r_b = self._rewards(model, inputs)
        lc = self.ft.loss
        out = pair_loss(
            r_a, r_b, inputs["pair_labels"], kind=lc.type, btt_k=lc.btt_k, constant_margin=lc.constant_margin,
            mos_a=inputs.get("mos_a"), mos_b=inputs.get("mos_b"), mos_offset=lc.mos_offset,
        )
        if return_outputs:
            return out.loss, torch.stack([r_a, r_b], dim=-1)  # (B, D, 2)
        return out.loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), rewards.detach().float(), inputs["pair_labels"].detach()

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = param_groups(opt_model, self.ft, set(self.get_decay_parameter_names(opt_model)))
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            for g in groups:
                logger.info(
                    "param group %s: %d tensors, %.3fM parameters, lr %g, weight decay %g",
                    g["name"], len(g["params"]), sum(p.numel() for p in g["params"]) / 1e6, g["lr"], g["weight_decay"],
                )
        return self.optimizer

    # -- checkpoints -------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Adapter + other trained weights + config + processor + reward config (no pickled objects)."""
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        save_train_state(self.model, out)
        self.ft.save(out)
        self.setup.reward_config.save(out)
        self.setup.processor.save_pretrained(str(out))

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written to a staging directory and renamed into place, then ``latest``."""
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = run_dir / name
        staging = run_dir / f".staging-{name}"
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self.store_flos()
        self.save_model(str(staging), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))  # every rank writes its own RNG file
        if self.args.should_save:
            for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
                cb_name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(cb_name), list):
                    self.state.stateful_callbacks[cb_name].append(cb.state())
                else:
                    self.state.stateful_callbacks[cb_name] = cb.state()
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()  # all ranks' files are in the staging dir
        if self.args.should_save:
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            write_latest(run_dir, name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit, use_mtime=False)
            logger.info("saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_train_state(self.model if model is None else model, resume_from_checkpoint)
        logger.info("resumed weights from %s", resume_from_checkpoint)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    output_dir: Path
    serving_dir: Path | None
    last_checkpoint: Path | None
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    data_report: dict[str, Any]
    log_history: list[dict[str, float]]  # the Trainer's logged losses and evaluations, in order


def _report_to(cfg: FinetuneConfig) -> list[str]:
    if cfg.train.report_to == "auto":
        has_tb = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
        if not has_tb:
            logger.info("TensorBoard is not installed: logging to the console only (pip install tensorboard)")
        return ["tensorboard"] if has_tb else []
    return list(cfg.train.report_to)


def _use_cpu(cfg: FinetuneConfig) -> bool:
    if cfg.train.device == "cpu":
        return True
    npu = getattr(torch, "npu", None)
    return not (torch.cuda.is_available() or (npu is not None and npu.is_available()))


def training_arguments(cfg: FinetuneConfig, *, has_eval: bool) -> TrainingArguments:
    t, o = cfg.train, cfg.optim
    use_cpu = _use_cpu(cfg)
    if use_cpu and t.precision == "fp16":
        raise ConfigError("train.precision=fp16 needs a GPU; on the CPU use train.precision=bf16 or fp32")
    big = 10**9  # "only at the end": the Trainer saves at the final step when the strategy is steps
    return TrainingArguments(
        output_dir=str(cfg.output_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum_steps,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_epsilon=o.adam_epsilon,
        max_grad_norm=o.max_grad_norm,
        optim="adamw_torch",
        lr_scheduler_type=o.scheduler,
        warmup_steps=o.warmup_steps if o.warmup_steps > 0 else o.warmup_ratio,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=_report_to(cfg),
        eval_strategy="steps" if has_eval and t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps if has_eval and t.eval_steps > 0 else None,
        save_strategy="steps",
        save_steps=t.save_steps if t.save_steps > 0 else big,
        save_total_limit=t.keep_last,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=t.num_workers,
        dataloader_pin_memory=not use_cpu,
        remove_unused_columns=False,
        label_names=["pair_labels"],
        use_cpu=use_cpu,
        # only under torchrun: naming a backend makes accelerate expect a process group
        ddp_backend=t.ddp_backend or ("gloo" if use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None),
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


def resolve_resume(cfg: FinetuneConfig) -> str | None:
    if cfg.resume_from is None:
        return None
    pointer = cfg.output_dir / LATEST_NAME
    if cfg.resume_from in ("latest", "auto"):
        if pointer.is_file():
            path = cfg.output_dir / pointer.read_text().strip()
            if path.is_dir():
                return str(path)
        if cfg.resume_from == "auto":
            return None
        raise ConfigError(f"resume_from=latest but {pointer} names no checkpoint; train first or use resume_from=auto")
    path = Path(cfg.resume_from)
    if not path.is_dir():
        raise ConfigError(f"resume_from={path} is not a checkpoint directory")
    return str(path)


def build_datasets(cfg: FinetuneConfig, setup: TrainSetup) -> tuple[PairDataset, PairDataset | None]:
    builder = InputBuilder(setup.processor, setup.reward_config)
    dims = setup.reward_config.eval_dims
    d = cfg.data
    common: dict[str, Any] = dict(
        row_sampling=d.row_sampling,
        skip_bad_rows=d.skip_bad_rows,
        strict_labels=d.strict_labels,
        check_videos=d.check_videos,
        require_mos=cfg.loss.needs_mos,
        require_labels=cfg.loss.type != "reg",
        cache=PreparedCache(d.cache_dir) if d.cache_dir is not None else None,
        seed=cfg.seed,
    )
    if cfg.loss.needs_mos:
        # checked before reading rows, so the message names the missing columns rather than every row
        import pandas as pd

        header = list(pd.read_csv(d.train_csv, nrows=0).columns)
        cols = [f"MOS_{s}_{dim}" for s in "AB" for dim in dims]
        if not any(c in header for c in cols):
            raise ConfigError(f"loss.type={cfg.loss.type} needs MOS columns ({', '.join(cols)}); {d.train_csv} has none")
    train = pairs_dataset(
        d.train_csv, d.resolved_root, builder, dims, use_tied_data=d.use_tied_data, augment=d.augment, **common
    )
    evaluation = None
    if d.eval_csv is not None:
        # evaluation keeps ties (accuracy with ties needs them) and never augments
        evaluation = pairs_dataset(d.eval_csv, d.resolved_eval_root, builder, dims, use_tied_data=True, **common)
    return train, evaluation


class FinetuneRun:
    """One run, set up and then trained (the recipe: setup → train → evaluate → export).

    Tests use the two halves separately to look at the live model and the Trainer.
    """

    def __init__(self, cfg: FinetuneConfig) -> None:
        cfg.check_paths()
        set_seed(cfg.seed)
        self.cfg = cfg
        self.setup = build_model(cfg)
        self.train_dataset, self.eval_dataset = build_datasets(cfg, self.setup)
        pad_id = InputBuilder(self.setup.processor, self.setup.reward_config).pad_token_id
        self.trainer = PairRewardTrainer(
            model=self.setup.model,
            args=training_arguments(cfg, has_eval=self.eval_dataset is not None),
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            data_collator=PairCollator(pad_id),
            compute_metrics=pair_metrics(self.setup.reward_config.eval_dims),
            finetune_config=cfg,
            setup=self.setup,
            callbacks=[EpochToDataset(self.train_dataset)],
        )

    def train(self) -> FinetuneResult:
        cfg, trainer = self.cfg, self.trainer
        if trainer.is_world_process_zero():
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(cfg.output_dir)
        resume = resolve_resume(cfg)
        if resume:
            logger.info("resuming from %s", resume)
        train_out = trainer.train(resume_from_checkpoint=resume)
        eval_metrics: dict[str, float] = trainer.evaluate() if self.eval_dataset is not None else {}
        report: dict[str, Any] = {
            "train": self.train_dataset.report.to_dict(),
            "eval": self.eval_dataset.report.to_dict() if self.eval_dataset is not None else None,
        }
        report["train"]["skipped_while_loading"] = [b.describe() for b in self.train_dataset.skipped_at_load]
        serving_dir = last = None
        if trainer.is_world_process_zero():
            pointer = cfg.output_dir / LATEST_NAME
            last = cfg.output_dir / pointer.read_text().strip() if pointer.is_file() else None
            summary = {"train": train_out.metrics, "eval": eval_metrics, "data": report}
            (cfg.output_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            if cfg.train.export_at_end:
                serving_dir = export_serving(self.setup, cfg.output_dir / "serving")
        trainer.accelerator.wait_for_everyone()
        return FinetuneResult(
            output_dir=cfg.output_dir,
            serving_dir=serving_dir,
            last_checkpoint=last,
            train_metrics=dict(train_out.metrics),
            eval_metrics=dict(eval_metrics),
            data_report=report,
            log_history=list(trainer.state.log_history),
        )


def run(cfg: FinetuneConfig) -> FinetuneResult:
    """Train as configured; returns where everything went."""
    return FinetuneRun(cfg).train()


__all__ = [
    "FinetuneResult",
    "FinetuneRun",
    "PairRewardTrainer",
    "TrainSetup",
    "base_model_of",
    "build_model",
    "param_groups",
    "run",
]
