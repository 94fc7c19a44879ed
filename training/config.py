"""The fine-tuning config: one validated object per run, loaded from YAML with ``key=value`` overrides.

    cfg = load_config("examples/tiny.yaml", ["output_dir=runs/x", "data.train_csv=pairs.csv", "optim.lr=1e-4"])

Overrides use dotted paths into the nested sections and YAML values
(``lora.r=8``, ``data.augment.frame_shuffle_p=0.5``, ``model.reward.eval_dims=[VQ,MQ]``,
``base_model=null``). The config is validated once, at start, and every error
says which key is wrong and what is accepted. It is saved as ``finetune_config.yaml``
beside the run and inside every checkpoint, so a run can be reproduced (and a
checkpoint exported) from its saved config alone.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.errors import InvalidInputError
from model.reward_config import DEFAULT_PROMPT_TEMPLATE

CONFIG_NAME = "finetune_config.yaml"

LossType = Literal["btt", "bt", "margin", "constant_margin", "scaled", "reg"]
Precision = Literal["fp32", "bf16", "fp16"]
Scheduler = Literal["constant_with_warmup", "cosine", "linear", "constant"]
RowSampling = Literal["none", "fps", "num_frames"]
LM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_LORA_TARGETS = ["qkv", "proj", "fc1", "fc2"]


class ConfigError(InvalidInputError):
    """The fine-tuning config (YAML or a ``key=value`` override) is invalid."""

    code = "invalid_config"


class _Section(BaseModel):
    # Unknown keys are typos: refuse them rather than silently training with a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Section):
    """Augmentation of the decoded uint8 frames, before the processor (training set only)."""

    frame_shuffle_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of shuffling a video's frame order")
    color_jitter_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of colour jitter on a video")
    brightness: float = Field(0.2, ge=0.0, lt=1.0)
    contrast: float = Field(0.2, ge=0.0, lt=1.0)
    saturation: float = Field(0.2, ge=0.0, lt=1.0)

    @property
    def enabled(self) -> bool:
        return self.frame_shuffle_p > 0 or self.color_jitter_p > 0


class DataConfig(_Section):
    train_csv: Path
    root: Path | None = Field(None, description="data root the CSV paths are relative to (default: the CSV's folder)")
    eval_csv: Path | None = None
    eval_root: Path | None = Field(None, description="default: data.root")
    # Sampling for training (and for the exported checkpoint): overrides of the starting checkpoint's defaults.
    fps: float | None = Field(None, gt=0)
    num_frames: int | None = Field(None, ge=2)
    max_pixels: int | None = Field(None, ge=784)
    min_pixels: int | None = Field(None, ge=784)
    # VideoAlign's CSVs carry fps_A/num_frames_A describing the *source* video, so by default they are
    # not sampling options. "fps"/"num_frames" use that column as a per-row sampling override.
    row_sampling: RowSampling = "none"
    use_tied_data: bool = True
    skip_bad_rows: bool = False
    strict_labels: bool = Field(False, description="a non-empty label other than A/B/same is a bad row, not masked")
    check_videos: bool = Field(True, description="probe every video at start so bad files fail fast, naming the row")
    cache_dir: Path | None = None
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.fps is not None and self.num_frames is not None:
            raise ValueError("set at most one of data.fps and data.num_frames")
        return self

    @property
    def resolved_root(self) -> Path:
        return self.root if self.root is not None else self.train_csv.parent

    @property
    def resolved_eval_root(self) -> Path:
        if self.eval_root is not None:
            return self.eval_root
        if self.root is not None:
            return self.root
        return (self.eval_csv or self.train_csv).parent


class RewardSettings(_Section):
    """How a fresh reward model is set up from a base Qwen2-VL (ignored when continuing a serving checkpoint)."""

    eval_dims: list[str] = Field(default_factory=lambda: ["VQ", "MQ", "TA"])
    reward_token: Literal["special", "last", "mean"] = "special"
    output_dim: int | None = Field(None, ge=1, description="default: 1 for special pooling, len(eval_dims) otherwise")
    special_tokens: list[str] | None = Field(None, description="default: <|{dim}_reward|> per dimension")
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    normalization: dict[str, dict[str, float]] | None = None


class ModelConfig(_Section):
    dtype: Precision = Field("fp32", description="dtype the weights are held in (use precision for autocast)")
    tune_vision: bool = Field(True, description="vision tower full-parameter (true) or frozen (false)")
    tune_merger: bool = True
    vision_grad_ckpt: bool = False
    lm_grad_ckpt: bool = False
    reward: RewardSettings = Field(default_factory=RewardSettings)


class LoraSettings(_Section):
    enabled: bool = Field(True, description="LoRA on the language model; false freezes it")
    r: int = Field(64, ge=1)
    alpha: float = Field(128, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    rslora: bool = False
    target_modules: list[str] = Field(default_factory=lambda: list(LM_LORA_TARGETS))
    exclude: list[str] = Field(default_factory=list, description="module names (or name suffixes) to leave without LoRA")
    vision: bool = Field(False, description="LoRA on the vision blocks too (needs model.tune_vision=false)")
    vision_target_modules: list[str] = Field(default_factory=lambda: list(VISION_LORA_TARGETS))


class OptimConfig(_Section):
    lr: float = Field(2e-6, gt=0, description="LoRA and rm_head")
    vision_lr: float | None = Field(None, gt=0, description="default: lr")
    merger_lr: float | None = Field(None, gt=0, description="default: lr")
    special_token_lr: float | None = Field(None, gt=0, description="reward-token embedding rows; default: lr")
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    scheduler: Scheduler = "constant_with_warmup"
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0, description="overrides warmup_ratio when > 0")


class LossConfig(_Section):
    type: LossType = "btt"
    btt_k: float = Field(5.0, gt=1.0, description="the Bradley-Terry-with-ties tie parameter k")
    constant_margin: float = 0.57
    mos_offset: float = Field(3.0, description="reg: each reward is regressed onto MOS − mos_offset")

    @property
    def needs_mos(self) -> bool:
        return self.type in ("margin", "scaled", "reg")


class TrainConfig(_Section):
    per_device_batch_size: int = Field(1, ge=1, description="pairs per device per micro-batch")
    eval_batch_size: int = Field(4, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    precision: Precision = Field("fp32", description="mixed precision (autocast) for the forward pass")
    logging_steps: int = Field(10, ge=1)
    eval_steps: int = Field(0, ge=0, description="evaluate every N steps (0: only at the end, if data.eval_csv)")
    save_steps: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_last: int = Field(3, ge=1, description="periodic checkpoints to keep")
    report_to: list[str] | Literal["auto"] = Field("auto", description="'auto': tensorboard when installed")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (decode runs in them)")
    device: Literal["auto", "cpu"] = Field("auto", description="'cpu' forces the CPU even with an accelerator")
    ddp_backend: str | None = Field(None, description="default: gloo on CPU, nccl on CUDA, hccl on NPU")
    export_at_end: bool = Field(True, description="write a serving checkpoint to OUTPUT_DIR/serving at the end")


class FinetuneConfig(_Section):
    """The whole run. ``output_dir``, ``max_steps``, ``base_model`` sit at the top (the CLI contract)."""

    output_dir: Path
    base_model: Path | None = Field(None, description="plain Qwen2-VL dir: adds reward tokens and a fresh rm_head")
    init_checkpoint: Path | None = Field(None, description="serving checkpoint to continue training")
    seed: int = 42
    max_steps: int = Field(-1, description="optimizer steps; -1 means num_train_epochs decides")
    num_train_epochs: float = Field(1.0, gt=0)
    resume_from: str | None = Field(None, description="'latest', 'auto' (latest if any) or a checkpoint dir")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if (self.base_model is None) == (self.init_checkpoint is None):
            raise ValueError(
                "set exactly one of base_model (a plain Qwen2-VL directory, e.g. Qwen2-VL-2B-Instruct) "
                "and init_checkpoint (a serving checkpoint to continue training)"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be > 0, or -1 to train for num_train_epochs; got {self.max_steps}")
        if self.lora.vision and self.model.tune_vision:
            raise ValueError(
                "lora.vision=true adds LoRA to a vision tower that model.tune_vision=true already trains in full; "
                "set model.tune_vision=false to use vision LoRA"
            )
        if self.train.precision == "fp16" and self.model.dtype != "fp32":
            raise ValueError("fp16 mixed precision needs fp32 master weights: set model.dtype=fp32")
        return self

    def check_paths(self) -> None:
        """Inputs must exist before anything heavy starts; say which key points where."""
        problems = []
        start = self.base_model or self.init_checkpoint
        key = "base_model" if self.base_model is not None else "init_checkpoint"
        if start is not None and not (start / "config.json").is_file():
            problems.append(f"{key}={start} is not a model directory (no config.json)")
        if not self.data.train_csv.is_file():
            problems.append(f"data.train_csv={self.data.train_csv} does not exist")
        if not self.data.resolved_root.is_dir():
            problems.append(f"data.root={self.data.resolved_root} is not a directory")
        if self.data.eval_csv is not None and not self.data.eval_csv.is_file():
            problems.append(f"data.eval_csv={self.data.eval_csv} does not exist")
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


# ---------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------
def _known_keys(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (['a','b','c'], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=1e-5 or data.train_csv=pairs.csv)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]]...[path[-1]] = value``, refusing keys the config does not have."""
    known = _known_keys(FinetuneConfig)
    dotted = ".".join(path)
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    if dotted not in known and not dotted.startswith("model.reward.normalization") and dotted not in sections:
        close = difflib.get_close_matches(dotted, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
        raise ConfigError(f"unknown config key {dotted!r}{hint}")
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is {child!r}, not a section")
        node = child
    node[path[-1]] = value


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required; set it in the YAML or as an override, e.g. " + f"{loc}=..."
        elif e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, _known_keys(FinetuneConfig), n=3)
            msg = "unknown key" + (f"; did you mean {', '.join(close)}?" if close else "")
        lines.append(f"{loc}: {msg}")
    return "invalid fine-tuning config:\n  " + "\n  ".join(lines)


def config_from_dict(data: dict[str, Any]) -> FinetuneConfig:
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Read a YAML config (or start empty), apply ``key=value`` overrides in order, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; see examples/tiny.yaml for one")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
        data = loaded or {}
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return config_from_dict(data)
