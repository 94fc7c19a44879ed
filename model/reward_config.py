"""`reward_config.json`: everything a checkpoint says about scoring beyond the Qwen2-VL config.

The prompt template, sampling defaults and normalisation belong to the
checkpoint, not to the code: two checkpoints may differ in any of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import CheckpointError
from .video import SamplingConfig

REWARD_CONFIG_NAME = "reward_config.json"
DEFAULT_EVAL_DIMS: tuple[str, ...] = ("VQ", "MQ", "TA")
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
PoolingMode = Literal["special", "last", "mean"]

# Our own wording. Each reward token sits in its own section, after the text it
# rates, so that with causal attention its hidden state has seen the video, the
# prompt and the description of the aspect it scores.
DEFAULT_PROMPT_TEMPLATE = (
    "You are judging a video that a text-to-video model generated from the prompt below.\n"
    'Prompt: "{prompt}"\n'
    "\n"
    "Visual quality: how sharp, clean and free of artefacts, noise and distortion each frame looks.\n"
    "Visual quality score: <|VQ_reward|>\n"
    "\n"
    "Motion quality: how smooth, stable and physically plausible the movement is over time.\n"
    "Motion quality score: <|MQ_reward|>\n"
    "\n"
    "Text alignment: how faithfully the video shows the objects, attributes and actions in the prompt.\n"
    "Text alignment score: <|TA_reward|>"
)

# The published VideoReward normalisation (VideoAlign's inference_config).
VIDEOREWARD_NORMALIZATION: dict[str, dict[str, float]] = {
    "VQ": {"mean": 3.6757, "std": 2.2476},
    "MQ": {"mean": 1.1646, "std": 1.3811},
    "TA": {"mean": 2.8105, "std": 2.5121},
}


@dataclass
class RewardConfig:
    eval_dims: tuple[str, ...] = DEFAULT_EVAL_DIMS
    reward_token: PoolingMode = "special"
    output_dim: int = 1
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    normalization: dict[str, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        self.eval_dims = tuple(self.eval_dims)
        self.special_tokens = tuple(self.special_tokens)
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> CheckpointError:
            return CheckpointError(f"{REWARD_CONFIG_NAME}: {msg}")

        if not self.eval_dims or len(set(self.eval_dims)) != len(self.eval_dims):
            raise bad(f"eval_dims must be non-empty and unique, got {list(self.eval_dims)}")
        if "Overall" in self.eval_dims:
            raise bad("'Overall' is computed as the sum of the dimensions and cannot be a dimension")
        if self.reward_token not in ("special", "last", "mean"):
            raise bad(f"reward_token must be 'special', 'last' or 'mean', got {self.reward_token!r}")
        n = len(self.eval_dims)
        if self.output_dim not in (1, n):
            raise bad(f"output_dim must be 1 or len(eval_dims)={n}, got {self.output_dim}")
        if self.reward_token == "special":
            if len(self.special_tokens) != n:
                raise bad(f"special pooling needs one special token per dimension ({n}), got {len(self.special_tokens)}")
        elif self.output_dim != n:
            raise bad(f"'{self.reward_token}' pooling pools one position, so output_dim must be {n}")
        if self.prompt_template.count("{prompt}") != 1:
            raise bad("prompt_template must contain the placeholder {prompt} exactly once")
        if self.reward_token == "special":
            for tok in self.special_tokens:
                if self.prompt_template.count(tok) != 1:
                    raise bad(f"prompt_template must contain the reward token {tok} exactly once")
            positions = [self.prompt_template.index(t) for t in self.special_tokens]
            if positions != sorted(positions):
                raise bad("reward tokens must appear in the template in the order of eval_dims")
        if self.normalization is not None:
            for dim in self.eval_dims:
                stats = self.normalization.get(dim)
                if not stats or "mean" not in stats or "std" not in stats:
                    raise bad(f"normalization needs mean and std for {dim}")
                if not float(stats["std"]) > 0:
                    raise bad(f"normalization std for {dim} must be > 0, got {stats['std']}")

    @property
    def num_dims(self) -> int:
        return len(self.eval_dims)

    def render_prompt(self, prompt: str) -> str:
        # str.replace, not str.format: user prompts may contain braces.
        return self.prompt_template.replace("{prompt}", prompt)

    # -- (de)serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_dims"] = list(self.eval_dims)
        d["special_tokens"] = list(self.special_tokens)
        d["sampling"] = self.sampling.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardConfig:
        known = {"eval_dims", "reward_token", "output_dim", "special_tokens", "prompt_template", "sampling", "normalization"}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"{REWARD_CONFIG_NAME}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        d = dict(d)
        if "sampling" in d:
            d["sampling"] = SamplingConfig.from_dict(d["sampling"] or {})
        return cls(**d)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / REWARD_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RewardConfig:
        path = Path(directory) / REWARD_CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{path} not found: a serving checkpoint needs {REWARD_CONFIG_NAME}. "
                "Make one with `python -m model.tiny`, `python -m training.convert import-videoalign` or training."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} must hold a JSON object")
        return cls.from_dict(data)
