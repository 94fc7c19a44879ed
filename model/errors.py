"""Typed errors with stable codes.

Every failure that user input can cause raises a subclass of
:class:`VideoRewardError`. ``code`` is a stable, machine-readable string (the
service maps it to an HTTP status in one table); ``message`` says what was
wrong and what to do about it.
"""

from __future__ import annotations


class VideoRewardError(Exception):
    """Base class. ``code`` is stable across releases; ``message`` is for people."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:  # "code: message" reads well in logs and CLIs
        return f"{self.code}: {self.message}"


# --- video input -----------------------------------------------------------
class VideoError(VideoRewardError):
    """Something is wrong with a video the caller supplied."""

    code = "video_invalid"


class VideoUnreadableError(VideoError):
    """The bytes are not a container FFmpeg can open (corrupt, truncated, not a video)."""

    code = "video_unreadable"


class VideoEmptyError(VideoError):
    """Zero bytes were supplied."""

    code = "video_empty"


class NoVideoStreamError(VideoError):
    """The container opened but holds no video stream (e.g. audio only)."""

    code = "video_no_stream"


class TooFewFramesError(VideoError):
    """The stream holds fewer frames than sampling needs (zero-frame streams included)."""

    code = "video_too_few_frames"


class VideoDecodeError(VideoError):
    """The stream opened but a frame could not be decoded."""

    code = "video_decode_failed"


class VideoTooLargeError(VideoError):
    """A size limit (bytes, pixels, duration, frames) was exceeded."""

    code = "video_too_large"


# --- options -----------------------------------------------------------------
class InvalidSamplingError(VideoRewardError):
    """fps / num_frames / max_pixels / sample_type options are invalid."""

    code = "invalid_sampling"


class InvalidInputError(VideoRewardError):
    """A non-video input (prompt, item shape, option) is invalid."""

    code = "invalid_input"


# --- model and runtime -------------------------------------------------------
class CheckpointError(VideoRewardError):
    """A checkpoint directory is missing files, has bad keys or bad shapes."""

    code = "checkpoint_invalid"


class DeviceUnavailableError(VideoRewardError):
    """The requested device backend (cuda, npu) is not present."""

    code = "device_unavailable"
