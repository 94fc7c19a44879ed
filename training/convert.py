"""Convert checkpoints between VideoAlign's layout and the serving format.

    python -m training.convert import-videoalign SRC_RUN_DIR OUT_DIR [--step N] [--base QWEN2VL_DIR] \
        [--prompt-template FILE] [--key-scheme auto|old|new] [--resize-vocab N] [--dtype float32|bfloat16|float16|auto]
    python -m training.convert export-videoalign SERVING_DIR OUT_DIR [--key-scheme old|new] [--step N]

Import (VideoAlign → serving). ``SRC_RUN_DIR`` holds ``model_config.json`` and
``checkpoint-<step>/`` folders (the highest step unless ``--step``); a folder
that holds the weight files itself is accepted too. Two weight layouts:

- Format 1, ``model.pth``: the full state dict of the PEFT-wrapped reward model
  (``base_model.model.`` prefix, ``<m>.base_layer.weight``,
  ``<m>.lora_A.default.weight``, ``<m>.lora_B.default.weight``, ``rm_head.weight``,
  an embedding that already holds the reward-token rows).
- Format 2, ``adapter_model.safetensors`` (LoRA keys without an adapter name)
  + ``non_lora_state_dict.pth`` (the trained full weights); the frozen base
  weights come from ``--base`` (a Qwen2-VL-2B-Instruct directory).

LoRA is merged as W' = W + (alpha / r) · B·A (alpha / sqrt(r) under rslora).
Old (``model.layers.*``, ``visual.*``) and current (``model.language_model.*``,
``model.visual.*``) key names are both read. The embedding is resized to the
tokenizer with reward tokens (151660 rows for Qwen2-VL-2B) as VideoAlign's
trainer does; ``lm_head`` is dropped (the reward model has none). Every
missing, unexpected or mis-shaped weight is an error that names the key.

Where the tokenizer, processor and Qwen2-VL ``config.json`` come from: ``--base``
when given; otherwise a ``checkpoint-<step>/`` or run folder that holds
``config.json`` and the tokenizer files (VideoAlign's trainer saves only weights,
so for its runs pass ``--base``; folders written by ``export-videoalign`` carry
them). Format 2 always needs ``--base`` for the frozen weights.

``.pth`` files are pickles: they are read with ``torch.load(weights_only=True)``
only, and a file that needs more than tensors is refused. VideoAlign does not
store its prompt template; pass it with ``--prompt-template FILE`` (text with a
``{prompt}`` placeholder and the reward tokens). Without it the project's default
template is used and a warning says that scores will differ from the published
model's.

Export (serving → VideoAlign) writes ``OUT_DIR/model_config.json`` and
``OUT_DIR/checkpoint-<step>/model.pth``: merged weights in the PEFT layout that
VideoAlign's loader expects (``base_model.model.`` prefix, ``lm_head`` tied to
the embedding, every LLM linear as ``base_layer`` plus a fresh adapter whose
``lora_B`` is zero, so the adapter adds nothing), plus ``config.json`` and the
tokenizer/processor files in the checkpoint folder and the prompt template in
``OUT_DIR/reward_config.json`` (for what ``model_config.json`` cannot say: the
prompt template and ``min_pixels``). ``import-videoalign`` reads all of these
back, so import(export(x)) reproduces x.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors
from torch import nn
from transformers import AutoProcessor, Qwen2VLConfig

from model.checkpoint import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    add_reward_tokens,
    key_problems,
    load_checkpoint,
    save_checkpoint,
)
from model.errors import CheckpointError
from model.modeling import LEGACY_KEY_PATTERNS, VideoRewardModel
from model.reward_config import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SPECIAL_TOKENS, REWARD_CONFIG_NAME, RewardConfig
from model.video import DEFAULT_MIN_PIXELS, SamplingConfig

logger = logging.getLogger("training.convert" if __name__ == "__main__" else __name__)

KeyScheme = Literal["old", "new"]
PEFT_PREFIX = "base_model.model."
MODEL_CONFIG_NAME = "model_config.json"
FULL_WEIGHTS_NAME = "model.pth"
ADAPTER_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
NON_LORA_NAME = "non_lora_state_dict.pth"
CONVERSION_NAME = "conversion.json"
EMBED_KEY = "model.language_model.embed_tokens.weight"
DTYPE_CHOICES: dict[str, torch.dtype | None] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": None,
}
# lm_head is part of VideoAlign's model (Qwen2VLForConditionalGeneration) but not of the reward model.
DROPPED_KEYS = ("lm_head.weight", "lm_head.bias")
# What VideoAlign's trainer keeps out of LoRA (its lora_namespan_exclude, plus "visual" when vision_lora is off).
EXPORT_LORA_EXCLUDE = ["lm_head", "rm_head", "embed_tokens", "visual"]
DEFAULT_EXPORT_LORA_R = 8

_LORA_RE = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.(?P<param>weight|bias))?$"
)
_UNSUPPORTED_PEFT = ("lora_magnitude_vector", "lora_dropout", "hada_", "lokr_", "ia3_", "oft_", "boft_")


# ---------------------------------------------------------------------------
# Key names
# ---------------------------------------------------------------------------
def detect_key_scheme(keys: Iterable[str]) -> KeyScheme | None:
    """'new' for ``model.language_model.*`` / ``model.visual.*``, 'old' for ``model.layers.*`` / ``visual.*``.

    Keys must already be stripped of the PEFT prefix. Returns None when the keys say nothing
    (e.g. only ``rm_head.weight``); raises when both schemes appear.
    """
    new = old = False
    for k in keys:
        if k.startswith(("model.language_model.", "model.visual.")):
            new = True
        elif k.startswith(("visual.", "model.")):
            old = True
    if new and old:
        raise CheckpointError(
            "the checkpoint mixes old (model.layers.*, visual.*) and new (model.language_model.*, model.visual.*) "
            "key names; it was not saved by one transformers version. Re-save it, or pass --key-scheme to force one."
        )
    return "new" if new else "old" if old else None


def old_to_new(key: str) -> str:
    """Map an old-scheme key (transformers < 4.52) to the current scheme; other keys pass through."""
    for pattern, repl in LEGACY_KEY_PATTERNS.items():
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def new_to_old(key: str) -> str:
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    return key


def _to_new_scheme(state: Mapping[str, torch.Tensor], scheme: KeyScheme) -> dict[str, torch.Tensor]:
    return {(old_to_new(k) if scheme == "old" else k): v for k, v in state.items()}


# ---------------------------------------------------------------------------
# Reading weight files safely
# ---------------------------------------------------------------------------
def load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a ``{name: tensor}`` file; anything else is refused."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"refused to load {path}: torch.load(weights_only=True) would not unpickle it ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}). A .pth file is a pickle and can run "
            "code, so only plain tensor state dicts are read. Re-save the weights as tensors only "
            "(torch.save({name: tensor}) or safetensors) in an environment you trust."
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad}")
    return dict(obj)


def _strip_peft_prefix(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    prefixed = [k for k in state if k.startswith(PEFT_PREFIX)]
    if not prefixed:
        logger.info("%s: no %r prefix; reading it as a plain (not PEFT-wrapped) state dict", source, PEFT_PREFIX)
        return dict(state)
    stray = sorted(k for k in state if not k.startswith(PEFT_PREFIX))
    if stray:
        raise CheckpointError(f"{source}: unexpected keys without the {PEFT_PREFIX!r} prefix: {stray}")
    return {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face model directory (single file or sharded with an index)."""
    if (path / WEIGHTS_NAME).is_file():
        return load_safetensors(str(path / WEIGHTS_NAME))
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            with safe_open(str(path / shard), "pt") as f:
                for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    state[k] = f.get_tensor(k)
        return state
    pickles = sorted(p.name for p in path.glob("*.bin"))
    raise CheckpointError(
        f"{path} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}"
        + (f" (only pickle weights {pickles}, which are not read; re-save the model with safetensors)" if pickles else "")
    )


