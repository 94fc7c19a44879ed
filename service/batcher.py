"""Dynamic batching across concurrent requests.

Prepared items wait in buckets by token count (powers of two), so one huge
video does not pad a batch of small ones. A bucket is flushed when it holds
``max_batch_size`` items, when its padded token count reaches
``max_batch_tokens``, or when its oldest item has waited ``max_wait_ms``. The
oldest bucket goes first. One forward runs at a time; meanwhile the decode
pool keeps preparing the next items.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from model.inputs import PreparedItem

from .engine import Engine
from .errors import ServiceError
from .metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    raw: torch.Tensor  # (D,) raw rewards for one item
    queue_ms: float
    forward_ms: float
    batch_size: int


@dataclass
class _Pending:
    item: PreparedItem
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)


def bucket_of(num_tokens: int) -> int:
    return max(0, math.ceil(math.log2(max(num_tokens, 1))))


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._buckets: dict[int, list[_Pending]] = {}
        self._cond = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.batches_run = 0

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._closing = True
        async with self._cond:
            self._cond.notify_all()
        if self._task is not None:
            await self._task
        for bucket in self._buckets.values():
            for p in bucket:
                if not p.future.done():
                    p.future.set_exception(ServiceError("shutting_down", "the server is shutting down"))
        self._buckets.clear()

    # -- submit ------------------------------------------------------------------------
    def depth(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    async def submit(self, item: PreparedItem) -> BatchResult:
        if self._closing or not self.alive:
            raise ServiceError("engine_unavailable", "the batcher is not running")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        async with self._cond:
            self._buckets.setdefault(bucket_of(item.num_tokens), []).append(_Pending(item, fut))
            self.metrics.queue_depth.set(self.depth())
            self._cond.notify_all()
        return await fut

    # -- the loop ------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for key in list(self._buckets):
            live = [p for p in self._buckets[key] if not p.future.done()]
            if live:
                self._buckets[key] = live
            else:
                del self._buckets[key]

    def _full(self, bucket: list[_Pending]) -> bool:
        if len(bucket) >= self.max_batch_size:
            return True
        return max(p.item.num_tokens for p in bucket) * len(bucket) >= self.max_batch_tokens

    def _oldest_bucket(self) -> int:
        return min(self._buckets, key=lambda k: self._buckets[k][0].enqueued)

    def _take(self, key: int) -> list[_Pending]:
        bucket = self._buckets[key]
        batch: list[_Pending] = []
        longest = 0
        for p in bucket:
            longest_if = max(longest, p.item.num_tokens)
            if batch and (len(batch) >= self.max_batch_size or longest_if * (len(batch) + 1) > self.max_batch_tokens):
                break
            batch.append(p)
            longest = longest_if
        rest = bucket[len(batch) :]
        if rest:
            self._buckets[key] = rest
        else:
            del self._buckets[key]
        return batch

    async def _next_batch(self) -> list[_Pending] | None:
        async with self._cond:
            while True:
                self._drop_cancelled()
                if not self._buckets:
                    if self._closing:
                        return None
                    await self._cond.wait()
                    continue
                key = self._oldest_bucket()
                bucket = self._buckets[key]
                deadline = bucket[0].enqueued + self.max_wait
                now = time.monotonic()
                if self._full(bucket) or now >= deadline or self._closing:
                    batch = self._take(key)
                    self.metrics.queue_depth.set(self.depth())
                    return batch
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=deadline - now)
                except TimeoutError:
                    pass

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            await self._execute(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        items = [p.item for p in batch]
        self.metrics.batch_items.observe(len(items))
        self.metrics.batch_tokens.observe(max(it.num_tokens for it in items) * len(items))
        for p in batch:
            self.metrics.queue_wait.observe(start - p.enqueued)
        try:
            raw = await self.engine.forward(items)
        except ServiceError as e:
            self._fail(batch, e)
            return
        except Exception as e:  # the forward failed: fail this batch only
            logger.error("forward pass of %d items failed: %s", len(items), e)
            self._fail(batch, ServiceError("inference_failed", f"the forward pass failed ({type(e).__name__}); retry"))
            return
        forward_s = time.monotonic() - start
        self.metrics.forward.observe(forward_s)
        self.batches_run += 1
        for i, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result(
                    BatchResult(
                        raw=raw[i],
                        queue_ms=(start - p.enqueued) * 1e3,
                        forward_ms=forward_s * 1e3,
                        batch_size=len(batch),
                    )
                )

    @staticmethod
    def _fail(batch: list[_Pending], error: Exception) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)
