"""The serving checkpoint format: load, save, and initialise from a base Qwen2-VL.

A serving checkpoint is one directory:

- ``config.json``: a ``Qwen2VLConfig``;
- ``model.safetensors`` (sharded with an index when large): ``model.visual.*``,
  ``model.language_model.*`` and ``rm_head.weight``;
- tokenizer, processor and chat-template files (``AutoProcessor`` reads them,
  reward tokens included);
- ``reward_config.json`` (:class:`~model.reward_config.RewardConfig`);
- optionally ``demo.json``, the card of a demo model built by ``python -m training.demo``
  (:func:`read_demo_card`); real weights have none.

Weights are read with safetensors only. No pickle anywhere on this path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, ProcessorMixin, Qwen2VLConfig

from .errors import CheckpointError
from .modeling import LEGACY_KEY_PATTERNS, VideoRewardModel
from .reward_config import RewardConfig

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# A checkpoint that training.demo built holds this card: {"demo": true, "name": ..., "note": ..., ...}.
DEMO_CARD_NAME = "demo.json"

@dataclass
class LoadedCheckpoint:
    model: VideoRewardModel
    processor: ProcessorMixin
    reward_config: RewardConfig
    path: Path
    reward_token_ids: tuple[int, ...]


def read_demo_card(path: Path) -> dict | None:
    """The checkpoint's demo card (``demo.json``, written by ``python -m training.demo``), or None for real weights."""
    f = path / DEMO_CARD_NAME
    if not f.is_file():
        return None
    try:
        card = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        # still say "demo": a damaged card must not let the demo pass for a real model
        logger.warning("unreadable %s (%s); treating the checkpoint as a demo model", f, e)
        return {"demo": True, "note": f"demo checkpoint (unreadable {DEMO_CARD_NAME})"}
    return card if isinstance(card, dict) and card.get("demo") is True else None


def _check_dir(path: Path, *, need_reward_config: bool) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json: not a Qwen2-VL checkpoint directory")
    if not ((path / WEIGHTS_NAME).is_file() or (path / WEIGHTS_INDEX_NAME).is_file()):
        found = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pth", ".pt"})
        hint = (
            f" It holds pickle weights {found}; this loader reads safetensors only. "
            "Convert VideoAlign runs with `python -m training.convert import-videoalign`."
            if found
            else ""
        )
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}.{hint}")
    if need_reward_config:
        RewardConfig.load(path)  # raises with a clear message


def reward_token_ids(tokenizer, reward_config: RewardConfig) -> tuple[int, ...]:
    """Ids of the reward tokens, read from the tokenizer (never hard-coded)."""
    if reward_config.reward_token != "special":
        return ()
    ids = []
    vocab = tokenizer.get_vocab()
    for tok in reward_config.special_tokens:
        if tok not in vocab:
            raise CheckpointError(f"the tokenizer has no reward token {tok}; was it saved with the checkpoint?")
        ids.append(int(vocab[tok]))
    return tuple(ids)


def add_reward_tokens(processor: ProcessorMixin, model: VideoRewardModel, special_tokens: tuple[str, ...]) -> tuple[int, ...]:
    """Add the reward tokens as special tokens and resize the embedding to the tokenizer's size.

    For Qwen2-VL-2B this gives a vocabulary of 151660 with the tokens at 151657..151659.
    """
    tok = processor.tokenizer
    added = tok.add_special_tokens({"additional_special_tokens": list(special_tokens)}, replace_extra_special_tokens=False)
    logger.info("added %d reward tokens; tokenizer size %d", added, len(tok))
    model.resize_token_embeddings(len(tok))
    vocab = tok.get_vocab()
    return tuple(int(vocab[t]) for t in special_tokens)


def _config_for(path: Path, output_dim: int) -> Qwen2VLConfig:
    config = Qwen2VLConfig.from_pretrained(path)
    config.reward_output_dim = output_dim
    return config


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """Human-readable lines for a state dict that does not match its model (empty when it does)."""
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    return problems


def _strict_from_pretrained(path: Path, config: Qwen2VLConfig, dtype: torch.dtype, *, allow_missing_head: bool, **kw):
    model, info = VideoRewardModel.from_pretrained(
        # mismatches are collected and reported by us (as CheckpointError), not raised as RuntimeError
        path, config=config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, **kw
    )
    missing = sorted(info.get("missing_keys", ()))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith("lm_head."))
    mismatched = sorted(
        f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})" if isinstance(m, tuple) and len(m) == 3 else str(m)
        for m in info.get("mismatched_keys", ())
    )
    if allow_missing_head:
        missing = [k for k in missing if k != "rm_head.weight"]
    problems = key_problems(missing, unexpected, mismatched)
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs']}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model: " + "; ".join(problems))
    return model


