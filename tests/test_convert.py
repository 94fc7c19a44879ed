"""training.convert: VideoAlign runs (both weight formats, both key schemes) → serving checkpoints, and back.

The VideoAlign fixtures are made here as VideoAlign's trainer makes them: a
Qwen2VLForConditionalGeneration subclass with ``rm_head`` (lm_head tied to the
embedding) is loaded from a Qwen2-VL base laid out like Qwen2-VL-2B-Instruct,
the reward tokens are added and the embedding resized, and peft's
``get_peft_model`` puts LoRA on every LLM linear (Linear/Embedding modules
outside ``lm_head``, ``rm_head``, ``embed_tokens`` and ``visual``). LoRA B is
non-zero and some non-LoRA weights are changed, as after training. The
reference scores come from that peft-wrapped model, whose forward pools the
reward tokens independently of :mod:`model.modeling`.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from model.errors import CheckpointError
from model.reward_config import DEFAULT_PROMPT_TEMPLATE
from model.scorer import VideoRewardScorer
from tests.media import write_video
from training.convert import (
    export_videoalign,
    import_videoalign,
    main,
)

SPECIAL_TOKENS = ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]
PROMPTS = ["a red ball moves left over a dark table", "a white cat walks slowly through a sunny room"]
TINY_PIXELS = 56 * 56 * 4


class UpstreamRewardModel(Qwen2VLForConditionalGeneration):
    """VideoAlign's reward model shape: Qwen2-VL for generation (with lm_head) + ``rm_head``."""

    def __init__(self, config: Qwen2VLConfig, output_dim: int = 1, special_token_ids: list[int] | None = None) -> None:
        super().__init__(config)
        self.rm_head = nn.Linear(config.text_config.hidden_size, output_dim, bias=False)
        self.special_token_ids = special_token_ids or []

    def forward(self, input_ids, attention_mask, pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None, **_):
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
        ).last_hidden_state
        logits = self.rm_head(hidden)  # (B, T, out), as VideoAlign: head on every position, then select
        b = input_ids.shape[0]
        mask = torch.isin(input_ids, torch.tensor(self.special_token_ids, device=input_ids.device))
        pooled = logits[mask].view(b, len(self.special_token_ids), -1)
        if pooled.shape[-1] == len(self.special_token_ids):
            pooled = pooled.diagonal(dim1=1, dim2=2)
        return pooled.reshape(b, -1)


