"""The scorer: load a checkpoint once, prepare items, run one padded forward pass, post-process.

    from model.scorer import VideoRewardScorer
    scorer = VideoRewardScorer.from_pretrained("ckpt", device="cpu", dtype="fp32")
    scorer.score([("a.mp4", "a red circle moving left")])   # [{"VQ":…, "MQ":…, "TA":…, "Overall":…}]

``prepare`` (CPU: decode + processor) and ``forward`` (device) are separate so
that a server can run preparation in a pool while the model computes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .device import DTYPE_NAMES, resolve_device, resolve_dtype
from .errors import InvalidInputError
from .inputs import Batch, InputBuilder, PreparedItem, collate
from .reward_config import RewardConfig
from .video import VideoSource


@dataclass
class ScoreRequest:
    """One (video, prompt) with optional per-item sampling overrides."""

    video: VideoSource
    prompt: str
    fps: float | None = None
    num_frames: int | None = None
    max_pixels: int | None = None


logger = logging.getLogger(__name__)


def normalize_rewards(raw: torch.Tensor, reward_config: RewardConfig) -> torch.Tensor:
    """(score − mean) / std per dimension, in float32. raw: (B, D)."""
    if reward_config.normalization is None:
        raise InvalidInputError("this checkpoint has no normalization statistics; score with normalize=false")
    stats = reward_config.normalization
    mean = torch.tensor([stats[d]["mean"] for d in reward_config.eval_dims], dtype=torch.float32)
    std = torch.tensor([stats[d]["std"] for d in reward_config.eval_dims], dtype=torch.float32)
    return (raw.float().cpu() - mean) / std


def to_scores(raw: torch.Tensor, reward_config: RewardConfig, normalize: bool) -> list[dict[str, float]]:
    """Post-process raw rewards (B, D) into per-item dicts with Overall = sum of the dimensions."""
    values = normalize_rewards(raw, reward_config) if normalize else raw.float().cpu()
    overall = values.sum(dim=1)
    out = []
    for row, tot in zip(values.tolist(), overall.tolist(), strict=True):
        item = dict(zip(reward_config.eval_dims, row, strict=True))
        item["Overall"] = tot
        out.append(item)
    return out


class VideoRewardScorer:
    """A loaded reward model plus its input builder. Thread-safe: forwards are serialised."""

    def __init__(self, loaded: LoadedCheckpoint, device: torch.device, dtype: torch.dtype) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.reward_config = loaded.reward_config
        self.builder = InputBuilder(loaded.processor, loaded.reward_config)
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32", **kwargs: Any
    ) -> VideoRewardScorer:
        dev = resolve_device(device)
        dt = resolve_dtype(dtype)
        return cls(load_checkpoint(path, device=dev, dtype=dt, **kwargs), dev, dt)

    # -- the three stages ----------------------------------------------------------
    def prepare(self, video: VideoSource, prompt: str, **overrides: Any) -> PreparedItem:
        return self.builder.prepare(video, prompt, **overrides)

    def collate(self, items: Sequence[PreparedItem]) -> Batch:
        return collate(items, self.builder.pad_token_id)

    @torch.inference_mode()
    def forward(self, items: Sequence[PreparedItem]) -> torch.Tensor:
        """Raw rewards (B, D), float32 on the CPU, for prepared items in one padded forward pass."""
        batch = self.collate(items).to(self.device, self.dtype)
        with self._lock:
            raw = self.model(**batch.as_kwargs())
        return raw.float().cpu()

    def default_normalize(self) -> bool:
        return self.reward_config.normalization is not None

    def postprocess(self, raw: torch.Tensor, normalize: bool | None = None) -> list[dict[str, float]]:
        return to_scores(raw, self.reward_config, self.default_normalize() if normalize is None else normalize)

    # -- convenience ----------------------------------------------------------------
    def score(
        self,
        requests: Iterable[ScoreRequest | tuple[VideoSource, str]],
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
    ) -> list[dict[str, float]]:
        """Prepare and score items, ``batch_size`` at a time (default: all in one pass)."""
        reqs = [r if isinstance(r, ScoreRequest) else ScoreRequest(*r) for r in requests]
        items = [
            self.prepare(r.video, r.prompt, fps=r.fps, num_frames=r.num_frames, max_pixels=r.max_pixels) for r in reqs
        ]
        if not items:
            return []
        step = batch_size or len(items)
        raw = torch.cat([self.forward(items[i : i + step]) for i in range(0, len(items), step)], dim=0)
        return self.postprocess(raw, normalize)

    def info(self) -> dict[str, Any]:
        rc = self.reward_config
        return {
            "checkpoint": str(self.loaded.path),
            "eval_dims": list(rc.eval_dims),
            "reward_token": rc.reward_token,
            "output_dim": rc.output_dim,
            "sampling": rc.sampling.to_dict(),
            "normalization": rc.normalization,
            "device": str(self.device),
            "dtype": DTYPE_NAMES[self.dtype],
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
