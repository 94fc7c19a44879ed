"""Video decoding, frame sampling and resizing (PyAV).

The numbers here reproduce the published VideoAlign / ``qwen_vl_utils``
pre-processing exactly:

* how many frames are sampled (:func:`num_sampled_frames`),
* which frames (:func:`sample_indices`, ``uniform`` and ``multi_pts``),
* the size frames are resized to (:func:`resized_hw`, transformers'
  ``smart_resize`` with ``factor=28``) and the resize itself
  (:func:`resize_frames`, bicubic with antialiasing on the uint8 tensor).

Decoding uses PyAV. Metadata (:func:`probe`) is read without decoding frames so
that callers can enforce size limits first. Only the sampled frames are
converted to RGB and decoding stops right after the last sampled frame.

Every failure caused by the input raises a typed error from
:mod:`model.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from model.errors import (
    InvalidInputError,
    InvalidSamplingError,
    NoVideoStreamError,
    TooFewFramesError,
    VideoDecodeError,
    VideoEmptyError,
    VideoError,
    VideoUnreadableError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FPS",
    "DecodedVideo",
    "IMAGE_FACTOR",
    "SamplingConfig",
    "VideoMetadata",
    "VideoSource",
    "decode_frames",
    "load_video",
    "num_sampled_frames",
    "probe",
    "resize_frames",
    "resized_hw",
    "sample_indices",
]

VideoSource = str | os.PathLike | bytes | bytearray | memoryview | typing.BinaryIO
"""A file path, the raw bytes of a video file, or a readable binary file-like object."""

# Constants of qwen_vl_utils (vision_process.py).
IMAGE_FACTOR = 28
FRAME_FACTOR = 2
DEFAULT_FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MIN_PIXELS_FLOOR = IMAGE_FACTOR * IMAGE_FACTOR  # 784: one 28x28 patch
DEFAULT_MAX_PIXELS = 448 * 448  # 200704
DEFAULT_MIN_PIXELS = 128 * 28 * 28  # 100352
# multi_pts sampling: a dense grid of 8 frames per second, 4 anchors, 6 frames around each.
MULTI_PTS_GRID_FPS = 8
MULTI_PTS_ANCHORS = 4
MULTI_PTS_HALF_WINDOW = 3
MULTI_PTS_MIN_GRID = 2 * MULTI_PTS_HALF_WINDOW + 1  # 7

ACCEPTED_FORMATS = "MP4/MOV (H.264, H.265, MPEG-4), WebM (VP8, VP9, AV1), MKV and other containers FFmpeg can demux"
SampleType = Literal["uniform", "multi_pts"]
_SAMPLE_TYPES: tuple[str, ...] = typing.get_args(SampleType)
FrameCountSource = Literal["container", "demux", "decode"]


# ---------------------------------------------------------------------------
# Sampling configuration
# ---------------------------------------------------------------------------
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(name: str, value: object) -> int:
    """``value`` as an int; integral floats (``8.0`` from JSON/CSV) are accepted."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidSamplingError(f"{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """How frames are chosen and sized.

    Exactly one of ``fps`` (frames sampled per second of video) and
    ``num_frames`` (a fixed count) is set. To switch a config to a fixed frame
    count use ``SamplingConfig().with_overrides(num_frames=8)`` or pass
    ``fps=None`` explicitly. ``min_pixels``/``max_pixels`` bound the area of
    each resized frame. ``sample_type="multi_pts"`` ignores ``fps`` and
    ``num_frames`` and always samples 24 frames around 4 anchors.
    """

    fps: float | None = DEFAULT_FPS
    num_frames: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    sample_type: SampleType = "uniform"

    def __post_init__(self) -> None:
        if (self.fps is None) == (self.num_frames is None):
            raise InvalidSamplingError(
                "set exactly one of fps and num_frames "
                f"(got fps={self.fps!r}, num_frames={self.num_frames!r}); "
                "to sample a fixed number of frames pass fps=None, "
                "e.g. SamplingConfig(fps=None, num_frames=8)"
            )
        if self.fps is not None:
            if not _is_number(self.fps) or not math.isfinite(self.fps) or self.fps <= 0:
                raise InvalidSamplingError(
                    f"fps must be a finite number > 0, got {self.fps!r} (the default is {DEFAULT_FPS})"
                )
            object.__setattr__(self, "fps", float(self.fps))
        if self.num_frames is not None:
            num_frames = _as_int("num_frames", self.num_frames)
            if num_frames < FRAME_FACTOR:
                raise InvalidSamplingError(f"num_frames must be >= {FRAME_FACTOR}, got {num_frames}")
            object.__setattr__(self, "num_frames", num_frames)
        max_pixels = _as_int("max_pixels", self.max_pixels)
        min_pixels = _as_int("min_pixels", self.min_pixels)
        if min_pixels < MIN_PIXELS_FLOOR:
            raise InvalidSamplingError(f"min_pixels must be >= {MIN_PIXELS_FLOOR} (one 28x28 patch), got {min_pixels}")
        if max_pixels < min_pixels:
            raise InvalidSamplingError(
                f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels}); raise max_pixels or lower min_pixels"
            )
        object.__setattr__(self, "max_pixels", max_pixels)
        object.__setattr__(self, "min_pixels", min_pixels)
        if self.sample_type not in _SAMPLE_TYPES:
            raise InvalidSamplingError(
                f"sample_type must be one of {', '.join(_SAMPLE_TYPES)}, got {self.sample_type!r}"
            )

    def with_overrides(
        self,
        *,
        fps: float | None = None,
        num_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ) -> SamplingConfig:
        """A copy with per-item overrides; ``None`` keeps the current value.

        Giving ``fps`` switches to fps mode (``num_frames=None``); giving
        ``num_frames`` switches to fixed-count mode (``fps=None``); giving both
        is an error.
        """
        if fps is not None and num_frames is not None:
            raise InvalidSamplingError(
                f"give either fps or num_frames, not both (got fps={fps!r}, num_frames={num_frames!r})"
            )
        changes: dict[str, Any] = {}
        if fps is not None:
            changes.update(fps=fps, num_frames=None)
        if num_frames is not None:
            changes.update(fps=None, num_frames=num_frames)
        if max_pixels is not None:
            changes["max_pixels"] = max_pixels
        if min_pixels is not None:
            changes["min_pixels"] = min_pixels
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain (JSON-serialisable) dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingConfig:
        """Build from a dict; keys whose value is ``None`` take the default.

        A dict with ``num_frames`` and no ``fps`` means fixed-count mode.
        Unknown keys are rejected.
        """
        if not isinstance(d, Mapping):
            raise InvalidSamplingError(f"sampling options must be an object, got {type(d).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in allowed)
        if unknown:
            raise InvalidSamplingError(
                f"unknown sampling option(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        kwargs = {k: v for k, v in d.items() if v is not None}
        if "num_frames" in kwargs and "fps" not in kwargs:
            kwargs["fps"] = None
        return cls(**kwargs)


# ---------------------------------------------------------------------------
# Frame counts and indices
# ---------------------------------------------------------------------------
def _round_even(x: float) -> int:
    """Nearest multiple of 2 with Python's round (ties to even: 5 -> 4, 7 -> 8)."""
    return round(x / FRAME_FACTOR) * FRAME_FACTOR


def _ceil_even(x: float) -> int:
    return math.ceil(x / FRAME_FACTOR) * FRAME_FACTOR


def _floor_even(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def _check_total_frames(total_frames: int) -> None:
    if isinstance(total_frames, bool) or not isinstance(total_frames, int) or total_frames < 0:
        raise VideoError(f"total_frames must be a non-negative integer, got {total_frames!r}")


def _check_video_fps(video_fps: float) -> None:
    if not _is_number(video_fps) or not math.isfinite(video_fps) or video_fps <= 0:
        raise VideoUnreadableError(f"the video reports an invalid frame rate ({video_fps!r}); it must be > 0")


def num_sampled_frames(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
) -> int:
    """How many frames are sampled (``qwen_vl_utils.smart_nframes``).

    fps mode: ``total_frames / video_fps * fps`` clamped to
    ``[4, floor_even(min(768, total_frames))]`` and rounded to an even number.
    num_frames mode: ``num_frames`` rounded to an even number. Either way the
    result is capped at ``total_frames`` and must be at least 2, else
    :class:`TooFewFramesError`. Exactly one of ``fps``/``num_frames`` is given.
    """
    _check_total_frames(total_frames)
    if (fps is None) == (num_frames is None):
        raise InvalidSamplingError(
            f"give exactly one of fps and num_frames (got fps={fps!r}, num_frames={num_frames!r})"
        )
    if num_frames is not None:
        n = _round_even(_as_int("num_frames", num_frames))
        mode = f"num_frames={num_frames}"
    else:
        if not _is_number(fps) or not math.isfinite(fps) or fps <= 0:
            raise InvalidSamplingError(f"fps must be a finite number > 0, got {fps!r}")
        _check_video_fps(video_fps)
        min_frames = _ceil_even(FPS_MIN_FRAMES)
        max_frames = _floor_even(min(FPS_MAX_FRAMES, total_frames))
        raw = total_frames / video_fps * fps
        n = _round_even(min(max(raw, min_frames), max_frames))
        mode = f"fps={fps}"
    if n > total_frames:
        n = total_frames
    if not FRAME_FACTOR <= n <= total_frames:
        raise TooFewFramesError(
            f"the video has {total_frames} frame(s); sampling ({mode}) needs at least "
            f"{FRAME_FACTOR} frames. Supply a longer video."
        )
    return n


def _uniform_indices(total_frames: int, n: int) -> list[int]:
    return torch.linspace(0, total_frames - 1, n, dtype=torch.float32).round().long().tolist()


def sample_indices(total_frames: int, video_fps: float, sampling: SamplingConfig) -> list[int]:
    """Indices of the frames to sample.

    ``uniform`` indices strictly ascend. ``multi_pts`` windows may overlap on
    short videos, so those indices may repeat and step back;
    :func:`decode_frames` accepts any order.

    ``uniform``: ``torch.linspace(0, total_frames - 1, n).round()`` with ``n``
    from :func:`num_sampled_frames`.

    ``multi_pts``: a grid of ``m = int(total_frames * 8 // video_fps)``
    evenly spaced frames; 4 anchors evenly spaced over grid positions
    ``[3, m - 4]``; the 6 grid frames ``grid[a-3:a+3]`` around each anchor
    (24 frames). Needs ``m >= 7`` and at least 2 frames.
    """
    _check_total_frames(total_frames)
    if sampling.sample_type == "uniform":
        n = num_sampled_frames(total_frames, video_fps, fps=sampling.fps, num_frames=sampling.num_frames)
        return _uniform_indices(total_frames, n)

    # multi_pts
    _check_video_fps(video_fps)
    # Float floor division as in the published code (exact floor of the true quotient).
    m = int(total_frames * MULTI_PTS_GRID_FPS // video_fps)
    if total_frames < FRAME_FACTOR or m < MULTI_PTS_MIN_GRID:
        raise TooFewFramesError(
            f"the video has {total_frames} frame(s) at {video_fps:g} fps; multi_pts sampling "
            f"needs a grid of at least {MULTI_PTS_MIN_GRID} points "
            f"(total_frames * {MULTI_PTS_GRID_FPS} // fps = {m}) and at least "
            f"{FRAME_FACTOR} frames. Supply a longer video or use sample_type='uniform'."
        )
    grid = torch.linspace(0, total_frames - 1, m, dtype=torch.float32).round().long()
    anchors = (
        torch.linspace(
            MULTI_PTS_HALF_WINDOW,
            m - MULTI_PTS_HALF_WINDOW - 1,
            MULTI_PTS_ANCHORS,
            dtype=torch.float32,
        )
        .round()
        .long()
        .tolist()
    )
    h = MULTI_PTS_HALF_WINDOW
    return torch.cat([grid[a - h : a + h] for a in anchors]).tolist()


# ---------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------
def resized_hw(height: int, width: int, *, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target ``(height, width)``: transformers' ``smart_resize`` with ``factor=28``.

    Both sides become multiples of 28 (nearest), then the frame is scaled down
    (floor) to at most ``max_pixels`` or up (ceil) to at least ``min_pixels``
    keeping the aspect ratio.
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise VideoError(f"frame {name} must be a positive integer, got {value!r}")
    min_pixels = _as_int("min_pixels", min_pixels)
    max_pixels = _as_int("max_pixels", max_pixels)
    if min_pixels < MIN_PIXELS_FLOOR or max_pixels < min_pixels:
        raise InvalidSamplingError(
            f"need {MIN_PIXELS_FLOOR} <= min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}"
        )
    try:
        h, w = smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:
        raise VideoError(
            f"the video's frames are {width}x{height}; the aspect ratio must be at most 200:1 ({exc})"
        ) from exc
    return int(h), int(w)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize uint8 ``(T, C, H, W)`` frames to ``(height, width)``.

    Bicubic with antialiasing on the uint8 tensor (torchvision v2), as
    ``qwen_vl_utils`` does; the result stays uint8. Returns ``frames``
    unchanged if the size already matches.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, C, H, W), got shape {tuple(frames.shape)}")
    if frames.shape[-2:] == (height, width):
        return frames
    return tvf.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)


# ---------------------------------------------------------------------------
# Sources and containers
# ---------------------------------------------------------------------------
class _Source:
    """Normalises a :data:`VideoSource` so that it can be opened more than once.

    A caller's file-like object is never closed; its position is restored
    after every open, so ``probe(f)`` followed by ``load_video(f)`` works.
    """

    def __init__(self, source: VideoSource) -> None:
        self._path: str | None = None
        self._data: bytes | bytearray | memoryview | None = None
        self._file: typing.BinaryIO | None = None
        self._start = 0
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            self._path = path
            self.description = f"file {path!r}"
            if not os.path.exists(path):
                raise VideoUnreadableError(f"video file not found: {path!r}")
            if not os.path.isfile(path):
                raise VideoUnreadableError(f"video path is not a regular file: {path!r}")
            try:
                size = os.path.getsize(path)
            except OSError as exc:
                raise VideoUnreadableError(f"cannot read video file {path!r}: {exc}") from exc
            if size == 0:
                raise VideoEmptyError(f"video file {path!r} is empty (0 bytes)")
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.description = "the supplied data"
            if len(source) == 0 or (isinstance(source, memoryview) and source.nbytes == 0):
                raise VideoEmptyError("the supplied video is empty (0 bytes)")
            self._data = source
        elif hasattr(source, "read"):
            self.description = "the supplied file object"
            self._init_file(source)
        else:
            raise InvalidInputError(
                "a video must be given as a file path, bytes, or a binary file-like object, "
                f"got {type(source).__name__}"
            )

    def _init_file(self, f: typing.BinaryIO) -> None:
        seekable = False
        try:
            seekable = bool(f.seekable()) if hasattr(f, "seekable") else hasattr(f, "seek")
        except (OSError, ValueError):
            seekable = False
        try:
            if not seekable:
                # One-shot stream (pipe, socket): read it once so it can be opened again.
                self._data = f.read()
                if not self._data:
                    raise VideoEmptyError("the supplied video stream is empty (0 bytes)")
                return
            start = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(start)
        except (OSError, ValueError) as exc:
            raise VideoUnreadableError(f"cannot read the supplied file object: {exc}") from exc
        if end <= start:
            raise VideoEmptyError(
                "the supplied file object has no bytes left to read "
                f"(position {start} of {end}); seek it to the start of the video"
            )
        if start == 0:
            self._file = f
        else:
            # FFmpeg seeks to absolute offsets; hand it the video part as bytes.
            self._data = f.read()
            f.seek(start)
        self._start = start

    def target(self) -> str | typing.BinaryIO:
        """Something ``av.open`` accepts, positioned at the start of the video."""
        if self._path is not None:
            return self._path
        if self._file is not None:
            self._file.seek(self._start)
            return self._file
        assert self._data is not None
        return io.BytesIO(self._data)

    def restore(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.seek(self._start)


def _as_source(source: VideoSource | _Source) -> _Source:
    return source if isinstance(source, _Source) else _Source(source)


@contextlib.contextmanager
def _open_container(src: _Source) -> Iterator[Any]:
    """Open ``src`` with PyAV; the container is always closed on exit."""
    try:
        try:
            container = av.open(src.target(), mode="r", metadata_errors="ignore")
        except Exception as exc:  # PyAV raises FFmpegError subclasses, OSError, ...
            raise VideoUnreadableError(
                f"{src.description} is not a readable video ({type(exc).__name__}: {exc}); "
                f"accepted formats: {ACCEPTED_FORMATS}"
            ) from exc
        try:
            yield container
        finally:
            container.close()
    finally:
        src.restore()


def _video_stream(container: Any) -> Any:
    streams = container.streams.video
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoStreamError(
            f"the file holds no video stream (streams found: {', '.join(kinds)}); "
            "supply a video, not an audio-only file"
        )
    return streams[0]


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoMetadata:
    """What :func:`probe` reads without decoding frames.

    ``frame_count_source`` says where ``total_frames`` came from: the
    container's frame count, counting demuxed packets (containers such as
    WebM/MKV record none), or counting decoded frames (``load_video`` falls
    back to this when the container's count was wrong).
    """

    width: int
    height: int
    total_frames: int
    fps: float
    duration: float | None
    codec: str
    container: str
    frame_count_source: FrameCountSource
    num_streams: int = 1  # all streams in the container (video, audio, subtitles, data)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _count_packets(container: Any, stream: Any) -> int:
    """Number of video packets that carry data (one per frame); no decoding."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                count += 1
    except av.FFmpegError as exc:
        raise VideoUnreadableError(
            f"the video container is corrupt: demuxing failed after {count} frames ({exc})"
        ) from exc
    return count


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _probe(src: _Source) -> VideoMetadata:
    with _open_container(src) as container:
        stream = _video_stream(container)
        codec_context = stream.codec_context
        width, height = int(codec_context.width or 0), int(codec_context.height or 0)
        frames = int(stream.frames or 0)
        if frames > 0:
            source: FrameCountSource = "container"
        else:
            frames = _count_packets(container, stream)
            source = "demux"
        rate: Fraction | None = stream.average_rate or stream.guessed_rate
        if rate is None or rate <= 0:
            if frames == 0:
                raise TooFewFramesError("the video stream holds no frames")
            raise VideoUnreadableError(
                "the video stream has no frame rate (neither an average nor a guessed rate); "
                "re-encode it with a constant frame rate"
            )
        if width <= 0 or height <= 0:
            raise VideoUnreadableError(f"the video stream reports an invalid frame size {width}x{height}")
        return VideoMetadata(
            width=width,
            height=height,
            total_frames=frames,
            fps=float(rate),
            duration=_duration(container, stream),
            codec=str(codec_context.name),
            container=str(container.format.name),
            frame_count_source=source,
            num_streams=len(container.streams),
        )


def probe(source: VideoSource) -> VideoMetadata:
    """Read size, frame rate, frame count and duration without decoding frames.

    The frame count is the container's when it records one, else the number
    of demuxed video packets (never an estimate from the duration).
    """
    return _probe(_as_source(source))


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------
def _iter_frames(container: Any, stream: Any) -> Iterator[Any]:
    """Decoded frames of ``stream`` in presentation order (a seam for tests)."""
    yield from container.decode(stream)


def _frame_to_rgb(frame: Any) -> np.ndarray:
    """One frame as an ``(H, W, 3)`` uint8 rgb24 array (a seam for tests)."""
    return frame.to_ndarray(format="rgb24")


def _check_indices(indices: Sequence[int]) -> list[int]:
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise InvalidSamplingError(f"frame indices must be non-negative integers, got {i!r}")
        out.append(int(i))
    if not out:
        raise InvalidSamplingError("no frame indices given; at least one is needed")
    return out


def _decode_wanted(src: _Source, indices: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to ``max(indices)``; return the wanted RGB frames and the frames decoded.

    If the stream ends early the count is the number of frames the file really holds.
    """
    wanted = set(indices)
    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    count = 0
    with _open_container(src) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            with contextlib.closing(_iter_frames(container, stream)) as decoded:
                for frame in decoded:
                    if count in wanted:
                        out[count] = _frame_to_rgb(frame)
                    count += 1
                    if count > last:
                        break
        except (av.FFmpegError, ValueError, RuntimeError, OSError) as exc:
            raise VideoDecodeError(
                f"decoding failed at frame {count} ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
            ) from exc
    return out, count


def _stack(frames: dict[int, np.ndarray], indices: list[int]) -> torch.Tensor:
    shapes = {frames[i].shape for i in set(indices)}
    if len(shapes) != 1:
        raise VideoDecodeError(f"the video changes frame size mid-stream ({sorted(shapes)}); re-encode it at one size")
    array = np.stack([frames[i] for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _shortfall_message(count: int, indices: list[int]) -> str:
    return (
        f"the video stream ended after {count} decoded frame(s) but frame {max(indices)} "
        "was requested; the container's frame count is wrong or the file is truncated"
    )


def decode_frames(source: VideoSource, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames at ``indices`` as uint8 ``(T, 3, H, W)`` rgb24 at native size.

    Output follows the order of ``indices`` (normally ascending; repeats
    allowed). Only wanted frames are converted to RGB and decoding stops after
    the last wanted frame. Raises :class:`VideoDecodeError` if the stream holds
    fewer frames than needed or a frame cannot be decoded.
    """
    wanted = _check_indices(indices)
    frames, count = _decode_wanted(_as_source(source), wanted)
    if count <= max(wanted):
        raise VideoDecodeError(_shortfall_message(count, wanted))
    return _stack(frames, wanted)


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled, resized frames and where they came from."""

    frames: torch.Tensor  # uint8 (T, C, H, W), resized
    indices: tuple[int, ...]
    metadata: VideoMetadata
    sampling: SamplingConfig


def load_video(
    source: VideoSource,
    sampling: SamplingConfig,
    *,
    metadata: VideoMetadata | None = None,
) -> DecodedVideo:
    """Probe (unless ``metadata`` is given), sample, decode and resize a video.

    If the stream holds fewer frames than the metadata says, the frames are
    resampled with the true count and decoded again (a warning is logged).
    """
    src = _as_source(source)
    meta = metadata if metadata is not None else _probe(src)
    indices = sample_indices(meta.total_frames, meta.fps, sampling)
    frames, count = _decode_wanted(src, indices)
    if count <= max(indices):
        logger.warning(
            "video frame count was %d (%s) but only %d frames decode; resampling",
            meta.total_frames,
            meta.frame_count_source,
            count,
        )
        meta = dataclasses.replace(meta, total_frames=count, frame_count_source="decode")
        indices = sample_indices(count, meta.fps, sampling)
        frames, count = _decode_wanted(src, indices)
        if count <= max(indices):
            raise VideoDecodeError(_shortfall_message(count, indices))
    tensor = _stack(frames, indices)
    height, width = resized_hw(
        int(tensor.shape[2]),
        int(tensor.shape[3]),
        min_pixels=sampling.min_pixels,
        max_pixels=sampling.max_pixels,
    )
    return DecodedVideo(
        frames=resize_frames(tensor, height, width),
        indices=tuple(indices),
        metadata=meta,
        sampling=sampling,
    )