# ---------------------------------------------------------------------------
# LoRA folding
# ---------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """How to scale a LoRA update: alpha / r, or alpha / sqrt(r) under rslora."""

    r: int | None
    alpha: float | None
    use_rslora: bool = False

    def scale(self, rank: int, where: str) -> float:
        if self.alpha is None or self.r is None:
            raise CheckpointError(
                f"{where} holds LoRA weights but neither {MODEL_CONFIG_NAME} (peft_lora_config.lora_r / lora_alpha) "
                f"nor {ADAPTER_CONFIG_NAME} says how to scale them"
            )
        if rank != self.r:
            raise CheckpointError(
                f"{where} has LoRA rank {rank} but the config says lora_r={self.r}; the files do not belong together"
            )
        return self.alpha / (math.sqrt(rank) if self.use_rslora else rank)


@dataclass
class _LoraPair:
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    embedding: bool = False
    keys: list[str] = field(default_factory=list)


def split_peft_state(
    state: Mapping[str, torch.Tensor], source: str, *, adapter_names: tuple[str | None, ...] = ("default",)
) -> tuple[dict[str, torch.Tensor], dict[str, _LoraPair]]:
    """Split PEFT keys into plain weights and LoRA pairs per module.

    ``<m>.base_layer.<p>`` → ``<m>.<p>``; ``<m>.modules_to_save.<adapter>.<p>`` → ``<m>.<p>``
    (``original_module`` copies are dropped); ``<m>.lora_{A,B}[.<adapter>].weight`` are collected.
    """
    plain: dict[str, torch.Tensor] = {}
    saved_copies: dict[str, torch.Tensor] = {}
    lora: dict[str, _LoraPair] = {}
    for key, value in state.items():
        if any(tag in key for tag in _UNSUPPORTED_PEFT):
            raise CheckpointError(f"{source}: {key} belongs to a PEFT method this converter does not merge (LoRA only)")
        m = _LORA_RE.match(key)
        if m:
            adapter, param = m["adapter"], m["param"]
            if param is None and adapter in ("weight", "bias"):  # no adapter name: "<m>.lora_A.weight"
                adapter, param = None, adapter
            if adapter not in adapter_names:
                raise CheckpointError(
                    f"{source}: {key} belongs to adapter {adapter!r}; expected "
                    + " or ".join("no adapter name" if a is None else repr(a) for a in adapter_names)
                )
            if param == "bias":
                raise CheckpointError(f"{source}: {key} is a LoRA bias (lora_bias=True), which is not supported")
            pair = lora.setdefault(m["module"], _LoraPair())
            pair.embedding = m["kind"].startswith("lora_embedding")
            pair.keys.append(key)
            if m["kind"].endswith("A"):
                pair.a = value
            else:
                pair.b = value
            continue
        if ".original_module." in key:
            continue
        if ".modules_to_save." in key:
            module, _, rest = key.partition(".modules_to_save.")
            adapter, _, param = rest.partition(".")
            if adapter not in adapter_names:
                raise CheckpointError(f"{source}: {key} belongs to adapter {adapter!r}")
            saved_copies[f"{module}.{param}"] = value
            continue
        plain[key.replace(".base_layer.", ".")] = value
    plain.update(saved_copies)  # the trained copy wins over the frozen original
    for module, pair in lora.items():
        if pair.a is None or pair.b is None:
            raise CheckpointError(f"{source}: LoRA for {module} is incomplete: only {pair.keys}")
    return plain, lora