def _legacy(key: str) -> str:
    """A current-transformers key as transformers < 4.52 names it."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


def _rename(state: dict[str, torch.Tensor], scheme: str) -> dict[str, torch.Tensor]:
    if scheme == "new":
        return dict(state)
    p = "base_model.model."
    return {p + _legacy(k[len(p) :]): v for k, v in state.items()}


def build_upstream(base: Path, *, rslora: bool, train_embedding: bool, seed: int) -> tuple[nn.Module, list[int]]:
    """The peft-wrapped reward model after "training" (non-zero LoRA B, changed head/merger/embedding)."""
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    ids = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = Qwen2VLConfig.from_pretrained(base)
    model = UpstreamRewardModel(config, output_dim=1, special_token_ids=ids)
    base_state = load_file(str(base / "model.safetensors"))
    mapped = {("model." + k if k.startswith("visual.") else "model.language_model." + k[len("model.") :]): v for k, v in base_state.items()}
    result = model.load_state_dict(mapped, strict=False)
    assert set(result.missing_keys) <= {"rm_head.weight", "lm_head.weight"} and not result.unexpected_keys
    model.tie_weights()
    model.resize_token_embeddings(len(processor.tokenizer))
    exclude = ["lm_head", "rm_head", "embed_tokens", "visual"]
    targets = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding)) and not any(x in n for x in exclude)
    ]
    peft_model = get_peft_model(
        model,
        LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.05, task_type="CAUSAL_LM", use_rslora=rslora, bias="none"),
    )
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            trained = "lora_B" in name or "rm_head" in name or "visual.merger" in name
            if train_embedding and "embed_tokens" in name:
                trained = True
                p[ids] += torch.randn(len(ids), p.shape[1], generator=g) * 0.5  # the reward-token rows
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif trained:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            p.requires_grad_(trained or "lora_A" in name)
    peft_model.eval()
    return peft_model, ids


@dataclass
class Run:
    path: Path
    reference: nn.Module
    fmt: str
    scheme: str


def write_run(root: Path, peft_model: nn.Module, *, fmt: str, scheme: str, rslora: bool, step: int = 40) -> Path:
    """Save like VideoAlign: model_config.json + checkpoint-<step>/ in Format 1 (model.pth) or 2."""
    run = root / f"run-{fmt}-{scheme}"
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if fmt == "full":
        torch.save(_rename(peft_model.state_dict(), scheme), ckpt / "model.pth")
    else:
        adapter = get_peft_model_state_dict(peft_model)  # keys without the adapter name, as PeftModel.save_pretrained
        assert all(".default." not in k for k in adapter) and any(".lora_A.weight" in k for k in adapter)
        save_file({k: v.contiguous() for k, v in _rename(adapter, scheme).items()}, str(ckpt / "adapter_model.safetensors"))
        non_lora = {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" not in k and v.requires_grad}
        torch.save(_rename(non_lora, scheme), ckpt / "non_lora_state_dict.pth")
    (run / "model_config.json").write_text(
        json.dumps(
            {
                "data_config": {
                    "meta_data": "train.csv", "data_dir": "videos", "max_frame_pixels": TINY_PIXELS, "num_frames": None,
                    "fps": 2.0, "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                    "sample_type": "uniform",
                },
                "model_config": {"output_dim": 1, "use_special_tokens": True, "reward_token": "special", "loss_type": "btt"},
                "peft_lora_config": {
                    "lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
                    "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"], "use_rslora": rslora,
                },
                "inference_config": {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -1.0, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 1.5},
            }
        )
    )
    return run


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("convert-videos")
    return [
        write_video(d / "a.mp4", num_frames=12, width=96, height=64, fps=6),
        write_video(d / "b.mp4", num_frames=9, width=64, height=80, fps=4, pattern="static"),
    ]


@pytest.fixture(scope="module")
def upstream(tiny_base: Path) -> dict[str, tuple[nn.Module, bool]]:
    """Two trained peft models: plain LoRA scaling with an untrained embedding, and rslora with a trained one."""
    return {
        "plain": (build_upstream(tiny_base, rslora=False, train_embedding=False, seed=1)[0], False),
        "rslora": (build_upstream(tiny_base, rslora=True, train_embedding=True, seed=2)[0], True),
    }


def _reference_scores(scorer: VideoRewardScorer, reference: nn.Module, videos: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [scorer.prepare(v, p) for v, p in zip(videos, PROMPTS, strict=True)]
    with torch.no_grad():
        ref = reference(**scorer.collate(items).as_kwargs()).float()
    return scorer.forward(items), ref


CASES = [("full", "old", "plain"), ("full", "new", "rslora"), ("lora", "old", "rslora"), ("lora", "new", "plain")]


@pytest.mark.parametrize(("fmt", "scheme", "variant"), CASES)
def test_import_matches_the_peft_model(tmp_path, tiny_base, upstream, videos, fmt, scheme, variant, caplog):
    peft_model, rslora = upstream[variant]
    run = write_run(tmp_path, peft_model, fmt=fmt, scheme=scheme, rslora=rslora)
    out = tmp_path / "serving"
    report = import_videoalign(run, out, base=tiny_base)
    assert report.key_scheme == scheme and report.step == 40
    assert report.merged_lora_modules == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert report.dropped_keys == (["lm_head.weight"] if fmt == "full" else [])
    assert "scores WILL DIFFER" in caplog.text  # no --prompt-template: the default template, with a warning

    scorer = VideoRewardScorer.from_pretrained(out)
    rc = scorer.reward_config
    assert rc.prompt_template == DEFAULT_PROMPT_TEMPLATE
    assert rc.sampling.fps == 2.0 and rc.sampling.max_pixels == TINY_PIXELS and rc.reward_token == "special"
    assert rc.normalization == {"VQ": {"mean": 0.5, "std": 2.0}, "MQ": {"mean": -1.0, "std": 0.5}, "TA": {"mean": 0.0, "std": 1.5}}
    vocab = len(scorer.loaded.processor.tokenizer)
    assert scorer.model.get_input_embeddings().num_embeddings == vocab == report.vocab["output_rows"]
    # Format 2 without a trained embedding takes the base's padded one, cut to the tokenizer as VideoAlign does
    padded = Qwen2VLConfig.from_pretrained(tiny_base).text_config.vocab_size
    assert report.vocab["checkpoint_rows"] == (padded if (fmt, variant) == ("lora", "plain") else vocab) > 0

    ours, ref = _reference_scores(scorer, peft_model, videos)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # the LoRA update matters: the same weights without it score differently
    with peft_model.disable_adapter(), torch.no_grad():
        items = [scorer.prepare(v, p) for v, p in zip(videos, PROMPTS, strict=True)]
        unmerged = peft_model(**scorer.collate(items).as_kwargs()).float()
    assert (unmerged - ours).abs().max() > 1e-3


def test_prompt_template_file_and_step_selection(tmp_path, tiny_base, upstream, videos, caplog):
    peft_model, rslora = upstream["plain"]
    run = write_run(tmp_path, peft_model, fmt="full", scheme="old", rslora=rslora, step=12)
    (run / "checkpoint-5").mkdir()
    torch.save({"base_model.model.rm_head.weight": torch.zeros(1, 64)}, run / "checkpoint-5" / "model.pth")
    template = (
        "Rate the video for: {prompt}\nVisual <|VQ_reward|> Motion <|MQ_reward|> Text <|TA_reward|>"
    )
    (tmp_path / "template.txt").write_text(template + "\n")
    # numeric, not lexical, order: checkpoint-12 is the highest step
    report = import_videoalign(run, tmp_path / "out", base=tiny_base, prompt_template=tmp_path / "template.txt")
    assert report.step == 12 and "scores WILL DIFFER" not in caplog.text
    scorer = VideoRewardScorer.from_pretrained(tmp_path / "out")
    assert scorer.reward_config.prompt_template == template
    ours, ref = _reference_scores(scorer, peft_model, videos)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match=r"checkpoint-7/.*available steps: \[5, 12\]"):
        import_videoalign(run, tmp_path / "o2", step=7, base=tiny_base)
    with pytest.raises(CheckpointError, match=r"missing keys .*base_model\.model\.model\.embed_tokens\.weight"):
        import_videoalign(run, tmp_path / "o3", step=5, base=tiny_base)  # checkpoint-5 is a partial one
    with pytest.raises(CheckpointError, match="not empty"):
        import_videoalign(run, tmp_path / "out", base=tiny_base)


def test_resize_vocab_keeps_extra_rows(tmp_path, tiny_base, upstream, videos):
    peft_model, rslora = upstream["plain"]  # Format 2 without a trained embedding: the base's padded rows
    run = write_run(tmp_path, peft_model, fmt="lora", scheme="old", rslora=rslora)
    tokenizer_size = len(AutoProcessor.from_pretrained(tiny_base).tokenizer) + 3
    report = import_videoalign(run, tmp_path / "out", base=tiny_base, resize_vocab=tokenizer_size + 6)
    assert report.vocab["output_rows"] == tokenizer_size + 6
    scorer = VideoRewardScorer.from_pretrained(tmp_path / "out")
    base_embed = load_file(str(tiny_base / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(scorer.model.get_input_embeddings().weight, base_embed[: tokenizer_size + 6])
    ours, ref = _reference_scores(scorer, peft_model, videos)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="below the tokenizer size"):
        import_videoalign(run, tmp_path / "o2", base=tiny_base, resize_vocab=tokenizer_size - 1)
    full = write_run(tmp_path, peft_model, fmt="full", scheme="old", rslora=rslora)
    with pytest.raises(CheckpointError, match="cannot be recovered"):  # model.pth has exactly tokenizer_size rows
        import_videoalign(full, tmp_path / "o3", base=tiny_base, resize_vocab=tokenizer_size + 6)


def _full_state(peft_model: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    return _rename(peft_model.state_dict(), scheme)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("missing", "base_model.model.model.norm.weight"),
        ("missing_lora_base", "base_model.model.model.layers.1.mlp.down_proj.base_layer.weight"),
        ("unexpected", "base_model.model.model.layers.0.mlp.extra_proj.weight"),
        ("shape", "base_model.model.visual.merger.mlp.2.weight"),
        ("lora_shape", "base_model.model.model.layers.0.self_attn.q_proj"),
    ],
)
def test_incomplete_or_mis_shaped_checkpoints_fail_naming_the_key(tmp_path, tiny_base, upstream, edit, named):
    peft_model, _ = upstream["plain"]
    run = write_run(tmp_path, peft_model, fmt="full", scheme="old", rslora=False)
    state = _full_state(peft_model, "old")
    if edit in ("missing", "missing_lora_base"):
        del state[named]
    elif edit == "unexpected":
        state[named] = torch.zeros(4, 4)
    elif edit == "shape":
        state[named] = torch.zeros(state[named].shape[0] + 1, state[named].shape[1])
    else:
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
        state[key] = torch.zeros(state[key].shape[0] + 2, state[key].shape[1])
    torch.save(state, run / "checkpoint-40" / "model.pth")
    with pytest.raises(CheckpointError) as err:
        import_videoalign(run, tmp_path / "out", base=tiny_base)
    assert named in str(err.value), err.value  # the checkpoint's own key name
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_format2_needs_base_and_rejects_unknown_non_lora_keys(tmp_path, tiny_base, upstream):
    peft_model, rslora = upstream["plain"]
    run = write_run(tmp_path, peft_model, fmt="lora", scheme="new", rslora=rslora)
    with pytest.raises(CheckpointError, match="--base"):
        import_videoalign(run, tmp_path / "out")
    non_lora = torch.load(run / "checkpoint-40" / "non_lora_state_dict.pth", weights_only=True)
    non_lora["base_model.model.model.visual.merger.extra.weight"] = torch.zeros(2)
    torch.save(non_lora, run / "checkpoint-40" / "non_lora_state_dict.pth")
    with pytest.raises(CheckpointError, match=r"model\.visual\.merger\.extra\.weight"):
        import_videoalign(run, tmp_path / "out", base=tiny_base)


def test_format1_without_base_asks_for_it(tmp_path, upstream):
    run = write_run(tmp_path, upstream["plain"][0], fmt="full", scheme="old", rslora=False)
    with pytest.raises(CheckpointError, match="Pass --base"):
        import_videoalign(run, tmp_path / "out")


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
@pytest.mark.parametrize("fmt", ["full", "lora"])
def test_malicious_pickle_is_refused(tmp_path, tiny_base, upstream, payload, fmt):
    run = write_run(tmp_path, upstream["plain"][0], fmt=fmt, scheme="new", rslora=False)
    marker = tmp_path / "pwned"
    target = run / "checkpoint-40" / ("model.pth" if fmt == "full" else "non_lora_state_dict.pth")
    torch.save({"base_model.model.rm_head.weight": payload(marker)}, target)
    with pytest.raises(CheckpointError, match=r"refused to load .*weights_only=True"):
        import_videoalign(run, tmp_path / "out", base=tiny_base)
    assert not marker.exists()
    # a raw pickle (not torch.save's zip format) is refused too
    target.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(CheckpointError, match="refused to load"):
        import_videoalign(run, tmp_path / "out", base=tiny_base)
    assert not marker.exists()
    pickle.loads(target.read_bytes())  # control: the payload is live when unpickled without restrictions
    assert marker.exists()


def test_export_then_import_round_trip(tmp_path, tiny_norm_ckpt, videos):
    exported = tmp_path / "videoalign"
    weights = export_videoalign(tiny_norm_ckpt, exported)
    assert weights == exported / "checkpoint-0" / "model.pth"
    state = torch.load(weights, weights_only=True)
    assert all(k.startswith("base_model.model.") for k in state)
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in state  # old key names by default
    assert "base_model.model.visual.merger.mlp.0.weight" in state and "base_model.model.rm_head.weight" in state
    assert not state["base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight"].any()
    torch.testing.assert_close(state["base_model.model.lm_head.weight"], state["base_model.model.model.embed_tokens.weight"])
    mc = json.loads((exported / "model_config.json").read_text())
    assert mc["inference_config"]["MQ_std"] == pytest.approx(1.3811)
    assert mc["data_config"]["eval_dim"] == ["VQ", "MQ", "TA"] and mc["model_config"]["use_special_tokens"] is True

    back = tmp_path / "back"
    assert main(["import-videoalign", str(exported), str(back)]) == 0  # no --base: the export carries its tokenizer
    original = VideoRewardScorer.from_pretrained(tiny_norm_ckpt)
    again = VideoRewardScorer.from_pretrained(back)
    assert again.reward_config.to_dict() == original.reward_config.to_dict()
    items = [original.prepare(v, p) for v, p in zip(videos, PROMPTS, strict=True)]
    torch.testing.assert_close(again.forward(items), original.forward(items), atol=1e-6, rtol=0)
    for (k, a), (k2, b) in zip(sorted(original.model.state_dict().items()), sorted(again.model.state_dict().items()), strict=True):
        assert k == k2 and torch.equal(a, b), k

    # the new key scheme loads strictly into VideoAlign's peft-wrapped model built from model_config.json
    # (as VideoAlign's inference does with transformers >= 4.52) and scores the same
    export_videoalign(back, tmp_path / "new", key_scheme="new")
    new_state = torch.load(tmp_path / "new" / "checkpoint-0" / "model.pth", weights_only=True)
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight" in new_state
    upstream_model = _upstream_from_export(tmp_path / "new", step=0)
    upstream_model.load_state_dict(new_state, strict=True)
    with torch.no_grad():
        ref = upstream_model(**original.collate(items).as_kwargs()).float()
    torch.testing.assert_close(ref, original.forward(items), atol=1e-5, rtol=0)


def _upstream_from_export(run: Path, step: int) -> nn.Module:
    """VideoAlign's create_model_and_processor, driven by an exported model_config.json."""
    mc = json.loads((run / "model_config.json").read_text())
    ckpt = run / f"checkpoint-{step}"
    processor = AutoProcessor.from_pretrained(ckpt)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    ids = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    model = UpstreamRewardModel(
        Qwen2VLConfig.from_pretrained(ckpt), output_dim=mc["model_config"]["output_dim"], special_token_ids=ids
    )
    model.resize_token_embeddings(len(processor.tokenizer))
    lora = mc["peft_lora_config"]
    exclude = lora["lora_namespan_exclude"]
    targets = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding)) and not any(x in n for x in exclude)
    ]
    config = LoraConfig(
        target_modules=targets, r=lora["lora_r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
        task_type=lora["lora_task_type"], use_rslora=lora["use_rslora"], bias="none",
    )
    return get_peft_model(model, config).eval()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["import-videoalign", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
