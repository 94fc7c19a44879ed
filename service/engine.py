"""The forward pass behind a small interface. The tensor-parallel engine implements the same one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from model.inputs import PreparedItem
from model.scorer import VideoRewardScorer

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """Takes prepared items, returns raw rewards (B, D) float32 on the CPU."""

    @property
    def alive(self) -> bool: ...

    def info(self) -> dict: ...

    async def forward(self, items: Sequence[PreparedItem]) -> torch.Tensor: ...

    async def close(self) -> None: ...


class LocalEngine:
    """One model on one device; forwards run one at a time on a dedicated thread."""

    def __init__(self, scorer: VideoRewardScorer, *, max_consecutive_failures: int = 3) -> None:
        self.scorer = scorer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._failures = 0
        self._max_failures = max_consecutive_failures
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed and self._failures < self._max_failures

    def info(self) -> dict:
        return {"kind": "local", "alive": self.alive, "consecutive_failures": self._failures}

    async def forward(self, items: Sequence[PreparedItem]) -> torch.Tensor:
        if not self.alive:
            from .errors import ServiceError

            raise ServiceError("engine_unavailable", "the model engine is not available; retry on another replica")
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._pool, self.scorer.forward, list(items))
        except Exception:
            self._failures += 1
            logger.exception("forward pass failed (%d in a row)", self._failures)
            raise
        self._failures = 0
        return out

    async def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