def merge_lora(
    weights: dict[str, torch.Tensor],
    lora: Mapping[str, _LoraPair],
    settings: LoraSettings,
    source: str,
    name_in_source: Callable[[str], str] = lambda k: k,
) -> int:
    """W' = W + scale · B·A in float32, in place. Returns the number of merged modules.

    ``name_in_source`` turns a (current-scheme) module name into the checkpoint's own name for messages.
    """
    missing = sorted(f"{name_in_source(m)}.base_layer.weight" for m in lora if f"{m}.weight" not in weights)
    if missing:
        raise CheckpointError(f"{source}: missing keys: base weights of LoRA-wrapped modules: {missing}")
    for module, pair in lora.items():
        assert pair.a is not None and pair.b is not None
        key = f"{module}.weight"
        base = weights[key]
        a, b = pair.a.float(), pair.b.float()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"{source}: LoRA for {name_in_source(module)} has incompatible shapes A {tuple(a.shape)}, B {tuple(b.shape)}"
            )
        rank = a.shape[0]
        delta = b @ a  # (out, in) for Linear; (dim, vocab) for Embedding
        if pair.embedding:
            delta = delta.T
        if delta.shape != base.shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {name_in_source(module)}: base weight {tuple(base.shape)}, "
                f"LoRA update B·A {tuple(delta.shape)}"
            )
        weights[key] = base.float() + settings.scale(rank, f"{source} ({name_in_source(module)})") * delta
    return len(lora)


# ---------------------------------------------------------------------------
# model_config.json → reward_config.json
# ---------------------------------------------------------------------------
def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def reward_config_from_videoalign(
    model_config: Mapping[str, Any], prompt_template: str, *, min_pixels: int | None = None
) -> RewardConfig:
    """Map VideoAlign's data_config / model_config / inference_config onto a :class:`RewardConfig`.

    ``min_pixels`` (which VideoAlign does not configure) defaults to qwen_vl_utils' floor, capped at max_pixels.
    """
    data = dict(model_config.get("data_config") or {})
    mc = dict(model_config.get("model_config") or {})
    dims = tuple(_as_list(data.get("eval_dim")) or ["VQ", "MQ", "TA"])
    use_special = bool(mc.get("use_special_tokens", False))
    pooling = "special" if use_special else str(mc.get("reward_token", "last"))
    num_frames = data.get("num_frames")
    sampling_kwargs: dict[str, Any] = {"sample_type": data.get("sample_type") or "uniform"}
    if num_frames is not None:
        sampling_kwargs.update(fps=None, num_frames=num_frames)
    elif data.get("fps") is not None:
        sampling_kwargs["fps"] = data["fps"]
    if data.get("max_frame_pixels") is not None:
        sampling_kwargs["max_pixels"] = int(data["max_frame_pixels"])
    # VideoAlign has no min_pixels setting; qwen_vl_utils' default floor only applies below max_pixels
    max_pixels = sampling_kwargs.get("max_pixels", SamplingConfig().max_pixels)
    sampling_kwargs["min_pixels"] = min_pixels if min_pixels is not None else min(DEFAULT_MIN_PIXELS, max_pixels)
    normalization = None
    inference = model_config.get("inference_config")
    if inference:
        absent = [f"{d}_{s}" for d in dims for s in ("mean", "std") if f"{d}_{s}" not in inference]
        if absent:
            raise CheckpointError(f"{MODEL_CONFIG_NAME}: inference_config lacks {absent}")
        normalization = {d: {"mean": float(inference[f"{d}_mean"]), "std": float(inference[f"{d}_std"])} for d in dims}
    special = tuple(f"<|{d}_reward|>" for d in dims) if pooling == "special" else DEFAULT_SPECIAL_TOKENS
    try:
        return RewardConfig(
            eval_dims=dims,
            reward_token=pooling,  # type: ignore[arg-type]
            output_dim=int(mc.get("output_dim", 1)),
            special_tokens=special,
            prompt_template=prompt_template,
            sampling=SamplingConfig(**sampling_kwargs),
            normalization=normalization,
        )
    except CheckpointError as e:
        raise CheckpointError(f"{MODEL_CONFIG_NAME} does not map to a valid reward_config.json: {e.message}") from e


