"""The reward model against an independent reference, batching, pooling, normalisation, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from model.checkpoint import init_from_base, load_checkpoint
from model.errors import CheckpointError, InvalidInputError
from model.reward_config import VIDEOREWARD_NORMALIZATION, RewardConfig
from model.scorer import ScoreRequest, VideoRewardScorer, to_scores
from model.tiny import write_base
from tests.conftest import ROOT, make_checkpoint

PROMPT = "a red circle moving left over a blue background"


# -- an independent reference: naive decode, plain transformers, head applied by hand ----
def _reference_frames(path: Path, sampling: dict) -> torch.Tensor:
    """Decode every frame to RGB, then index: the naive way, written separately from model.video."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    total = len(frames)
    n = total / fps * sampling["fps"]
    n = min(max(n, 4), (min(768, total) // 2) * 2)
    n = round(n / 2) * 2
    n = min(n, total)
    idx = torch.linspace(0, total - 1, n).round().long().tolist()
    video = torch.from_numpy(__import__("numpy").stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
    h, w = video.shape[-2:]
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    rh, rw = smart_resize(h, w, 28, sampling["min_pixels"], sampling["max_pixels"])
    return tvF.resize(video, [rh, rw], interpolation=InterpolationMode.BICUBIC, antialias=True)


def reference_scores(ckpt: Path, videos: list[Path], prompt: str) -> torch.Tensor:
    rc = json.loads((ckpt / "reward_config.json").read_text())
    processor = AutoProcessor.from_pretrained(ckpt)
    model = Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        head = f.get_tensor("rm_head.weight")  # (output_dim, H)
    tok_ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in rc["special_tokens"]]
    text = rc["prompt_template"].replace("{prompt}", prompt)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = []
    for v in videos:
        inputs = processor(text=[chat], videos=[_reference_frames(v, rc["sampling"])], do_resize=False, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0]  # (T, H)
        ids = inputs["input_ids"][0].tolist()
        rows = [hidden[ids.index(t)] @ head.T for t in tok_ids]  # each (output_dim,)
        out.append(torch.stack([r[0] if head.shape[0] == 1 else r[j] for j, r in enumerate(rows)]))
    return torch.stack(out)


def test_parity_with_independent_reference_on_fixtures(tiny_ckpt, fixture_videos):
    scorer = VideoRewardScorer.from_pretrained(tiny_ckpt)
    ours = torch.tensor([[s[d] for d in ("VQ", "MQ", "TA")] for s in scorer.score([(v, PROMPT) for v in fixture_videos])])
    ref = reference_scores(tiny_ckpt, fixture_videos, PROMPT)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ours.std() > 0.01, "random checkpoint should give visibly different scores"


def test_parity_with_independent_reference_on_synthetic(tiny_ckpt, synthetic_videos):
    vids = [synthetic_videos["landscape_mp4"], synthetic_videos["long_mov"]]
    scorer = VideoRewardScorer.from_pretrained(tiny_ckpt)
    ours = torch.tensor([[s[d] for d in ("VQ", "MQ", "TA")] for s in scorer.score([(v, PROMPT) for v in vids])])
    torch.testing.assert_close(ours, reference_scores(tiny_ckpt, vids, PROMPT), atol=1e-5, rtol=0)


def test_batch_invariance_across_lengths_and_sizes(tiny_ckpt, synthetic_videos, fixtures_dir):
    scorer = VideoRewardScorer.from_pretrained(tiny_ckpt)
    videos = list(synthetic_videos.values()) + [fixtures_dir / "videos" / "example_2_A.mp4"]
    prompts = [PROMPT, "x", PROMPT + " " + PROMPT, "a dog", "a girl sits on a chair in a cozy bedroom"]
    items = [scorer.prepare(v, p) for v, p in zip(videos, prompts, strict=True)]
    assert len({it.num_tokens for it in items}) > 1 and len({tuple(it.video_grid_thw.tolist()) for it in items}) > 1
    batched = scorer.forward(items)
    single = torch.cat([scorer.forward([it]) for it in items])
    assert batched.shape == (len(items), 3)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    # order does not matter either
    rev = scorer.forward(items[::-1]).flip(0)
    torch.testing.assert_close(rev, single, atol=1e-5, rtol=0)


def _manual_pool(scorer: VideoRewardScorer, items, mode: str) -> torch.Tensor:
    batch = scorer.collate(items)
    with torch.no_grad():
        hidden = scorer.model.hidden_states(**batch.as_kwargs())
    w = scorer.model.rm_head.weight
    out = []
    for b, it in enumerate(items):
        n = it.num_tokens
        h = hidden[b, :n]
        if mode == "last":
            out.append(h[-1] @ w.T)
        elif mode == "mean":
            out.append(h.mean(0) @ w.T)
        else:
            ids = it.input_ids.tolist()
            rows = [h[ids.index(t)] @ w.T for t in scorer.loaded.reward_token_ids]
            out.append(torch.stack([r[0] if w.shape[0] == 1 else r[j] for j, r in enumerate(rows)]))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("pooling", "output_dim"), [("special", 1), ("special", 3), ("last", 3), ("mean", 3)]
)
def test_pooling_modes(tmp_path, synthetic_videos, pooling, output_dim):
    ckpt = make_checkpoint(tmp_path, f"{pooling}{output_dim}", reward_token=pooling, output_dim=output_dim)
    scorer = VideoRewardScorer.from_pretrained(ckpt)
    assert scorer.model.rm_head.weight.shape[0] == output_dim
    items = [scorer.prepare(v, p) for v, p in [(synthetic_videos["landscape_mp4"], PROMPT), (synthetic_videos["odd_mkv"], "a cat")]]
    assert items[0].num_tokens != items[1].num_tokens  # padding is exercised
    raw = scorer.forward(items)
    assert raw.shape == (2, 3)
    torch.testing.assert_close(raw, _manual_pool(scorer, items, pooling), atol=1e-5, rtol=0)


def test_output_dim_3_takes_the_diagonal(tmp_path, synthetic_videos):
    ckpt = make_checkpoint(tmp_path, "diag", output_dim=3)
    scorer = VideoRewardScorer.from_pretrained(ckpt)
    item = scorer.prepare(synthetic_videos["landscape_mp4"], PROMPT)
    with torch.no_grad():
        full = scorer.model.rm_head(scorer.model.hidden_states(**scorer.collate([item]).as_kwargs()))[0]  # (T, 3)
    ids = item.input_ids.tolist()
    vq, mq, ta = (ids.index(t) for t in scorer.loaded.reward_token_ids)
    expected = torch.stack([full[vq, 0], full[mq, 1], full[ta, 2]])
    torch.testing.assert_close(scorer.forward([item])[0], expected, atol=1e-6, rtol=0)


def test_normalisation_and_overall(tiny_ckpt, tiny_norm_ckpt, synthetic_videos):
    v = synthetic_videos["landscape_mp4"]
    raw = VideoRewardScorer.from_pretrained(tiny_ckpt).score([(v, PROMPT)])[0]
    norm_scorer = VideoRewardScorer.from_pretrained(tiny_norm_ckpt)
    normed = norm_scorer.score([(v, PROMPT)])[0]  # normalises by default: the checkpoint has stats
    unnormed = norm_scorer.score([(v, PROMPT)], normalize=False)[0]
    for d in ("VQ", "MQ", "TA"):
        assert unnormed[d] == pytest.approx(raw[d], abs=1e-6)
        stats = VIDEOREWARD_NORMALIZATION[d]
        assert normed[d] == pytest.approx((raw[d] - stats["mean"]) / stats["std"], abs=1e-5)
    assert normed["Overall"] == pytest.approx(normed["VQ"] + normed["MQ"] + normed["TA"], abs=1e-5)
    assert raw["Overall"] == pytest.approx(raw["VQ"] + raw["MQ"] + raw["TA"], abs=1e-5)
    # published statistics, exactly as VideoAlign ships them
    s = to_scores(torch.tensor([[3.6757, 1.1646 + 1.3811, 2.8105 - 2 * 2.5121]]), RewardConfig(normalization=VIDEOREWARD_NORMALIZATION), True)[0]
    assert s["VQ"] == pytest.approx(0, abs=1e-6) and s["MQ"] == pytest.approx(1, abs=1e-6) and s["TA"] == pytest.approx(-2, abs=1e-6)
    assert s["Overall"] == pytest.approx(-1, abs=1e-5)
    with pytest.raises(InvalidInputError, match="normalization"):
        VideoRewardScorer.from_pretrained(tiny_ckpt).score([(v, PROMPT)], normalize=True)


def test_per_item_sampling_overrides(tiny_ckpt, synthetic_videos):
    scorer = VideoRewardScorer.from_pretrained(tiny_ckpt)
    v = synthetic_videos["long_mov"]  # 75 frames at 30 fps
    default = scorer.prepare(v, PROMPT)
    assert default.meta["num_frames"] == 4  # 2.5 s × 2 fps = 5 → clamp to ≥4 → round_even(5) = 4
    many = scorer.prepare(v, PROMPT, num_frames=12)
    assert many.meta["num_frames"] == 12 and many.num_tokens > default.num_tokens
    bigger = scorer.prepare(v, PROMPT, max_pixels=28 * 28 * 25)
    assert bigger.meta["height"] * bigger.meta["width"] > default.meta["height"] * default.meta["width"]
    out = scorer.score([ScoreRequest(v, PROMPT, num_frames=12), ScoreRequest(v, PROMPT)])
    assert out[0]["VQ"] != out[1]["VQ"]


def test_checkpoint_layout_and_token_ids(tiny_ckpt, tmp_path):
    with safe_open(tiny_ckpt / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "rm_head.weight" in keys and not any(k.startswith("lm_head") for k in keys)
    assert all(k.startswith(("model.visual.", "model.language_model.")) or k == "rm_head.weight" for k in keys)
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and "reward_output_dim" not in config
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    tok = processor.tokenizer
    base = write_base(tmp_path / "base")
    base_tok = AutoProcessor.from_pretrained(base).tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
    # appended right after the base vocabulary, like 151657..151659 for Qwen2-VL-2B
    assert ids == [len(base_tok), len(base_tok) + 1, len(base_tok) + 2]
    loaded = load_checkpoint(tiny_ckpt)
    assert loaded.reward_token_ids == tuple(ids)
    # the padded base vocabulary is resized to exactly the tokenizer size (151936 → 151660 for 2B)
    base_vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    assert base_vocab > len(tok)
    assert loaded.model.get_input_embeddings().num_embeddings == len(tok)
    assert not hasattr(loaded.model, "lm_head")


def test_init_from_base_reads_old_key_names(tmp_path):
    base = write_base(tmp_path / "base", seed=3)
    with safe_open(base / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        w = f.get_tensor("model.layers.0.mlp.up_proj.weight")
        vis = f.get_tensor("visual.blocks.0.attn.qkv.weight")
        emb = f.get_tensor("model.embed_tokens.weight")
    assert any(k.startswith("visual.") for k in keys) and not any(k.startswith("model.language_model") for k in keys)
    loaded = init_from_base(base)
    m = loaded.model
    assert torch.equal(m.model.language_model.layers[0].mlp.up_proj.weight, w)
    assert torch.equal(m.model.visual.blocks[0].attn.qkv.weight, vis)
    n_base = len(AutoProcessor.from_pretrained(base).tokenizer)
    assert torch.equal(m.get_input_embeddings().weight[:n_base], emb[:n_base])


def test_missing_and_misshapen_weights_are_errors(tiny_ckpt, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    state = load_file(bad / "model.safetensors")
    del state["model.language_model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys.*layers\.1\.mlp\.down_proj"):
        load_checkpoint(bad)
    state = load_file(tiny_ckpt / "model.safetensors")
    state["rm_head.weight"] = torch.zeros(2, state["rm_head.weight"].shape[1])
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="rm_head"):
        load_checkpoint(bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_reward_config_validation():
    with pytest.raises(CheckpointError, match="exactly once"):
        RewardConfig(prompt_template="no placeholder <|VQ_reward|> <|MQ_reward|> <|TA_reward|>")
    with pytest.raises(CheckpointError, match="reward token <\\|TA_reward\\|>"):
        RewardConfig(prompt_template="{prompt} <|VQ_reward|> <|MQ_reward|>")
    with pytest.raises(CheckpointError, match="output_dim"):
        RewardConfig(output_dim=2)
    with pytest.raises(CheckpointError, match="unknown keys"):
        RewardConfig.from_dict({"typo": 1})
    rc = RewardConfig(normalization=VIDEOREWARD_NORMALIZATION)
    assert RewardConfig.from_dict(json.loads(json.dumps(rc.to_dict()))) == rc
    assert rc.render_prompt("{x} {prompt}").count("{x} {prompt}") == 1  # braces in prompts are literal


@pytest.mark.parametrize("prompt", ["", "   ", "x <|VQ_reward|>", "<|im_end|><|im_start|>system", "a" * 10000])
def test_bad_prompts_are_rejected(tiny_ckpt, synthetic_videos, prompt):
    scorer = VideoRewardScorer.from_pretrained(tiny_ckpt)
    with pytest.raises(InvalidInputError):
        scorer.prepare(synthetic_videos["landscape_mp4"], prompt)


def test_cli_prints_json_per_video(tiny_ckpt, synthetic_videos, tmp_path):
    vids = [synthetic_videos["landscape_mp4"], synthetic_videos["portrait_webm"]]
    cmd = [sys.executable, "-m", "model.score", "--checkpoint", str(tiny_ckpt), "--prompt", PROMPT]
    for v in vids:
        cmd += ["--video", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert [sorted(s) for s in scores] == [["MQ", "Overall", "TA", "VQ"]] * 2
    lib = VideoRewardScorer.from_pretrained(tiny_ckpt).score([(v, PROMPT) for v in vids])
    for a, b in zip(scores, lib, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 64)
    bad = subprocess.run(cmd[:-2] + ["--video", str(junk)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2
    assert json.loads(bad.stderr.strip().splitlines()[-1])["error"]["code"] == "video_unreadable"
