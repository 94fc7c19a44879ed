"""The reward model: transformers' ``Qwen2VLModel`` plus a linear ``rm_head``.

There is no ``lm_head``: the reward model never computes vocabulary logits.
Parameter names are ``model.visual.*``, ``model.language_model.*`` and
``rm_head.weight``, so a serving checkpoint is also readable by
``Qwen2VLForConditionalGeneration`` (which ignores ``rm_head``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLPreTrainedModel

from .errors import InvalidInputError

# Older transformers (and the published Qwen2-VL-2B-Instruct weights) name the
# language model ``model.*`` and the vision tower ``visual.*`` at the top level;
# current transformers nests both under ``model``. These patterns map old → new.
LEGACY_KEY_PATTERNS: dict[str, str] = {
    r"^visual\.": "model.visual.",
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
}


class VideoRewardModel(Qwen2VLPreTrainedModel):
    """Qwen2-VL backbone + ``rm_head: Linear(hidden_size, output_dim, bias=False)``.

    ``config.reward_output_dim`` sets the head width at construction (the loader
    sets it from ``reward_config.json``; it is not written to ``config.json``).
    Call :meth:`set_pooling` before :meth:`forward`.
    """

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: Qwen2VLConfig) -> None:
        super().__init__(config)
        self.model = Qwen2VLModel(config)
        output_dim = int(getattr(config, "reward_output_dim", 1))
        self.rm_head = nn.Linear(config.text_config.hidden_size, output_dim, bias=False)
        self.pooling: str = "special"
        self.reward_token_ids: tuple[int, ...] = ()
        self.post_init()

    @property
    def output_dim(self) -> int:
        return self.rm_head.out_features

    def set_pooling(self, pooling: str, reward_token_ids: Sequence[int] = ()) -> None:
        if pooling not in ("special", "last", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}")
        if pooling == "special" and not reward_token_ids:
            raise ValueError("special pooling needs the reward token ids")
        self.pooling = pooling
        self.reward_token_ids = tuple(int(t) for t in reward_token_ids)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H) of the language model."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
            return_dict=True,
        )
        return out.last_hidden_state

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool the hidden states and apply ``rm_head`` at the pooled positions only.

        Returns (B, n_dims) raw rewards in the head's dtype.
        """
        b = hidden.shape[0]
        rows = torch.arange(b, device=hidden.device)
        if self.pooling == "special":
            positions = []
            for tok in self.reward_token_ids:
                hits = input_ids == tok  # (B, T)
                counts = hits.sum(dim=1)
                if not bool((counts == 1).all()):
                    raise InvalidInputError(
                        f"each sequence must hold reward token id {tok} exactly once, got counts {counts.tolist()}"
                    )
                positions.append(hits.int().argmax(dim=1))  # (B,)
            pos = torch.stack(positions, dim=1)  # (B, D)
            pooled = hidden[rows[:, None], pos]  # (B, D, H)
            rewards = self.rm_head(pooled)  # (B, D, output_dim)
            if self.output_dim == 1:
                return rewards.squeeze(-1)  # (B, D)
            # one column per dimension: token j scores column j
            return torch.diagonal(rewards, dim1=1, dim2=2)  # (B, D)
        mask = attention_mask.to(torch.long)
        if self.pooling == "last":
            # index of the last non-pad token, whatever the padding side
            idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values  # (B,)
            return self.rm_head(hidden[rows, last])  # (B, output_dim)
        # mean over non-pad tokens
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        return self.rm_head(pooled)  # (B, output_dim)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        """Raw rewards (B, n_dims), before normalisation."""
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values_videos, video_grid_thw, mm_token_type_ids)
        return self.pool(hidden, input_ids, attention_mask)