def videoalign_model_config(rc: RewardConfig, lora: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict:
    """The inverse mapping, for export. Fields VideoAlign needs that we do not model come from ``base``."""
    base = base or {}
    data = dict(base.get("data_config") or {})
    data.setdefault("meta_data", None)  # VideoAlign's loader deletes these two keys, so they must exist
    data.setdefault("data_dir", None)
    data.update(
        fps=rc.sampling.fps,
        num_frames=rc.sampling.num_frames,
        max_frame_pixels=rc.sampling.max_pixels,
        eval_dim=list(rc.eval_dims),
        sample_type=rc.sampling.sample_type,
    )
    data.setdefault("prompt_template_type", None)
    mc = dict(base.get("model_config") or {})
    mc.setdefault("model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct")
    mc.update(output_dim=rc.output_dim, use_special_tokens=rc.reward_token == "special", reward_token=rc.reward_token)
    out: dict[str, Any] = {"data_config": data, "model_config": mc, "peft_lora_config": dict(lora)}
    if rc.normalization:
        out["inference_config"] = {
            f"{d}_{s}": rc.normalization[d][s] for d in rc.eval_dims for s in ("mean", "std")
        }
    return out


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------
@dataclass
class SourceRun:
    """Where the pieces of a VideoAlign run are."""

    run_dir: Path
    checkpoint_dir: Path
    step: int | None
    format: Literal["full", "lora"]
    model_config: dict[str, Any]


def _checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    steps: dict[int, Path] = {}
    for p in run_dir.glob("checkpoint-*"):
        suffix = p.name.removeprefix("checkpoint-")
        if p.is_dir() and suffix.isdigit():
            steps[int(suffix)] = p
    return steps


def _weights_format(folder: Path) -> Literal["full", "lora"] | None:
    if (folder / FULL_WEIGHTS_NAME).is_file():
        return "full"
    if (folder / ADAPTER_NAME).is_file() and (folder / NON_LORA_NAME).is_file():
        return "lora"
    return None


def locate_run(run_dir: str | Path, step: int | None = None) -> SourceRun:
    """Find model_config.json and the checkpoint folder (highest step unless ``step``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"VideoAlign run folder {run_dir} does not exist")
    cfg_path = run_dir / MODEL_CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {MODEL_CONFIG_NAME}; pass the run folder that holds it and the checkpoint-<step>/ folders"
        )
    try:
        model_config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    steps = _checkpoint_steps(run_dir)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{run_dir} has no checkpoint-{step}/; available steps: {sorted(steps) or 'none'}")
        folder, chosen = steps[step], step
    elif steps:
        chosen = max(steps)
        folder = steps[chosen]
        logger.info("using the highest step, checkpoint-%d (of %s); pick another with --step", chosen, sorted(steps))
    elif _weights_format(run_dir):
        folder, chosen = run_dir, None
    else:
        raise CheckpointError(f"{run_dir} has no checkpoint-<step>/ folders and no weight files of its own")
    fmt = _weights_format(folder)
    if fmt is None:
        raise CheckpointError(
            f"{folder} holds neither {FULL_WEIGHTS_NAME} nor {ADAPTER_NAME} + {NON_LORA_NAME}; "
            f"found {sorted(p.name for p in folder.iterdir())}"
        )
    if fmt == "full" and (folder / ADAPTER_NAME).is_file():
        logger.info("%s holds both %s and %s; reading %s, as VideoAlign does", folder, FULL_WEIGHTS_NAME, ADAPTER_NAME, FULL_WEIGHTS_NAME)
    return SourceRun(run_dir=run_dir, checkpoint_dir=folder, step=chosen, format=fmt, model_config=model_config)


def _has_processor_files(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )


def resolve_config_source(run: SourceRun, base: Path | None) -> Path:
    """The folder whose config.json, tokenizer and processor the output uses (see the module docstring)."""
    if base is not None:
        if not base.is_dir() or not (base / "config.json").is_file():
            raise CheckpointError(f"--base {base} is not a Qwen2-VL model directory (no config.json)")
        return base
    if run.format == "lora":
        raise CheckpointError(
            f"{run.checkpoint_dir} is a LoRA checkpoint ({ADAPTER_NAME} + {NON_LORA_NAME}): it holds only the trained "
            "weights. Pass --base /path/to/Qwen2-VL-2B-Instruct for the frozen base weights, tokenizer and processor."
        )
    for folder in (run.checkpoint_dir, run.run_dir):
        if _has_processor_files(folder):
            logger.info("no --base: using config.json, tokenizer and processor from %s", folder)
            return folder
    raise CheckpointError(
        f"{run.checkpoint_dir / FULL_WEIGHTS_NAME} holds the weights but no tokenizer, processor or Qwen2-VL "
        "config.json is stored with it. Pass --base /path/to/Qwen2-VL-2B-Instruct (the model it was trained from); "
        "its config.json, tokenizer and processor are used, and its weights are not read."
    )


def _lora_settings(run: SourceRun) -> LoraSettings:
    peft_cfg = run.model_config.get("peft_lora_config") or {}
    settings = LoraSettings(
        r=peft_cfg.get("lora_r"), alpha=peft_cfg.get("lora_alpha"), use_rslora=bool(peft_cfg.get("use_rslora", False))
    )
    adapter_cfg_path = run.checkpoint_dir / ADAPTER_CONFIG_NAME
    if adapter_cfg_path.is_file():
        acfg = json.loads(adapter_cfg_path.read_text())
        from_adapter = LoraSettings(r=acfg.get("r"), alpha=acfg.get("lora_alpha"), use_rslora=bool(acfg.get("use_rslora")))
        if settings.r is None:
            settings = from_adapter
        elif (settings.r, settings.alpha, settings.use_rslora) != (from_adapter.r, from_adapter.alpha, from_adapter.use_rslora):
            raise CheckpointError(
                f"{MODEL_CONFIG_NAME} (r={settings.r}, alpha={settings.alpha}, rslora={settings.use_rslora}) and "
                f"{adapter_cfg_path} (r={from_adapter.r}, alpha={from_adapter.alpha}, rslora={from_adapter.use_rslora}) disagree"
            )
    return settings


def _read_template(path: Path) -> str:
    if not path.is_file():
        raise CheckpointError(f"prompt template file {path} not found")
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text  # an editor's final newline is not part of the template


def _exported_reward_config(run: SourceRun) -> RewardConfig | None:
    """The reward_config.json that export-videoalign leaves beside model_config.json, if any."""
    if not (run.run_dir / REWARD_CONFIG_NAME).is_file():
        return None
    logger.info("%s holds %s (written by export-videoalign): its prompt template and min_pixels are used",
                run.run_dir, REWARD_CONFIG_NAME)
    return RewardConfig.load(run.run_dir)


def _prompt_template(run: SourceRun, template_file: Path | None, exported: RewardConfig | None) -> tuple[str, str]:
    """(template, where it came from)."""
    if template_file is not None:
        return _read_template(template_file), str(template_file)
    if exported is not None:
        return exported.prompt_template, str(run.run_dir / REWARD_CONFIG_NAME)
    kind = (run.model_config.get("data_config") or {}).get("prompt_template_type")
    logger.warning(
        "no --prompt-template given: using this project's default prompt template. VideoAlign does not store its "
        "template (this run's prompt_template_type is %r), so scores WILL DIFFER from the published model's until "
        "you convert again with --prompt-template FILE holding the matching template text ({prompt} placeholder "
        "and one reward token per dimension).",
        kind,
    )
    return DEFAULT_PROMPT_TEMPLATE, "default"


def _source_name(key: str, scheme: KeyScheme, prefixed: bool) -> str:
    name = new_to_old(key) if scheme == "old" else key
    return PEFT_PREFIX + name if prefixed else name


def _check_against_model(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    name_in_source: Callable[[str], str],
    source: str,
) -> None:
    def label(k: str) -> str:
        s = name_in_source(k)
        return k if s == k else f"{s} (= {k})"

    missing = sorted(label(k) for k in expected if k not in state)
    unexpected = sorted(label(k) for k in state if k not in expected)
    mismatched = sorted(
        f"{label(k)}: checkpoint {tuple(v.shape)}, model {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    )
    problems = key_problems(missing, unexpected, mismatched)
    if problems:
        hint = ""
        if len(missing) > 5 and len(unexpected) > 5:
            hint = " Many keys are both missing and unexpected: is --key-scheme right, or is --base the wrong model size?"
        raise CheckpointError(f"{source} does not match the reward model: " + "; ".join(problems) + "." + hint)


def _model_skeleton(config: Qwen2VLConfig, rc: RewardConfig, vocab: int) -> VideoRewardModel:
    config.reward_output_dim = rc.output_dim
    config.text_config.vocab_size = vocab
    with torch.device("meta"):
        return VideoRewardModel(config)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None, source_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    target = dtype or source_dtype
    return {k: v.to(target).contiguous() for k, v in state.items()}


def _majority_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for t in tensors:
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _fresh_output_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"output folder {out} exists and is not empty; choose a new folder or delete it first")
    return out


@dataclass
class ImportReport:
    out_dir: Path
    source: str
    step: int | None
    format: str
    key_scheme: str
    merged_lora_modules: int
    lora: dict[str, Any]
    vocab: dict[str, int]
    dropped_keys: list[str]
    prompt_template_source: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out_dir"] = str(self.out_dir)
        return d


def import_videoalign(
    src: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    base: str | Path | None = None,
    prompt_template: str | Path | None = None,
    key_scheme: Literal["auto", "old", "new"] = "auto",
    resize_vocab: int | None = None,
    dtype: str = "float32",
) -> ImportReport:
    """Convert a VideoAlign run into a serving checkpoint at ``out`` (see the module docstring)."""
    if dtype not in DTYPE_CHOICES:
        raise CheckpointError(f"--dtype must be one of {sorted(DTYPE_CHOICES)}, got {dtype!r}")
    out_dir = _fresh_output_dir(out)
    run = locate_run(src, step)
    base_dir = Path(base) if base is not None else None
    config_src = resolve_config_source(run, base_dir)
    exported = _exported_reward_config(run)
    template, template_source = _prompt_template(run, Path(prompt_template) if prompt_template else None, exported)
    rc = reward_config_from_videoalign(
        run.model_config, template, min_pixels=exported.sampling.min_pixels if exported else None
    )

    # -- 1. read the trained weights (and, for Format 2, the frozen base) --------------------
    if run.format == "full":
        path = run.checkpoint_dir / FULL_WEIGHTS_NAME
        raw = load_pickled_state_dict(path)
        prefixed = any(k.startswith(PEFT_PREFIX) for k in raw)
        trained = _strip_peft_prefix(raw, str(path))
        source = str(path)
    else:
        adapter = _strip_peft_prefix(load_safetensors(str(run.checkpoint_dir / ADAPTER_NAME)), ADAPTER_NAME)
        non_lora = _strip_peft_prefix(load_pickled_state_dict(run.checkpoint_dir / NON_LORA_NAME), NON_LORA_NAME)
        clash = sorted(set(adapter) & set(non_lora))
        if clash:
            raise CheckpointError(f"keys in both {ADAPTER_NAME} and {NON_LORA_NAME}: {clash}")
        trained = {**non_lora, **adapter}
        prefixed = True
        source = f"{run.checkpoint_dir} ({ADAPTER_NAME} + {NON_LORA_NAME})"
    scheme: KeyScheme
    if key_scheme == "auto":
        scheme = detect_key_scheme(trained) or "old"
        logger.info("key scheme of %s: %s", source, scheme)
    elif key_scheme in ("old", "new"):
        scheme = key_scheme
    else:
        raise CheckpointError(f"--key-scheme must be auto, old or new, got {key_scheme!r}")

    adapter_names: tuple[str | None, ...] = ("default",) if run.format == "full" else (None, "default")
    plain, lora = split_peft_state(trained, source, adapter_names=adapter_names)
    plain = _to_new_scheme(plain, scheme)
    lora = {(old_to_new(m) if scheme == "old" else m): p for m, p in lora.items()}
    if run.format == "lora":
        assert base_dir is not None
        base_state = read_safetensors_dir(base_dir)
        base_scheme = detect_key_scheme(base_state) or "old"
        base_state = _to_new_scheme(base_state, base_scheme)
        unknown = sorted(k for k in plain if k not in base_state and k not in ("rm_head.weight", *DROPPED_KEYS))
        if unknown:
            raise CheckpointError(
                f"unexpected keys in {NON_LORA_NAME}: {[_source_name(k, scheme, True) for k in unknown]}"
            )
        weights = {**base_state, **plain}
    else:
        weights = plain
    source_dtype = _majority_dtype(weights.values())  # what --dtype auto keeps

    # -- 2. merge LoRA ------------------------------------------------------------------------
    settings = _lora_settings(run)
    merged = merge_lora(weights, lora, settings, source, lambda m: _source_name(m, scheme, prefixed)) if lora else 0
    logger.info("merged LoRA into %d modules (alpha=%s, r=%s, rslora=%s)", merged, settings.alpha, settings.r, settings.use_rslora)
    dropped = sorted(k for k in DROPPED_KEYS if weights.pop(k, None) is not None)

    # -- 3. vocabulary: the tokenizer with reward tokens decides the embedding size -------------
    processor = AutoProcessor.from_pretrained(config_src)
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    new_tokens = [t for t in rc.special_tokens if t not in vocab] if rc.reward_token == "special" else []
    tokenizer_size = len(tokenizer) + len(new_tokens)
    rows = int(weights[EMBED_KEY].shape[0]) if EMBED_KEY in weights else 0  # absent: reported as missing below
    if resize_vocab is not None:
        if resize_vocab < tokenizer_size:
            raise CheckpointError(f"--resize-vocab {resize_vocab} is below the tokenizer size {tokenizer_size}")
        target = resize_vocab
    else:
        target = tokenizer_size if rc.reward_token == "special" or not rows else rows
    if 0 < rows < target:
        raise CheckpointError(
            f"the embedding has {rows} rows but {target} are needed (tokenizer with reward tokens: {tokenizer_size}); "
            "the missing rows were never trained and cannot be recovered. Is --base the model this run was trained from?"
        )
    if rows > target:
        logger.info("resizing the embedding from %d to %d rows (the tokenizer with reward tokens)", rows, target)
        weights[EMBED_KEY] = weights[EMBED_KEY][:target]

    # -- 4. check every key and shape against the reward model, then write --------------------
    config = Qwen2VLConfig.from_pretrained(config_src)
    model = _model_skeleton(config, rc, target)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_against_model(weights, expected, lambda k: _source_name(k, scheme, prefixed), source)
    weights = _cast(weights, DTYPE_CHOICES[dtype], source_dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    del weights
    if rc.reward_token == "special":
        kept = model.get_input_embeddings().weight.detach()
        add_reward_tokens(processor, model, rc.special_tokens)  # no-op resize when target == tokenizer size
        if model.get_input_embeddings().num_embeddings != target:
            model.resize_token_embeddings(target)
            model.get_input_embeddings().weight.data = kept
    save_checkpoint(out_dir, model, processor, rc)
    del model

    report = ImportReport(
        out_dir=out_dir,
        source=str(run.run_dir),
        step=run.step,
        format="model.pth" if run.format == "full" else "adapter+non_lora",
        key_scheme=scheme,
        merged_lora_modules=merged,
        lora={"r": settings.r, "alpha": settings.alpha, "use_rslora": settings.use_rslora},
        vocab={"checkpoint_rows": rows, "output_rows": target, "tokenizer_size": tokenizer_size},
        dropped_keys=dropped,
        prompt_template_source=template_source,
        dtype=str(DTYPE_CHOICES[dtype] or source_dtype).removeprefix("torch."),
    )
    (out_dir / CONVERSION_NAME).write_text(
        json.dumps({**report.to_dict(), "videoalign_model_config": run.model_config}, indent=2) + "\n"
    )
    load_checkpoint(out_dir)  # the strict serving loader must accept what we wrote
    logger.info("wrote serving checkpoint %s (verified with the serving loader)", out_dir)
    return report


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------
def _stored_dtype(path: Path) -> torch.dtype:
    name = WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() else None
    if name is None:
        index = json.loads((path / WEIGHTS_INDEX_NAME).read_text())
        name = index["weight_map"]["rm_head.weight"]
    with safe_open(str(path / name), "pt") as f:
        return f.get_tensor("rm_head.weight").dtype


def export_videoalign(
    serving_dir: str | Path,
    out: str | Path,
    *,
    key_scheme: KeyScheme = "old",
    step: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a serving checkpoint in VideoAlign's layout; returns the path of ``model.pth``."""
    serving_dir = Path(serving_dir)
    if key_scheme not in ("old", "new"):
        raise CheckpointError(f"--key-scheme for export must be old or new, got {key_scheme!r}")
    if not (serving_dir / WEIGHTS_NAME).is_file() and not (serving_dir / WEIGHTS_INDEX_NAME).is_file():
        raise CheckpointError(f"{serving_dir} is not a serving checkpoint (no {WEIGHTS_NAME})")
    out_dir = _fresh_output_dir(out)
    dtype = _stored_dtype(serving_dir)
    loaded = load_checkpoint(serving_dir, dtype=dtype)
    model, rc = loaded.model, loaded.reward_config
    provenance: dict[str, Any] = {}
    if (serving_dir / CONVERSION_NAME).is_file():
        provenance = json.loads((serving_dir / CONVERSION_NAME).read_text())
    source_cfg = provenance.get("videoalign_model_config") or {}
    old_lora = dict(source_cfg.get("peft_lora_config") or {})
    r = int(old_lora.get("lora_r") or DEFAULT_EXPORT_LORA_R)
    lora_cfg = {
        **old_lora,
        "lora_enable": True,
        "vision_lora": False,
        "lora_r": r,
        "lora_alpha": old_lora.get("lora_alpha") or 2 * r,
        "lora_target_modules": None,
        "lora_namespan_exclude": EXPORT_LORA_EXCLUDE,
        "lora_modules_to_save": None,
        "lora_task_type": old_lora.get("lora_task_type") or "CAUSAL_LM",
        "use_rslora": bool(old_lora.get("use_rslora", False)),
        "num_lora_modules": -1,
    }
    lora_cfg.setdefault("lora_dropout", 0.05)
    # VideoAlign puts LoRA on every Linear outside lora_namespan_exclude: all LLM linears.
    targets = {
        f"model.language_model.{name}"
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, nn.Linear) and not any(x in name for x in EXPORT_LORA_EXCLUDE)
    }
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            module, _, param = key.rpartition(".")
            name = new_to_old(key) if key_scheme == "old" else key
            if module in targets:
                mod_name = name.rpartition(".")[0]
                state[f"{PEFT_PREFIX}{mod_name}.base_layer.{param}"] = value
                if param == "weight":
                    # A fresh adapter as peft initialises one (kaiming-uniform A, zero B): it adds nothing,
                    # and training can continue from it.
                    a = torch.empty(r, value.shape[1])
                    bound = 1.0 / math.sqrt(value.shape[1])  # kaiming_uniform_(a=sqrt(5)) bound
                    a.uniform_(-bound, bound, generator=gen)
                    state[f"{PEFT_PREFIX}{mod_name}.lora_A.default.weight"] = a.to(value.dtype)
                    state[f"{PEFT_PREFIX}{mod_name}.lora_B.default.weight"] = torch.zeros(value.shape[0], r, dtype=value.dtype)
            else:
                state[PEFT_PREFIX + name] = value
        # VideoAlign's model is Qwen2VLForConditionalGeneration: lm_head is tied to the embedding.
        state[PEFT_PREFIX + "lm_head.weight"] = model.get_input_embeddings().weight
    state = {k: v.detach().contiguous() for k, v in state.items()}

    ckpt_step = step if step is not None else (provenance.get("step") or 0)
    ckpt_dir = out_dir / f"checkpoint-{ckpt_step}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights_path = ckpt_dir / FULL_WEIGHTS_NAME
    torch.save(state, weights_path)
    mc = videoalign_model_config(rc, lora_cfg, source_cfg)
    (out_dir / MODEL_CONFIG_NAME).write_text(json.dumps(mc, indent=2) + "\n")
    rc.save(out_dir)  # the prompt template and min_pixels, which model_config.json cannot hold
    cfg = model.config
    saved_dim = cfg.__dict__.pop("reward_output_dim", None)
    try:
        cfg.save_pretrained(ckpt_dir)
    finally:
        if saved_dim is not None:
            cfg.reward_output_dim = saved_dim
    loaded.processor.save_pretrained(ckpt_dir)
    if mc["data_config"].get("prompt_template_type") is None:
        logger.warning(
            "VideoAlign's code builds prompts from data_config.prompt_template_type, which this checkpoint never had "
            "(it was not imported from VideoAlign). Set it in %s to the upstream template type matching the template "
            "in %s before scoring with upstream tools.",
            out_dir / MODEL_CONFIG_NAME,
            out_dir / REWARD_CONFIG_NAME,
        )
    logger.info("wrote %s (%d tensors, %s key names) and %s", weights_path, len(state), key_scheme, out_dir / MODEL_CONFIG_NAME)
    return weights_path


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-videoalign", help="VideoAlign run folder → serving checkpoint")
    imp.add_argument("src_run_dir", type=Path)
    imp.add_argument("out_dir", type=Path)
    imp.add_argument("--step", type=int, default=None, help="checkpoint-<N> to convert (default: the highest)")
    imp.add_argument("--base", type=Path, default=None, help="Qwen2-VL-2B-Instruct directory (tokenizer, config, base weights)")
    imp.add_argument("--prompt-template", type=Path, default=None, help="text file with the template ({prompt} + reward tokens)")
    imp.add_argument("--key-scheme", choices=["auto", "old", "new"], default="auto")
    imp.add_argument("--resize-vocab", type=int, default=None, help="embedding rows (default: tokenizer size with reward tokens)")
    imp.add_argument("--dtype", choices=sorted(DTYPE_CHOICES), default="float32", help="dtype of the written weights")
    exp = sub.add_parser("export-videoalign", help="serving checkpoint → VideoAlign layout")
    exp.add_argument("serving_dir", type=Path)
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--key-scheme", choices=["old", "new"], default="old", help="old: transformers < 4.52, as VideoAlign")
    exp.add_argument("--step", type=int, default=None, help="name of the checkpoint-<N> folder (default: the imported step or 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "import-videoalign":
            report = import_videoalign(
                args.src_run_dir,
                args.out_dir,
                step=args.step,
                base=args.base,
                prompt_template=args.prompt_template,
                key_scheme=args.key_scheme,
                resize_vocab=args.resize_vocab,
                dtype=args.dtype,
            )
            print(json.dumps(report.to_dict(), indent=2))
        else:
            path = export_videoalign(args.serving_dir, args.out_dir, key_scheme=args.key_scheme, step=args.step)
            print(json.dumps({"model_pth": str(path), "model_config": str(Path(args.out_dir) / MODEL_CONFIG_NAME)}))
    except CheckpointError as e:
        logging.getLogger("training.convert").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
