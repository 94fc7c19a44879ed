"""Make small Qwen2-VL checkpoints on the spot (no model hub needed).

    python -m model.tiny OUTDIR [--seed N] [--size tiny|demo|mid]     # serving checkpoint
    python -m model.tiny OUTDIR --base [--seed N] [--size tiny|demo|mid]  # plain Qwen2-VL dir

The serving checkpoint is made exactly as a real one is made from
Qwen2-VL-2B-Instruct: a ``--base`` directory is written first (old key names,
flat config, padded vocabulary, no reward tokens), then
:func:`model.checkpoint.init_from_base` adds the reward tokens, resizes the
embedding and creates ``rm_head``, and :func:`model.checkpoint.save_checkpoint`
writes it. The tokenizer is a byte-level BPE trained here with ``tokenizers``,
using Qwen2's pre-tokenizer and Qwen2-VL's special tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .checkpoint import init_from_base, save_checkpoint
from .reward_config import RewardConfig
from .video import SamplingConfig

logger = logging.getLogger(__name__)

# Qwen2-VL's special tokens, in Qwen2-VL's id order (151643..151656 in the real tokenizer).
QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (a system turn is added when none is given).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Sizes. "tiny" is for tests (fast on CPU); "demo" is training.demo's model; "mid" (~100M parameters) is for benchmarks.
SIZES: dict[str, dict] = {
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        vision=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2),
    ),
    # training.demo: small enough to train from scratch on 2 CPU cores in minutes (2.0M parameters).
    # - Weights start at std 0.08 (~1/sqrt(hidden)), not transformers' 0.02: at 0.02 attention starts
    #   uniform, and text alignment (matching prompt words to what the video shows) stayed at chance
    #   for 1,500 steps; at 0.08 it learns within a few hundred.
    # - rope_theta 10, not Qwen2-VL's 1e6: M-RoPE gives the height and width sections the lowest
    #   frequencies of a 16-pair rotary half, which at 1e6 turn by < 0.03 rad per grid step, so the
    #   language model could hardly tell where in a 2x2 token grid the object is (direction, jitter).
    "demo": dict(
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
        vision=dict(depth=2, embed_dim=128, num_heads=4, mlp_ratio=2),
        initializer_range=0.08,
        rope_theta=10.0,
    ),
    "mid": dict(
        text=dict(hidden_size=640, intermediate_size=1792, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=2),
        vision=dict(depth=12, embed_dim=512, num_heads=8, mlp_ratio=4),
    ),
}

_WORDS = """
a an the of and or with in on at to from by over under through across into onto near far above below beside between
video camera frame scene shot view motion movement moving moves walks runs flies swims jumps turns rotates slides falls
rises spins zooms pans tilts follows tracks remains still static slowly quickly smoothly gently suddenly steadily
red green blue yellow orange purple pink white black gray brown golden silver bright dark warm cold soft sharp blurry
circle square triangle ball box cube star sphere cylinder object shape person girl boy man woman child dog cat bird horse
car train boat plane tree flower river ocean mountain city street room chair table bed window door light shadow night day
left right up down forward backward around toward away background foreground indoor outdoor sunny cloudy rainy snowy
visual quality motion text alignment score judge generated model prompt smooth stable physically plausible faithfully
shows objects attributes actions artefacts noise distortion sharp clean free each looks how well time over
cozy bedroom lighting explorer abandoned urban building exploring hidden corridors forgotten spaces mix mysterious
atmosphere braided hair wearing dress approached sat young follows through remains
""".split()


def _corpus(seed: int) -> list[str]:
    """Deterministic English-like lines covering prompts and the default template."""
    g = torch.Generator().manual_seed(seed)
    lines = [RewardConfig().prompt_template, "You are a helpful assistant."]
    for _ in range(3000):
        n = int(torch.randint(4, 16, (1,), generator=g))
        idx = torch.randint(0, len(_WORDS), (n,), generator=g).tolist()
        words = [_WORDS[i] for i in idx]
        if n % 3 == 0:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + (", " if n % 2 else ". ") + str(n * 7))
    return lines


def train_tokenizer(seed: int = 0, vocab_size: int = 2000) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's normaliser and pre-tokeniser, plus Qwen2-VL's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(PRETOKENIZE_REGEX, behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    qtok = Qwen2Tokenizer(
        vocab=spec["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
    )
    qtok.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIAL_TOKENS}, replace_extra_special_tokens=True)
    qtok.model_max_length = 32768
    return qtok


def make_processor(tokenizer: Qwen2Tokenizer, sampling: SamplingConfig) -> Qwen2VLProcessor:
    size = {"shortest_edge": sampling.min_pixels, "longest_edge": sampling.max_pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def base_config_dict(tokenizer: Qwen2Tokenizer, size: str = "tiny") -> dict:
    """A flat config.json like Qwen2-VL-2B-Instruct's (old layout: text fields at the top level)."""
    s = SIZES[size]
    t, v = s["text"], s["vision"]
    init_std = s.get("initializer_range", 0.02)
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    half = head_dim // 2  # mrope sections split the rotary half-dimension into (t, h, w)
    mrope = [half // 4, (half - half // 4) // 2]
    mrope.append(half - sum(mrope))
    vocab = tokenizer.get_vocab()
    padded_vocab = int(math.ceil(len(tokenizer) / 64) * 64) + 64  # padded like the real 151936
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
        "vision_token_id": vocab["<|vision_pad|>"],
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "hidden_act": "silu",
        "initializer_range": init_std,
        "max_position_embeddings": 32768,
        "max_window_layers": t["num_hidden_layers"],
        "rms_norm_eps": 1e-06,
        "rope_theta": s.get("rope_theta", 1000000.0),
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": padded_vocab,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "vision_config": {
            "depth": v["depth"], "embed_dim": v["embed_dim"], "mlp_ratio": v["mlp_ratio"], "num_heads": v["num_heads"],
            "in_chans": 3, "hidden_size": t["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "temporal_patch_size": 2, "hidden_act": "quick_gelu",
            **({"initializer_range": init_std} if "initializer_range" in s else {}),
        },
        **t,
    }


