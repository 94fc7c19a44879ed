"""Service error codes and the one table that maps codes to HTTP statuses."""

from __future__ import annotations

from model.errors import VideoRewardError

# code → HTTP status. Model-library codes (model.errors) and service codes share this table.
STATUS_BY_CODE: dict[str, int] = {
    # bad video content
    "video_invalid": 422,
    "video_unreadable": 422,
    "video_empty": 422,
    "video_no_stream": 422,
    "video_too_few_frames": 422,
    "video_decode_failed": 422,
    "video_too_large": 413,
    "video_too_long": 422,
    "too_many_frames": 422,
    "resolution_too_large": 422,
    "too_many_streams": 422,
    "decode_timeout": 422,
    # bad request
    "invalid_sampling": 422,
    "invalid_input": 422,
    "invalid_request": 422,
    "empty_prompt": 422,
    "prompt_too_long": 422,
    "too_many_items": 422,
    "path_not_allowed": 403,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "unauthorized": 401,
    # server state
    "queue_full": 503,
    "engine_unavailable": 503,
    "shutting_down": 503,
    "deadline_exceeded": 504,
    "inference_failed": 500,
    "internal_error": 500,
    "checkpoint_invalid": 500,
    "device_unavailable": 500,
}


class ServiceError(VideoRewardError):
    """An error with a service code; ``status`` comes from :data:`STATUS_BY_CODE`."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return status_for(self.code)


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)
