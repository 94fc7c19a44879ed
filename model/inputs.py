"""Input preparation: prompt template + chat template + processor → a prepared item.

Serving, evaluation and training all build model inputs here, so frame
sampling and prompt building exist exactly once. Preparation runs on the CPU
and is independent of the model, so a server can run it in a pool while the
model computes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import ProcessorMixin

from .errors import InvalidInputError
from .reward_config import RewardConfig
from .video import DecodedVideo, SamplingConfig, VideoSource, load_video

MAX_PROMPT_CHARS = 8192


@dataclass
class PreparedItem:
    """One (video, prompt) ready for the model. It knows its own token count."""

    input_ids: torch.Tensor  # (L,) long
    mm_token_type_ids: torch.Tensor  # (L,) int: 0 text, 2 video
    pixel_values_videos: torch.Tensor  # (P, C*2*14*14) float32
    video_grid_thw: torch.Tensor  # (3,) long
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values_videos.shape[0])


@dataclass
class Batch:
    """Right-padded model inputs for a list of prepared items."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    mm_token_type_ids: torch.Tensor  # (B, T)
    pixel_values_videos: torch.Tensor  # (sum P, D)
    video_grid_thw: torch.Tensor  # (B, 3)

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
        pv = self.pixel_values_videos.to(device)
        if dtype is not None:
            pv = pv.to(dtype)
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            mm_token_type_ids=self.mm_token_type_ids.to(device),
            pixel_values_videos=pv,
            video_grid_thw=self.video_grid_thw.to(device),
        )

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            "pixel_values_videos": self.pixel_values_videos,
            "video_grid_thw": self.video_grid_thw,
        }


class InputBuilder:
    """Builds prepared items for one checkpoint (its processor, template and sampling defaults)."""

    def __init__(self, processor: ProcessorMixin, reward_config: RewardConfig) -> None:
        self.processor = processor
        self.reward_config = reward_config
        tok = processor.tokenizer
        self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        # Strings the tokenizer would turn into control tokens: a prompt holding one
        # could forge a reward token or end the turn, so such prompts are refused.
        self._reserved = sorted({str(t) for t in tok.all_special_tokens} | set(reward_config.special_tokens), key=len)

    def sampling_for(
        self, *, fps: float | None = None, num_frames: int | None = None, max_pixels: int | None = None
    ) -> SamplingConfig:
        """The checkpoint's sampling defaults with per-item overrides applied."""
        return self.reward_config.sampling.with_overrides(fps=fps, num_frames=num_frames, max_pixels=max_pixels)

    def check_prompt(self, prompt: str) -> str:
        if not isinstance(prompt, str):
            raise InvalidInputError("prompt must be a string")
        if not prompt.strip():
            raise InvalidInputError("prompt is empty; send the text prompt the video was generated from")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        for tok in self._reserved:
            if tok in prompt:
                raise InvalidInputError(f"prompt contains the reserved control token {tok!r}; remove it")
        return prompt

    def render_text(self, prompt: str) -> str:
        """The full model text: chat template around [video, filled prompt template], generation prompt appended."""
        text = self.reward_config.render_prompt(self.check_prompt(prompt))
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(
        self,
        video: VideoSource | DecodedVideo,
        prompt: str,
        *,
        fps: float | None = None,
        num_frames: int | None = None,
        max_pixels: int | None = None,
    ) -> PreparedItem:
        """Decode (unless already decoded) and prepare one item."""
        self.check_prompt(prompt)
        t0 = time.perf_counter()
        if not isinstance(video, DecodedVideo):
            video = load_video(video, self.sampling_for(fps=fps, num_frames=num_frames, max_pixels=max_pixels))
        t1 = time.perf_counter()
        item = self.prepare_decoded(video, prompt)
        item.meta["decode_ms"] = (t1 - t0) * 1e3
        item.meta["prepare_ms"] = (time.perf_counter() - t1) * 1e3
        return item

    def prepare_decoded(self, video: DecodedVideo, prompt: str) -> PreparedItem:
        text = self.render_text(prompt)
        out = self.processor(
            text=[text],
            videos=[video.frames],
            do_resize=False,  # frames are already resized to multiples of 28
            do_sample_frames=False,  # frames are already sampled
            cap_pixels_per_frame=False,
            return_tensors="pt",
        )
        item = PreparedItem(
            input_ids=out["input_ids"][0].to(torch.long),
            mm_token_type_ids=out["mm_token_type_ids"][0].to(torch.int32),
            pixel_values_videos=out["pixel_values_videos"].to(torch.float32),
            video_grid_thw=out["video_grid_thw"][0].to(torch.long),
            meta={
                "num_frames": int(video.frames.shape[0]),
                "height": int(video.frames.shape[-2]),
                "width": int(video.frames.shape[-1]),
                "source_frames": video.metadata.total_frames,
                "source_fps": video.metadata.fps,
            },
        )
        return item


def collate(items: Sequence[PreparedItem], pad_token_id: int) -> Batch:
    """Right-pad token sequences and concatenate video patches, in item order."""
    if not items:
        raise InvalidInputError("cannot collate an empty batch")
    length = max(it.num_tokens for it in items)
    b = len(items)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    mm_types = torch.zeros((b, length), dtype=torch.int32)
    for i, it in enumerate(items):
        n = it.num_tokens
        input_ids[i, :n] = it.input_ids
        attention_mask[i, :n] = 1
        mm_types[i, :n] = it.mm_token_type_ids
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_types,
        pixel_values_videos=torch.cat([it.pixel_values_videos for it in items], dim=0),
        video_grid_thw=torch.stack([it.video_grid_thw for it in items], dim=0),
    )