def write_base(out: str | Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """A plain Qwen2-VL directory laid out like Qwen2-VL-2B-Instruct (old key names, no reward tokens)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(seed)
    processor = make_processor(tokenizer, SamplingConfig())
    cfg_dict = base_config_dict(tokenizer, size)
    config = Qwen2VLConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":  # tied to the embedding, not stored (as in Qwen2-VL-2B)
            continue
        if key.startswith("model.visual."):
            key = key.removeprefix("model.")
        elif key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        state[key] = value.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": cfg_dict["bos_token_id"], "eos_token_id": [cfg_dict["eos_token_id"]], "pad_token_id": cfg_dict["bos_token_id"]}, indent=2) + "\n")
    processor.save_pretrained(out)
    logger.info("wrote base Qwen2-VL (%s, %d tensors) to %s", size, len(state), out)
    return out


def write_tiny(
    out: str | Path,
    *,
    seed: int = 0,
    size: str = "tiny",
    reward_config: RewardConfig | None = None,
    head_std: float = 1.0,
) -> Path:
    """A complete serving checkpoint with random weights, made through the same code as real ones."""
    rc = reward_config or RewardConfig(sampling=SamplingConfig(max_pixels=56 * 56 * 4, min_pixels=28 * 28 * 4))
    with tempfile.TemporaryDirectory(prefix="tiny-base-") as tmp:
        base = write_base(tmp, seed=seed, size=size)
        loaded = init_from_base(base, rc, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # a wide head so that random scores differ visibly between videos
        w = loaded.model.rm_head.weight
        w.copy_(torch.randn(w.shape, generator=g) * head_std / math.sqrt(w.shape[1]))
    return save_checkpoint(out, loaded.model, loaded.processor, rc)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--base", action="store_true", help="write a plain Qwen2-VL directory (no reward tokens, no head)")
    p.add_argument("--pooling", choices=["special", "last", "mean"], default="special")
    p.add_argument("--output-dim", type=int, default=None, help="rm_head width (default 1 for special, 3 otherwise)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.base:
        path = write_base(args.outdir, seed=args.seed, size=args.size)
    else:
        out_dim = args.output_dim or (1 if args.pooling == "special" else 3)
        rc = RewardConfig(
            reward_token=args.pooling, output_dim=out_dim,
            sampling=SamplingConfig(max_pixels=56 * 56 * 4, min_pixels=28 * 28 * 4),
        )
        path = write_tiny(args.outdir, seed=args.seed, size=args.size, reward_config=rc)
    logger.info("done: %s", path)


if __name__ == "__main__":
    main()