def load_checkpoint(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **from_pretrained_kwargs,
) -> LoadedCheckpoint:
    """Load a serving checkpoint. Every missing, unexpected or mis-shaped weight is an error."""
    path = Path(path)
    _check_dir(path, need_reward_config=True)
    rc = RewardConfig.load(path)
    processor = AutoProcessor.from_pretrained(path)
    ids = reward_token_ids(processor.tokenizer, rc)
    config = _config_for(path, rc.output_dim)
    model = _strict_from_pretrained(path, config, dtype, allow_missing_head=False, **from_pretrained_kwargs)
    if rc.reward_token == "special" and max(ids) >= model.get_input_embeddings().num_embeddings:
        raise CheckpointError(
            f"reward token ids {ids} lie outside the embedding ({model.get_input_embeddings().num_embeddings} rows)"
        )
    model.set_pooling(rc.reward_token, ids)
    if "tp_plan" not in from_pretrained_kwargs and "device_map" not in from_pretrained_kwargs:
        model.to(device)
    model.eval()
    logger.info(
        "loaded %s: %.1fM parameters, dims %s, pooling %s, dtype %s",
        path, sum(p.numel() for p in model.parameters()) / 1e6, list(rc.eval_dims), rc.reward_token, dtype,
    )
    return LoadedCheckpoint(model=model, processor=processor, reward_config=rc, path=path, reward_token_ids=ids)


def init_from_base(
    base: str | Path,
    reward_config: RewardConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> LoadedCheckpoint:
    """Start a reward model from a plain Qwen2-VL directory (e.g. Qwen2-VL-2B-Instruct).

    Reads old (``model.layers.*``, ``visual.*``) or current key names, drops ``lm_head``,
    adds the reward tokens, resizes the embedding, and creates a fresh ``rm_head``.
    """
    path = Path(base)
    _check_dir(path, need_reward_config=False)
    rc = reward_config or RewardConfig()
    processor = AutoProcessor.from_pretrained(path)
    config = _config_for(path, rc.output_dim)
    if seed is not None:
        torch.manual_seed(seed)
    # key_mapping reads the old key scheme of the published Qwen2-VL weights; it applies to this
    # load only, so saving still writes current names.
    model = _strict_from_pretrained(path, config, dtype, allow_missing_head=True, key_mapping=LEGACY_KEY_PATTERNS)
    ids: tuple[int, ...] = ()
    if rc.reward_token == "special":
        ids = add_reward_tokens(processor, model, rc.special_tokens)
    model.set_pooling(rc.reward_token, ids)
    return LoadedCheckpoint(model=model, processor=processor, reward_config=rc, path=path, reward_token_ids=ids)


def save_checkpoint(
    directory: str | Path,
    model: VideoRewardModel,
    processor: ProcessorMixin,
    reward_config: RewardConfig,
    *,
    max_shard_size: str = "2GB",
) -> Path:
    """Write a serving checkpoint (safetensors, sharded with an index when large)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if model.output_dim != reward_config.output_dim:
        raise CheckpointError(f"rm_head has {model.output_dim} outputs but reward_config says {reward_config.output_dim}")
    cfg = model.config
    saved_dim = cfg.__dict__.pop("reward_output_dim", None)  # keep config.json a plain Qwen2VLConfig
    try:
        cfg.text_config.vocab_size = model.get_input_embeddings().num_embeddings
        # save_original_format=False: write the current key names, never a load-time mapping reversed
        model.save_pretrained(out, max_shard_size=max_shard_size, save_original_format=False)
    finally:
        if saved_dim is not None:
            cfg.reward_output_dim = saved_dim
    processor.save_pretrained(out)
    reward_config.save(out)
    _verify_saved_keys(out)
    return out


def _verify_saved_keys(out: Path) -> None:
    from safetensors import safe_open

    if (out / WEIGHTS_INDEX_NAME).is_file():
        keys = list(json.loads((out / WEIGHTS_INDEX_NAME).read_text())["weight_map"])
    else:
        with safe_open(out / WEIGHTS_NAME, "pt") as f:
            keys = list(f.keys())
    bad = [k for k in keys if not (k.startswith(("model.visual.", "model.language_model.")) or k == "rm_head.weight")]
    if bad or "rm_head.weight" not in keys:
        raise CheckpointError(f"saved checkpoint {out} has unexpected key names {bad[:5]} (or no rm_head.weight)")
