"""Service settings: one validated object; every option is also an environment variable.

Environment variables use the prefix ``VIDEOREWARD_`` (e.g. ``VIDEOREWARD_CHECKPOINT``,
``VIDEOREWARD_MAX_BATCH_SIZE``); list values are JSON (``VIDEOREWARD_ALLOWED_ROOTS='["/data"]'``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEOREWARD_", extra="ignore")

    # --- model --------------------------------------------------------------
    checkpoint: Path = Field(description="serving checkpoint directory")
    device: str = Field("cpu", description="cpu, cuda[:N], npu[:N] or auto")
    dtype: str = Field("fp32", description="fp32, bf16 or fp16")
    tp: int = Field(1, ge=1, le=64, description="tensor-parallel degree; run under torchrun --nproc-per-node TP")
    tp_timeout_s: float = Field(60.0, gt=0, description="bound on any collective: a stuck or dead rank is detected within it")
    tp_heartbeat_s: float = Field(2.0, gt=0, description="idle heartbeat interval from rank 0 to the other ranks")

    # --- network --------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="bearer token required on scoring routes when set")
    log_level: str = "info"

    # --- batching ---------------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, le=1024, description="items per forward pass")
    max_batch_tokens: int = Field(32768, ge=256, description="padded tokens (text + visual) per forward pass")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long a batch may wait to fill")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding and preparing videos")
    cache_size: int = Field(4096, ge=0, description="LRU result cache entries (0 disables)")

    # --- limits -------------------------------------------------------------------
    max_queue_items: int = Field(256, ge=1, description="items admitted at once (decoding, queued or running)")
    max_request_bytes: int = Field(256 * MiB, ge=1024, description="whole request body (413 beyond)")
    max_video_bytes: int = Field(64 * MiB, ge=1024, description="one video (413 beyond)")
    max_items_per_request: int = Field(32, ge=1)
    max_prompt_chars: int = Field(2048, ge=1)
    max_duration_s: float = Field(120.0, gt=0, description="longest video accepted, seconds")
    max_frames: int = Field(7200, ge=2, description="most frames a video may hold")
    max_pixels_per_frame: int = Field(4096 * 2304, ge=28 * 28, description="largest width x height accepted")
    max_streams: int = Field(8, ge=1, description="most streams a container may hold")
    max_sample_frames: int = Field(768, ge=2, description="largest num_frames an item may ask for")
    max_item_pixels: int = Field(1280 * 28 * 28, ge=28 * 28, description="largest max_pixels an item may ask for")
    decode_timeout_s: float = Field(60.0, gt=0)
    request_timeout_s: float = Field(300.0, gt=0, description="deadline per request (504 beyond)")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    allowed_roots: list[Path] = Field(default_factory=list, description="server-side paths allowed under these")

    # --- compare -----------------------------------------------------------------
    tie_threshold: float = Field(0.0, ge=0, description="|margin| at or below which /compare calls a tie")
    btt_k: float = Field(5.0, gt=1, description="Bradley-Terry-with-ties k for /compare probabilities")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"checkpoint directory {v} does not exist; make one with `python -m model.tiny {v}`")
        return v

    @field_validator("allowed_roots")
    @classmethod
    def _roots_exist(cls, v: list[Path]) -> list[Path]:
        out = []
        for root in v:
            r = Path(root).resolve()
            if not r.is_dir():
                raise ValueError(f"allowed root {root} is not a directory")
            out.append(r)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_video_bytes > self.max_request_bytes:
            raise ValueError("max_video_bytes cannot exceed max_request_bytes")
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError("max_items_per_request cannot exceed max_queue_items (such a request could never run)")
        return self
