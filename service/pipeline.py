"""One item from request bytes to raw rewards: resolve, check limits, decode, prepare, cache, batch.

Decoding and preparation run on a thread pool (PyAV and torch release the GIL
for the heavy parts), never in another process, so nothing is pickled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from model.errors import VideoRewardError
from model.inputs import InputBuilder, PreparedItem
from model.video import DecodedVideo, SamplingConfig, VideoMetadata, load_video, probe

from .batcher import Batcher
from .cache import LRU, Coalescer
from .errors import ServiceError
from .metrics import Metrics
from .schemas import VideoRef
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInput:
    """A resolved video: its bytes and their SHA-256 (the cache key's content part)."""

    data: bytes
    sha256: str
    label: str  # for messages: the upload's filename or the path


@dataclass
class ItemOutcome:
    raw: torch.Tensor | None = None  # (D,)
    error: VideoRewardError | None = None
    cached: bool = False
    decode_ms: float = 0.0
    queue_ms: float = 0.0
    forward_ms: float = 0.0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class InputResolver:
    """Turns uploads, base64 and server-side paths into bytes, enforcing size and path rules."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _check_size(self, n: int, label: str) -> None:
        if n > self.settings.max_video_bytes:
            raise ServiceError(
                "payload_too_large",
                f"video {label} is {n} bytes; the limit is {self.settings.max_video_bytes} bytes per video",
            )

    def from_bytes(self, data: bytes, label: str) -> VideoInput:
        self._check_size(len(data), label)
        return VideoInput(data=data, sha256=_digest(data), label=label)

    def from_base64(self, text: str, label: str) -> VideoInput:
        # 4 base64 chars carry 3 bytes: refuse before decoding anything too large
        self._check_size(len(text) * 3 // 4, label)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ServiceError("invalid_request", f"video {label}: base64 field is not valid base64") from None
        return self.from_bytes(data, label)

    def resolve_path(self, raw: str) -> Path:
        roots = self.settings.allowed_roots
        if not roots:
            raise ServiceError(
                "path_not_allowed",
                "server-side paths are disabled: no allowed roots are configured (set VIDEOREWARD_ALLOWED_ROOTS); upload the video instead",
            )
        if "\x00" in raw:
            raise ServiceError("path_not_allowed", "path contains a NUL byte")
        p = Path(raw)
        candidate = p if p.is_absolute() else roots[0] / p
        resolved = candidate.resolve()  # follows symlinks: an escaping link resolves outside the roots
        if not any(resolved.is_relative_to(root) for root in roots):
            raise ServiceError("path_not_allowed", f"path {raw!r} is outside the allowed roots")
        if not resolved.is_file():
            raise ServiceError("video_unreadable", f"path {raw!r} does not name a file under the allowed roots")
        return resolved

    def from_path(self, raw: str) -> VideoInput:
        path = self.resolve_path(raw)
        self._check_size(path.stat().st_size, repr(raw))
        return self.from_bytes(path.read_bytes(), repr(raw))

    def from_ref(self, ref: VideoRef, label: str) -> VideoInput:
        if ref.base64 is not None:
            return self.from_base64(ref.base64, label)
        assert ref.path is not None
        return self.from_path(ref.path)


class ItemPipeline:
    """Scores items with caching, coalescing, a decode pool and the batcher."""

    def __init__(
        self,
        settings: Settings,
        builder: InputBuilder,
        batcher: Batcher,
        metrics: Metrics,
        checkpoint_id: str,
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.batcher = batcher
        self.metrics = metrics
        self.checkpoint_id = checkpoint_id
        self.resolver = InputResolver(settings)
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        self.cache: LRU[torch.Tensor] = LRU(settings.cache_size)
        self._items = Coalescer[torch.Tensor]()
        self._decodes = Coalescer[DecodedVideo]()
        self.admitted = 0

    # -- admission ----------------------------------------------------------------------
    def admit(self, n: int) -> None:
        """Refuse work beyond capacity before any decoding (503 + Retry-After)."""
        if self.admitted + n > self.settings.max_queue_items:
            self.metrics.rejected.labels("queue_full").inc()
            raise ServiceError(
                "queue_full",
                f"the server is at capacity ({self.admitted} items in flight, limit {self.settings.max_queue_items}); retry later",
                retry_after=self.settings.retry_after_s,
            )
        self.admitted += n
        self.metrics.inflight.set(self.admitted)

    def release(self, n: int) -> None:
        self.admitted -= n
        self.metrics.inflight.set(self.admitted)

    # -- validation ----------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ServiceError("empty_prompt", "prompt is empty; send the text prompt the video was generated from")
        if len(prompt) > self.settings.max_prompt_chars:
            raise ServiceError(
                "prompt_too_long", f"prompt has {len(prompt)} characters; the limit is {self.settings.max_prompt_chars}"
            )
        return self.builder.check_prompt(prompt)

    def sampling(self, fps: float | None, num_frames: int | None, max_pixels: int | None) -> SamplingConfig:
        s = self.settings
        if num_frames is not None and num_frames > s.max_sample_frames:
            raise ServiceError("invalid_sampling", f"num_frames {num_frames} exceeds the limit {s.max_sample_frames}")
        if max_pixels is not None and max_pixels > s.max_item_pixels:
            raise ServiceError("invalid_sampling", f"max_pixels {max_pixels} exceeds the limit {s.max_item_pixels}")
        sampling = self.builder.sampling_for(fps=fps, num_frames=num_frames, max_pixels=max_pixels)
        if max_pixels is not None and max_pixels < sampling.min_pixels:
            raise ServiceError(
                "invalid_sampling", f"max_pixels {max_pixels} is below the checkpoint's min_pixels {sampling.min_pixels}"
            )
        return sampling

    def check_metadata(self, meta: VideoMetadata, label: str) -> None:
        s = self.settings
        if meta.num_streams > s.max_streams:
            raise ServiceError("too_many_streams", f"video {label} holds {meta.num_streams} streams; the limit is {s.max_streams}")
        if meta.width * meta.height > s.max_pixels_per_frame:
            raise ServiceError(
                "resolution_too_large",
                f"video {label} is {meta.width}x{meta.height}; the limit is {s.max_pixels_per_frame} pixels per frame",
            )
        duration = meta.duration if meta.duration is not None else meta.total_frames / meta.fps
        if duration > s.max_duration_s:
            raise ServiceError("video_too_long", f"video {label} lasts {duration:.1f} s; the limit is {s.max_duration_s:g} s")
        if meta.total_frames > s.max_frames:
            raise ServiceError(
                "too_many_frames", f"video {label} holds {meta.total_frames} frames; the limit is {s.max_frames}"
            )

    # -- work -----------------------------------------------------------------------------
    def _decode_sync(self, video: VideoInput, sampling: SamplingConfig) -> DecodedVideo:
        meta = probe(video.data)
        self.check_metadata(meta, video.label)
        self.metrics.videos_decoded.inc()
        return load_video(video.data, sampling, metadata=meta)

    async def _decode(self, video: VideoInput, sampling: SamplingConfig) -> DecodedVideo:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, self._decode_sync, video, sampling)
        try:
            return await asyncio.wait_for(fut, timeout=self.settings.decode_timeout_s)
        except TimeoutError:
            raise ServiceError(
                "decode_timeout", f"decoding video {video.label} took longer than {self.settings.decode_timeout_s:g} s"
            ) from None

    async def _prepare(self, video: VideoInput, prompt: str, sampling: SamplingConfig) -> PreparedItem:
        decoded, _ = await self._decodes.run((video.sha256, sampling), lambda: self._decode(video, sampling))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.builder.prepare_decoded, decoded, prompt)

    async def score(self, video: VideoInput, prompt: str, sampling: SamplingConfig) -> ItemOutcome:
        """Raw rewards for one item, or the error that stopped it (never raises for item-level problems)."""
        key = (self.checkpoint_id, video.sha256, prompt, sampling)
        hit = self.cache.get(key)
        if hit is not None:
            self.metrics.cache_hits.inc()
            return ItemOutcome(raw=hit, cached=True)
        self.metrics.cache_misses.inc()
        outcome = ItemOutcome()

        async def work() -> torch.Tensor:
            t0 = time.perf_counter()
            item = await self._prepare(video, prompt, sampling)
            outcome.decode_ms = (time.perf_counter() - t0) * 1e3
            self.metrics.decode.observe(outcome.decode_ms / 1e3)
            result = await self.batcher.submit(item)
            outcome.queue_ms, outcome.forward_ms = result.queue_ms, result.forward_ms
            self.cache.put(key, result.raw)
            return result.raw

        try:
            outcome.raw, outcome.cached = await self._items.run(key, work)
            self.metrics.items.inc()
        except VideoRewardError as e:
            outcome.error = e
            self.metrics.errors.labels(e.code).inc()
        except Exception as e:  # a bug, not bad input: still an answer, never a hang
            logger.exception("unexpected error while scoring %s", video.label)
            outcome.error = ServiceError("internal_error", f"unexpected {type(e).__name__} while scoring; see server log")
            self.metrics.errors.labels("internal_error").inc()
        return outcome

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
