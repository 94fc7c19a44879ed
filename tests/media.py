"""Synthetic test media written with PyAV (a helper module, not a test file).

Frames are deterministic. The top two thirds of every frame hold the frame
index as a 12-bit code: a 3 x 4 grid of large blocks, white for a set bit and
black for a clear one (most significant bit first, row by row). This survives
lossy encoding, so :func:`frame_index` reads back which frame a decoded
picture is. The bottom third holds a colour gradient and a square that moves
with the frame index (``pattern="moving"``) or stays put (``"static"``).

Encoders in the project's PyAV build (FFmpeg 8.1): libx264, libx265,
libvpx-vp9, libvpx (VP8), mpeg4, mjpeg, ffv1, png, qtrle, huffyuv, utvideo;
aac, libmp3lame, libopus, flac, pcm_s16le. No libaom-av1, libvorbis or
libopenh264.

Odd frame sizes: libx264 and mpeg4 refuse odd widths/heights with a 4:2:0
``pix_fmt`` (yuv420p); write them with ``pix_fmt="yuv444p"`` (libx264, decoded
by FFmpeg's h264 decoder as High 4:4:4) or with ``libvpx-vp9`` (which accepts
odd sizes in yuv420p). :func:`write_video` raises a ``ValueError`` saying so
instead of FFmpeg's generic "external library" error.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Literal

import av
import numpy as np

__all__ = [
    "INDEX_BITS",
    "frame_index",
    "make_frame",
    "video_bytes",
    "write_audio_only",
    "write_video",
    "write_zero_frame_video",
]

INDEX_BITS = 12
_GRID_ROWS, _GRID_COLS = 3, 4
_MIN_SIZE = 16

_FORMAT_BY_SUFFIX = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
_SUBSAMPLED_420 = {"yuv420p", "yuvj420p", "nv12", "nv21"}
_NEEDS_EVEN_420 = {"libx264", "libx265", "mpeg4", "h264_nvenc"}

Pattern = Literal["moving", "static"]


def _encoder_options(codec: str) -> dict[str, str]:
    """High-quality, fast settings so the index blocks survive compression."""
    if codec in ("libx264", "libx265"):
        return {"crf": "10", "preset": "veryfast"}
    if codec in ("libvpx-vp9", "libvpx"):
        return {"deadline": "realtime", "cpu-used": "8", "crf": "8", "b": "0"}
    if codec in ("mpeg4", "mjpeg"):
        return {"qmin": "1", "qmax": "3"}
    return {}


def _block_bounds(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each index block, most significant bit first."""
    top = (2 * height) // 3
    bounds = []
    for r in range(_GRID_ROWS):
        for c in range(_GRID_COLS):
            bounds.append(
                (
                    r * top // _GRID_ROWS,
                    (r + 1) * top // _GRID_ROWS,
                    c * width // _GRID_COLS,
                    (c + 1) * width // _GRID_COLS,
                )
            )
    return bounds


def make_frame(index: int, width: int, height: int, pattern: Pattern = "moving") -> np.ndarray:
    """The ``(height, width, 3)`` uint8 RGB picture for frame ``index``."""
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"frame index must be in [0, {2**INDEX_BITS}), got {index}")
    img = np.zeros((height, width, 3), np.uint8)
    for bit, (y0, y1, x0, x1) in enumerate(_block_bounds(width, height)):
        if (index >> (INDEX_BITS - 1 - bit)) & 1:
            img[y0:y1, x0:x1] = 255
    top = (2 * height) // 3
    # Bottom third: horizontal gradient (red rising, blue falling) with a green square.
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    img[top:, :, 0] = ramp.astype(np.uint8)
    img[top:, :, 2] = (255 - ramp).astype(np.uint8)
    img[top:, :, 1] = 64
    side = max(2, (height - top) // 2)
    span = max(1, width - side)
    x = (index * 3) % span if pattern == "moving" else 0
    y = top + (height - top - side) // 2
    img[y : y + side, x : x + side] = (40, 230, 40)
    return img


def frame_index(frame: Any) -> int:
    """Read the frame index encoded by :func:`make_frame` from a decoded frame.

    Accepts ``(H, W, 3)`` arrays or ``(3, H, W)`` tensors/arrays (uint8, native size).
    """
    arr = np.asarray(frame.numpy() if hasattr(frame, "numpy") else frame)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    height, width = arr.shape[:2]
    luma = arr.astype(np.float32).mean(axis=2)
    value = 0
    for y0, y1, x0, x1 in _block_bounds(width, height):
        # The inner half of the block, away from edges blurred by compression.
        dy, dx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
        inner = luma[y0 + dy : max(y0 + dy + 1, y1 - dy), x0 + dx : max(x0 + dx + 1, x1 - dx)]
        value = (value << 1) | int(inner.mean() > 127.5)
    return value


def _encode(
    target: str | BinaryIO,
    fmt: str,
    *,
    num_frames: int,
    width: int,
    height: int,
    fps: int | float | Fraction,
    codec: str,
    pix_fmt: str,
    pattern: Pattern,
) -> None:
    if width < _MIN_SIZE or height < _MIN_SIZE:
        raise ValueError(f"frames must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {width}x{height}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1; use write_zero_frame_video for an empty stream")
    if (width % 2 or height % 2) and codec in _NEEDS_EVEN_420 and pix_fmt in _SUBSAMPLED_420:
        raise ValueError(
            f"{codec} cannot encode odd sizes ({width}x{height}) in {pix_fmt}; "
            "use pix_fmt='yuv444p' (libx264) or codec='libvpx-vp9'"
        )
    rate = Fraction(fps).limit_denominator(100000)
    with av.open(target, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options=_encoder_options(codec))
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        time_base = 1 / rate
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, width, height, pattern), format="rgb24")
            frame.pts = i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _format_for(path: Path, container: str | None) -> str:
    if container is not None:
        return container
    try:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot infer a container from {path.name!r}; pass container= "
            f"(known suffixes: {', '.join(sorted(_FORMAT_BY_SUFFIX))})"
        ) from None


