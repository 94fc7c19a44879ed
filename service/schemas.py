"""Request and response models (pydantic). They generate the OpenAPI docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. video_unreadable")
    message: str = Field(description="what was wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class VideoRef(BaseModel):
    """Exactly one of ``base64`` (the file's bytes) or ``path`` (server-side, under an allowed root)."""

    model_config = ConfigDict(extra="forbid")
    base64: str | None = Field(None, description="the video file, base64-encoded")
    path: str | None = Field(None, description="a server-side path under one of the allowed roots")

    @model_validator(mode="after")
    def _one(self) -> VideoRef:
        if (self.base64 is None) == (self.path is None):
            raise ValueError("give exactly one of video.base64 and video.path")
        return self


class SamplingOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float | None = Field(None, gt=0, le=120, description="frames sampled per second of video")
    num_frames: int | None = Field(None, ge=2, description="sample this many frames instead of by fps")
    max_pixels: int | None = Field(None, ge=28 * 28, description="per-frame pixel budget after resize")

    @model_validator(mode="after")
    def _exclusive(self) -> SamplingOverrides:
        if self.fps is not None and self.num_frames is not None:
            raise ValueError("give either fps or num_frames, not both")
        return self


class ScoreItem(SamplingOverrides):
    video: VideoRef
    prompt: str = Field(description="the text prompt the video was generated from")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem] = Field(min_length=1)
    normalize: bool | None = Field(None, description="apply the checkpoint's normalisation (default: its setting)")


class PairItem(SamplingOverrides):
    video_a: VideoRef
    video_b: VideoRef
    prompt: str


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[PairItem] = Field(min_length=1)
    normalize: bool | None = None
    tie_threshold: float | None = Field(None, ge=0, description="|margin| at or below which the winner is 'tie'")


class ItemResult(BaseModel):
    """Scores per dimension (e.g. VQ, MQ, TA) and Overall, or an error."""

    model_config = ConfigDict(extra="allow")
    index: int
    error: ErrorInfo | None = None
    cached: bool = False


class Timings(BaseModel):
    total_ms: float
    decode_ms: float = Field(description="sum over the request's items of decode + prepare time")
    queue_ms: float = Field(description="longest wait of an item for its batch")
    forward_ms: float = Field(description="longest forward pass that served an item")


class ScoreResponse(BaseModel):
    model: str = Field(description="checkpoint id")
    normalized: bool
    results: list[ItemResult]
    timings: Timings


class DimComparison(BaseModel):
    A: float
    B: float
    margin: float = Field(description="A - B")
    winner: Literal["A", "B", "tie"]
    p_A: float = Field(description="P(A > B) = sigmoid(d - ln k)")
    p_B: float = Field(description="P(B > A) = sigmoid(-d - ln k)")
    p_tie: float = Field(description="1 - p_A - p_B")


class PairResult(BaseModel):
    index: int
    error: ErrorInfo | None = None
    dims: dict[str, DimComparison] | None = Field(None, description="per dimension and Overall")


class CompareResponse(BaseModel):
    model: str
    normalized: bool
    tie_threshold: float
    k: float
    results: list[PairResult]
    timings: Timings


class ModelInfo(BaseModel):
    id: str
    checkpoint: str
    eval_dims: list[str]
    reward_token: str
    output_dim: int
    sampling: dict
    normalization: dict | None
    normalize_default: bool
    device: str
    dtype: str
    tp: int = Field(description="tensor-parallel degree (ranks sharing the model)")
    parameters: int
    demo: bool = Field(False, description="true for the synthetic demo model built by `python -m training.demo`, not VideoReward")
    note: str | None = Field(None, description="what the demo model is (from the checkpoint's demo.json); null for real weights")
    batching: dict
    limits: dict
    engine: dict


class Health(BaseModel):
    status: str
    detail: str | None = None