def write_video(
    path: str | Path,
    *,
    num_frames: int,
    width: int,
    height: int,
    fps: int | float | Fraction = 24,
    codec: str = "libx264",
    container: str | None = None,
    pix_fmt: str = "yuv420p",
    pattern: Pattern = "moving",
) -> Path:
    """Write a deterministic synthetic video; the container comes from the suffix unless given.

    WebM needs ``codec="libvpx-vp9"`` (or ``"libvpx"``).
    """
    path = Path(path)
    _encode(
        str(path),
        _format_for(path, container),
        num_frames=num_frames,
        width=width,
        height=height,
        fps=fps,
        codec=codec,
        pix_fmt=pix_fmt,
        pattern=pattern,
    )
    return path


def video_bytes(
    *,
    num_frames: int = 12,
    width: int = 64,
    height: int = 48,
    fps: int | float | Fraction = 24,
    codec: str = "libx264",
    container: str = "mp4",
    pix_fmt: str = "yuv420p",
    pattern: Pattern = "moving",
) -> bytes:
    """The bytes of a synthetic video file (written in memory)."""
    buf = io.BytesIO()
    _encode(
        buf,
        container,
        num_frames=num_frames,
        width=width,
        height=height,
        fps=fps,
        codec=codec,
        pix_fmt=pix_fmt,
        pattern=pattern,
    )
    return buf.getvalue()


def _write_audio(container: Any, codec: str, *, seconds: float, sample_rate: int) -> None:
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    sample_fmt = stream.codec_context.format.name
    dtype = {"flt": np.float32, "s16": np.int16, "s32": np.int32}[sample_fmt.rstrip("p")]
    chunk = stream.codec_context.frame_size or 1024
    total = int(seconds * sample_rate)
    t = np.arange(total, dtype=np.float64) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    samples = (wave if dtype is np.float32 else wave * np.iinfo(dtype).max).astype(dtype)
    for start in range(0, total, chunk):
        piece = samples[start : start + chunk]
        if len(piece) < chunk and stream.codec_context.frame_size:
            piece = np.pad(piece, (0, chunk - len(piece)))
        frame = av.AudioFrame.from_ndarray(piece[None, :], format=sample_fmt, layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


_AUDIO_BY_SUFFIX = {
    ".m4a": ("mp4", "aac"),
    ".aac": ("adts", "aac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".wav": ("wav", "pcm_s16le"),
    ".mka": ("matroska", "flac"),
    ".mkv": ("matroska", "flac"),
    ".mp4": ("mp4", "aac"),
}


def write_audio_only(path: str | Path, *, seconds: float = 0.5, sample_rate: int = 16000) -> Path:
    """Write an audio-only file (a 440 Hz tone); the format comes from the suffix.

    Suffixes: .m4a/.mp4 (AAC), .aac (ADTS), .mp3, .wav, .mka/.mkv (FLAC).
    """
    path = Path(path)
    try:
        fmt, codec = _AUDIO_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"unsupported audio suffix {path.suffix!r}; use one of {sorted(_AUDIO_BY_SUFFIX)}") from None
    with av.open(str(path), mode="w", format=fmt) as container:
        _write_audio(container, codec, seconds=seconds, sample_rate=sample_rate)
    return path


def write_zero_frame_video(path: str | Path, *, width: int = 64, height: int = 48, fps: int = 24) -> Path:
    """A Matroska file whose H.264 video stream holds no frames (plus an audio track).

    MP4/MOV drop empty tracks and a Matroska file with only an empty stream does
    not open, so an audio track keeps the file readable and the video stream listed.
    """
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        _write_audio(container, "pcm_s16le", seconds=0.3, sample_rate=16000)
    return path
