"""Fine-tuning: config, losses, data, the recipe on a tiny model (CPU), resume, torchrun, export.

Everything runs the real code on a tiny Qwen2-VL made on the spot and on real
video files (synthetic ones written with PyAV, and the VideoAlign examples).
The synthetic preference set has labels that depend on something visible: in
each pair one video is clean and the other is a dark, noisy copy of the same
scene (or both are clean: a tie), so a model that learns must see the videos.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from model.checkpoint import load_checkpoint
from model.inputs import InputBuilder
from model.scorer import VideoRewardScorer
from model.video import SamplingConfig, load_video
from training import export as export_cli
from training import finetune as finetune_cli
from training.config import AugmentConfig, ConfigError, load_config
from training.data import (
    DataError,
    PairCollator,
    PreparedCache,
    augment_frames,
    pairs_dataset,
    split_rewards,
)
from training.export import LATEST_NAME, TRAINABLE_FILE, load_training_checkpoint
from training.losses import pair_loss
from training.trainer import FinetuneRun, build_model, param_groups

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "examples" / "tiny.yaml"
DIMS = ("VQ", "MQ", "TA")
MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")


# ---------------------------------------------------------------------------
# Synthetic preference data
# ---------------------------------------------------------------------------
def write_clip(path: Path, rng: np.random.Generator, degraded: bool, colour: np.ndarray, size: int = 64) -> None:
    """A square moving over a plain background; 'degraded' is the same scene, darker and heavily noisy."""
    fps = 8
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "veryfast"})
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(8):
            img = np.empty((size, size, 3), np.float32)
            img[:] = colour
            x = (i * 5) % (size - 16)
            img[20:36, x : x + 16] = 255 - colour
            if degraded:
                img = img * 0.4 + rng.normal(0, 50, img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_pref_set(root: Path, name: str, n: int, seed: int, mos: bool = False) -> Path:
    """n pairs: 2/5 A clean, 2/5 B clean, 1/5 ties (both clean). Paths alternate 'videos/' and './videos/'."""
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = i % 5
        label = "A" if kind < 2 else "B" if kind < 4 else "same"
        colour = rng.integers(40, 215, size=3).astype(np.float32)
        pa, pb = f"videos/{name}_{i}_A.mp4", f"./videos/{name}_{i}_B.mp4"
        write_clip(root / pa, rng, label == "B", colour)
        write_clip(root / pb, rng, label == "A", colour)
        row = [pa, pb, "a square moves across a plain background", label, label, label]
        if mos:
            row += [4.5 if label != "B" else 2.0, 4.5 if label != "A" else 2.0]
        rows.append(row)
    header = ["path_A", "path_B", "prompt", *DIMS] + (["MOS_A_VQ", "MOS_B_VQ"] if mos else [])
    out = root / f"{name}.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return out


@pytest.fixture(scope="session")
def pref_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prefs")
    write_pref_set(root, "train", 20, seed=0)
    write_pref_set(root, "eval", 10, seed=1)
    return root


def make_cfg(out: Path, data: Path, base: Path, *overrides: str):
    return load_config(
        TINY_YAML,
        [
            f"output_dir={out}",
            f"data.train_csv={data / 'train.csv'}",
            f"data.root={data}",
            f"base_model={base}",
            "train.report_to=[]",
            *overrides,
        ],
    )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
def test_config_overrides_validation_and_round_trip(tmp_path, pref_data, tiny_base):
    cfg = make_cfg(tmp_path / "out", pref_data, tiny_base, "optim.lr=3e-4", "lora.exclude=[down_proj]", "max_steps=7")
    assert cfg.optim.lr == 3e-4 and cfg.lora.exclude == ["down_proj"] and cfg.max_steps == 7
    assert cfg.data.num_frames == 4  # from the YAML
    cfg.output_dir.mkdir()
    saved = cfg.save(cfg.output_dir)
    assert load_config(saved) == cfg

    with pytest.raises(ConfigError, match=r"optim\.lr.*did you mean"):
        make_cfg(tmp_path, pref_data, tiny_base, "optim.lrr=1")
    with pytest.raises(ConfigError, match=r"data\.train_csv: required"):
        load_config(TINY_YAML, [f"output_dir={tmp_path}", f"base_model={tiny_base}"])
    with pytest.raises(ConfigError, match="exactly one of base_model"):
        make_cfg(tmp_path, pref_data, tiny_base, f"init_checkpoint={tiny_base}")
    with pytest.raises(ConfigError, match=r"lora\.r"):
        make_cfg(tmp_path, pref_data, tiny_base, "lora.r=0")
    with pytest.raises(ConfigError, match=r"loss\.type"):
        make_cfg(tmp_path, pref_data, tiny_base, "loss.type=hinge")
    with pytest.raises(ConfigError, match="model.tune_vision=false"):
        make_cfg(tmp_path, pref_data, tiny_base, "lora.vision=true")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(TINY_YAML, ["output_dir"])
    missing = make_cfg(tmp_path, pref_data, tiny_base, f"data.train_csv={tmp_path / 'nope.csv'}")
    with pytest.raises(ConfigError, match=r"data\.train_csv=.*nope\.csv does not exist"):
        missing.check_paths()
    _, overrides = finetune_cli.parse_args(["--config", "x.yaml", "--skip-bad-rows", "--resume", "a=1"])
    assert overrides == ["a=1", "data.skip_bad_rows=true", "resume_from=latest"]


# ---------------------------------------------------------------------------
# Losses against hand-computed values
# ---------------------------------------------------------------------------
NAN = float("nan")
R_A = torch.tensor([[2.0, 0.5], [1.0, 0.0], [0.3, 1.0]])
R_B = torch.tensor([[1.0, 0.5], [3.0, 0.0], [0.3, -1.0]])
LABELS = torch.tensor([[1.0, 0.0], [-1.0, NAN], [0.0, 2.0]])  # A chosen, tie / B chosen, missing / tie, invalid
MOS_A = torch.tensor([[4.0, 3.0], [2.0, NAN], [3.0, 3.0]])
MOS_B = torch.tensor([[3.5, 3.0], [4.0, 1.0], [3.0, 1.0]])


def nls(x: float) -> float:
    """−log σ(x), written out."""
    return math.log(1.0 + math.exp(-x))


@pytest.mark.parametrize(
    ("kind", "expected", "count"),
    [
        # valid entries: (0,0) A chosen d=1; (0,1) tie d=0; (1,0) B chosen d=3−1=2; (2,0) tie d=0
        # a tie at d=0 costs 2·ln(1+k) − ln(k²−1) = ln(36/24) for k=5
        ("btt", (nls(1 - math.log(5)) + nls(2 - math.log(5)) + 2 * math.log(1.5)) / 4, 4),
        ("bt", (nls(1) + nls(2)) / 2, 2),
        ("constant_margin", (nls(1 - 0.57) + nls(2 - 0.57)) / 2, 2),
        # MOS margins: (0,0) 4−3.5 = 0.5 (A chosen); (1,0) 4−2 = 2 (B chosen)
        ("margin", (nls(1 - 0.5) + nls(2 - 2)) / 2, 2),
        ("scaled", (0.5 * nls(1) + 2 * nls(2)) / 2, 2),
        # every video with a MOS: (r − (MOS − 3))², 11 of 12 (A's (1,1) has none)
        ("reg", (1 + 0.25 + 4 + 0.09 + 1 + 0.25 + 0.25 + 4 + 4 + 0.09 + 1) / 11, 11),
    ],
)
def test_losses_match_hand_computed_values(kind, expected, count):
    out = pair_loss(R_A, R_B, LABELS, kind=kind, mos_a=MOS_A, mos_b=MOS_B)
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    assert out.count == count


def test_loss_masking_ties_and_gradients():
    # a tie's btt term is symmetric: swapping the videos does not change it
    tie = torch.tensor([[0.0]])
    a, b = torch.tensor([[0.7]]), torch.tensor([[-0.2]])
    assert torch.equal(pair_loss(a, b, tie).loss, pair_loss(b, a, tie).loss)
    # B chosen is A chosen with the videos swapped
    assert torch.equal(pair_loss(a, b, torch.tensor([[1.0]])).loss, pair_loss(b, a, torch.tensor([[-1.0]])).loss)
    # nothing valid: zero loss that still backpropagates (zero gradients)
    r_a = torch.tensor([[0.1, 0.2]], requires_grad=True)
    out = pair_loss(r_a, torch.zeros(1, 2), torch.tensor([[NAN, 5.0]]))
    out.loss.backward()
    assert out.count == 0 and out.loss.item() == 0.0 and torch.equal(r_a.grad, torch.zeros(1, 2))
    # invalid labels get no gradient, valid ones do
    r_a = torch.tensor([[0.1, 0.2]], requires_grad=True)
    pair_loss(r_a, torch.zeros(1, 2), torch.tensor([[1.0, NAN]])).loss.backward()
    assert r_a.grad[0, 0] < 0 and r_a.grad[0, 1] == 0
    with pytest.raises(Exception, match="MOS"):
        pair_loss(R_A, R_B, LABELS, kind="margin")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_builder(tiny_ckpt) -> InputBuilder:
    loaded = load_checkpoint(tiny_ckpt)
    rc = loaded.reward_config
    rc.sampling = SamplingConfig(fps=None, num_frames=4, max_pixels=112 * 112, min_pixels=56 * 56)
    return InputBuilder(loaded.processor, rc)


def test_fixture_csv_loads_with_both_path_forms(fixtures_dir, tiny_builder):
    ds = pairs_dataset(fixtures_dir / "example.csv", fixtures_dir, tiny_builder, DIMS)
    assert len(ds) == 2 and ds.report.bad_rows == []
    # row 0: path_B is written './videos/...', path_A 'videos/...'; both resolve under the root
    assert ds.table.path_a[0] == (fixtures_dir / "videos" / "example_1_A.mp4").resolve()
    assert ds.table.path_b[0] == (fixtures_dir / "videos" / "example_1_B.mp4").resolve()
    # B,B,A → −1,−1,+1 ; same,same,A → 0,0,+1
    assert ds.labels.tolist() == [[-1, -1, 1], [0, 0, 1]]
    ex = ds[0]
    assert ex["labels"].tolist() == [-1, -1, 1] and ex["row"] == 0
    # the same decode and preparation as serving, with the run's sampling
    direct = tiny_builder.prepare(load_video(ds.table.path_a[0], tiny_builder.sampling_for()), ds.table.frame.at[0, "prompt"])
    assert torch.equal(ex["a"].pixel_values_videos, direct.pixel_values_videos)
    assert torch.equal(ex["a"].input_ids, direct.input_ids)
    batch = PairCollator(tiny_builder.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["pair_labels"].shape == (2, 3)
    # use_tied_data=false drops row 1? No: its TA label is A, so not every dimension is a tie
    assert len(pairs_dataset(fixtures_dir / "example.csv", fixtures_dir, tiny_builder, DIMS, use_tied_data=False)) == 2
    assert len(pairs_dataset(fixtures_dir / "example.csv", fixtures_dir, tiny_builder, ("VQ", "MQ"), use_tied_data=False)) == 1


def test_bad_rows_are_named_or_skipped_and_counted(tmp_path, pref_data, tiny_builder):
    (tmp_path / "videos").mkdir()
    good = [f"{pref_data}/videos/train_0_A.mp4", f"{pref_data}/videos/train_0_B.mp4"]
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    rows = [
        [*good, "fine", "A", "B", "same"],  # line 2: good
        ["videos/missing.mp4", good[1], "p", "A", "A", "A"],  # line 3: missing file
        [*good, "p", "C", "", "tie"],  # line 4: no valid label at all
        ["videos/broken.mp4", good[1], "p", "A", "A", "A"],  # line 5: unreadable video
        [*good, "p", "A", "maybe", ""],  # line 6: usable, two labels masked
    ]
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_A", "path_B", "prompt", *DIMS])
        w.writerows(rows)
    with pytest.raises(DataError) as err:
        pairs_dataset(csv_path, tmp_path, tiny_builder, DIMS)
    msg = str(err.value)
    assert "3 bad row(s)" in msg and "skip_bad_rows" in msg
    assert "line 3" in msg and "missing.mp4" in msg and "not found" in msg
    assert "line 4" in msg and "no valid label" in msg
    assert "line 5" in msg and "broken.mp4" in msg
    assert "line 2" not in msg and "line 6" not in msg

    ds = pairs_dataset(csv_path, tmp_path, tiny_builder, DIMS, skip_bad_rows=True)
    assert ds.rows == [0, 4] and [b.row for b in ds.report.bad_rows] == [1, 2, 3]
    assert ds.report.invalid_labels == {"VQ": 0, "MQ": 1, "TA": 1}  # masked, counted
    assert ds[1]["labels"][0] == 1 and math.isnan(ds[1]["labels"][1])
    with pytest.raises(DataError, match="line 6.*not A, B or same"):
        pairs_dataset(csv_path, tmp_path, tiny_builder, DIMS, skip_bad_rows=False, strict_labels=True, check_videos=False)


def test_cache_and_augmentation(tmp_path, pref_data, tiny_builder):
    plain = pairs_dataset(pref_data / "train.csv", pref_data, tiny_builder, DIMS)
    cache = PreparedCache(tmp_path / "cache")
    cached = pairs_dataset(pref_data / "train.csv", pref_data, tiny_builder, DIMS, cache=cache)
    first = cached[3]
    second = cached[3]
    assert cache.misses == 2 and cache.hits == 2
    for side in ("a", "b"):
        for key in ("input_ids", "pixel_values_videos", "video_grid_thw"):
            assert torch.equal(getattr(first[side], key), getattr(plain[3][side], key))
            assert torch.equal(getattr(second[side], key), getattr(plain[3][side], key))
    assert not list((tmp_path / "cache").rglob("*.pt"))  # safetensors only

    frames = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 4).contiguous() * 40
    shuffled = augment_frames(frames, AugmentConfig(frame_shuffle_p=1.0), torch.Generator().manual_seed(0))
    assert sorted(shuffled[:, 0, 0, 0].tolist()) == frames[:, 0, 0, 0].tolist()
    assert shuffled[:, 0, 0, 0].tolist() != frames[:, 0, 0, 0].tolist()
    jittered = augment_frames(frames, AugmentConfig(color_jitter_p=1.0), torch.Generator().manual_seed(0))
    assert jittered.dtype == torch.uint8 and not torch.equal(jittered, frames)
    assert torch.equal(augment_frames(frames, AugmentConfig(), torch.Generator()), frames)

    aug = AugmentConfig(frame_shuffle_p=1.0, color_jitter_p=1.0)
    ds = pairs_dataset(pref_data / "train.csv", pref_data, tiny_builder, DIMS, augment=aug, cache=cache, seed=3)
    a0 = ds[0]["a"].pixel_values_videos
    assert torch.equal(a0, ds[0]["a"].pixel_values_videos)  # reproducible: (seed, epoch, row, side)
    assert not torch.equal(a0, plain[0]["a"].pixel_values_videos)
    ds.set_epoch(1)
    assert not torch.equal(a0, ds[0]["a"].pixel_values_videos)


# ---------------------------------------------------------------------------
# The recipe on the tiny model
# ---------------------------------------------------------------------------
def test_learns_a_visible_preference(tmp_path, pref_data, tiny_base):
    """`python -m training.finetune` (in-process): loss falls, held-out accuracy far above chance,
    and the serving checkpoint it writes scores the held-out pairs the same way."""
    out = tmp_path / "run"
    rc = finetune_cli.main([
        "--config", str(TINY_YAML), f"output_dir={out}", "max_steps=30", f"data.train_csv={pref_data / 'train.csv'}",
        f"data.root={pref_data}", f"base_model={tiny_base}", f"data.eval_csv={pref_data / 'eval.csv'}",
        "train.eval_steps=15", "train.save_steps=15", "train.logging_steps=5", "train.report_to=auto",
    ])
    assert rc == 0
    if importlib.util.find_spec("tensorboard") is not None:  # report_to=auto: TensorBoard when installed
        assert list((out / "runs").rglob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    ev = results["eval"]
    for dim in DIMS:
        assert ev[f"eval_{dim}_acc_without_ties"] >= 0.9, ev
        assert ev[f"eval_{dim}_acc_with_ties"] >= 0.8, ev
        assert ev[f"eval_{dim}_pairs"] == 10
    state = json.loads((out / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2]), losses
    assert any("eval_VQ_acc_with_ties" in h for h in state["log_history"] if h.get("step") == 15)  # periodic eval
    # periodic checkpoints, atomic (no staging dirs left), the latest pointer, keep_last=2
    assert (out / LATEST_NAME).read_text().strip() == "checkpoint-30"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", ".staging"))) == [
        "checkpoint-15", "checkpoint-30"
    ]
    ckpt = out / "checkpoint-30"
    for name in ("adapter_model.safetensors", "adapter_config.json", TRAINABLE_FILE, "finetune_config.yaml",
                 "optimizer.pt", "scheduler.pt", "rng_state.pth", "reward_config.json"):
        assert (ckpt / name).is_file(), name
    assert not (ckpt / "training_args.bin").exists()  # no pickled objects of ours
    # the service's library loads the serving checkpoint unchanged and ranks the held-out pairs correctly
    scorer = VideoRewardScorer.from_pretrained(out / "serving")
    assert scorer.reward_config.sampling == SamplingConfig(fps=None, num_frames=4, max_pixels=12544, min_pixels=3136)
    with open(pref_data / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    scores = scorer.score([(pref_data / r[side], r["prompt"]) for r in rows for side in ("path_A", "path_B")])
    for i, r in enumerate(rows):
        margin = scores[2 * i]["VQ"] - scores[2 * i + 1]["VQ"]
        if r["VQ"] != "same":
            assert margin * (1 if r["VQ"] == "A" else -1) > 0


@pytest.mark.parametrize("tune_vision", [True, False])
def test_only_the_intended_weights_change(tmp_path, pref_data, tiny_base, tune_vision):
    # weight decay on, so the test would see an optimizer that moves rows or tensors whose gradient is zero
    flag = str(tune_vision).lower()
    cfg = make_cfg(
        tmp_path / "out", pref_data, tiny_base, "max_steps=3", "optim.weight_decay=0.1", "train.export_at_end=false",
        f"model.tune_vision={flag}", f"model.tune_merger={flag}", f"model.vision_grad_ckpt={flag}",
        f"model.lm_grad_ckpt={flag}",
    )
    r = FinetuneRun(cfg)
    model = r.setup.model
    base = model.get_base_model()
    assert base.model.visual.blocks[0].gradient_checkpointing is tune_vision
    assert base.model.language_model.layers[0].gradient_checkpointing is tune_vision
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    emb_before = base.get_input_embeddings().weight.detach().clone()  # (V, H), reward rows merged in
    r.train()
    ids = list(r.setup.reward_token_ids)
    assert ids == [len(emb_before) - 3, len(emb_before) - 2, len(emb_before) - 1]
    emb_after = base.get_input_embeddings().weight.detach()
    others = torch.ones(len(emb_before), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(emb_after[others], emb_before[others])  # bitwise
    assert all(not torch.equal(emb_after[i], emb_before[i]) for i in ids)

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable, sorted(changed - trainable)[:5]  # frozen: bitwise unchanged
    assert trainable == changed, sorted(trainable - changed)[:5]  # every trained tensor moved
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any(n.endswith("rm_head.weight") for n in changed)
    assert any("trainable_tokens_delta" in n for n in changed)
    visual_changed = [n for n in changed if ".visual." in n]
    assert bool(visual_changed) == tune_vision
    if not tune_vision:
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".visual." in n)
    assert not any(".language_model." in n and "lora_" not in n and "trainable_tokens" not in n for n in changed)

    groups = param_groups(model, cfg, set(r.trainer.get_decay_parameter_names(model)))
    for g in groups:
        names = {n for n, p in model.named_parameters() if any(p is q for q in g["params"])}
        if g["weight_decay"] > 0:
            assert all("bias" not in n and "norm" not in n and "ln_q" not in n for n in names), names
        if g["name"].startswith("special_token"):
            assert g["weight_decay"] == 0


class StopAt(TrainerCallback):
    """Stop (and save) after `step` optimizer steps, as a preempted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, pref_data, tiny_base):
    # 20 pairs, batch 4: 5 steps an epoch, so the stop at 4 is mid-epoch and the run crosses an epoch.
    # LoRA dropout and augmentation make the result depend on the RNG and data order being restored.
    common = (
        "max_steps=8", "optim.scheduler=cosine", "lora.dropout=0.1", "data.augment.frame_shuffle_p=0.5",
        "data.augment.color_jitter_p=0.5", "train.export_at_end=false", "train.save_steps=0",
    )
    straight = FinetuneRun(make_cfg(tmp_path / "straight", pref_data, tiny_base, *common))
    straight.train()
    expected = trainable_state(straight.setup.model)

    first = FinetuneRun(make_cfg(tmp_path / "resumed", pref_data, tiny_base, *common))
    first.trainer.add_callback(StopAt(4))
    first.train()
    assert (tmp_path / "resumed" / LATEST_NAME).read_text().strip() == "checkpoint-4"
    halfway = trainable_state(first.setup.model)
    assert any(not torch.equal(halfway[n], expected[n]) for n in expected)

    second = FinetuneRun(make_cfg(tmp_path / "resumed", pref_data, tiny_base, *common, "resume_from=latest"))
    second.train()
    got = trainable_state(second.setup.model)
    assert second.trainer.state.global_step == 8
    assert got.keys() == expected.keys()
    for n in expected:
        assert torch.equal(got[n], expected[n]), n


def test_export_matches_the_trained_model(tmp_path, pref_data, tiny_base):
    cfg = make_cfg(tmp_path / "out", pref_data, tiny_base, "max_steps=4", "train.export_at_end=false")
    r = FinetuneRun(cfg)
    r.train()
    model = r.setup.model.eval()
    ds = r.train_dataset
    items = [ds[i][side] for i in range(4) for side in ("a", "b")]
    batch = PairCollator(ds.builder.pad_token_id)([ds[i] for i in range(4)])
    with torch.no_grad():
        trained = model(**{k: batch[k] for k in MODEL_KEYS})  # (8, 3): A videos then B videos
    serving = tmp_path / "serving"
    assert export_cli.main([str(cfg.output_dir), str(serving)]) == 0  # the run dir: its 'latest'
    scorer = VideoRewardScorer.from_pretrained(serving)
    served = scorer.forward(items[0::2] + items[1::2])
    torch.testing.assert_close(served, trained, rtol=0, atol=1e-5)
    # the merged embedding: reward rows trained, every other row the base model's, bitwise
    start = build_model(cfg, for_training=False).model.get_base_model().get_input_embeddings().weight.detach()
    emb = scorer.model.get_input_embeddings().weight.detach()
    n = len(emb)
    assert torch.equal(emb[: n - 3], start[: n - 3]) and not torch.equal(emb[n - 3 :], start[n - 3 :])
    # and loading the training checkpoint rebuilds the same model
    again = load_training_checkpoint(cfg.output_dir / "checkpoint-4").model
    with torch.no_grad():
        torch.testing.assert_close(again(**{k: batch[k] for k in MODEL_KEYS}), trained, rtol=0, atol=0)
    assert json.loads((serving / "reward_config.json").read_text())["sampling"]["num_frames"] == 4


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from safetensors.torch import save_file
    from training.config import load_config
    from training.trainer import FinetuneRun

    cfg = load_config(sys.argv[1], sys.argv[3:])
    run = FinetuneRun(cfg)
    result = run.train()
    rank = int(os.environ["RANK"])
    state = {n: p.detach().contiguous() for n, p in run.setup.model.named_parameters() if p.requires_grad}
    save_file(state, os.path.join(sys.argv[2], f"rank{rank}.safetensors"),
              metadata={"world_size": str(run.trainer.args.world_size), "step": str(run.trainer.state.global_step)})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_agree(tmp_path, pref_data, tiny_base):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    dump = tmp_path / "dump"
    dump.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        str(script), str(TINY_YAML), str(dump), f"output_dir={out}", "max_steps=3",
        f"data.train_csv={pref_data / 'train.csv'}", f"data.root={pref_data}", f"base_model={tiny_base}",
        "train.report_to=[]", "train.export_at_end=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from safetensors import safe_open

    with safe_open(str(dump / "rank0.safetensors"), "pt") as f:
        assert f.metadata() == {"world_size": "2", "step": "3"}
    r0, r1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and len(r0) > 10
    for n in r0:
        assert torch.equal(r0[n], r1[n]), n
    # rank 0's checkpoint holds the same weights
    saved = load_file(str(out / "checkpoint-3" / TRAINABLE_FILE))
    assert torch.equal(saved["rm_head.weight"], r0["base_model.model.rm_head.weight"])
    # the ranks split the pairs: 10 each is 3 batches of up to 4, so 3 steps are one epoch (one process: 0.6)
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(1.0)


def test_margin_losses_read_mos_columns(tmp_path, tiny_base, tiny_builder):
    data = tmp_path / "mosdata"
    write_pref_set(data, "train", 5, seed=2, mos=True)
    ds = pairs_dataset(data / "train.csv", data, tiny_builder, DIMS, require_mos=True)
    assert ds.mos_a[:, 0].tolist() == [4.5, 4.5, 2.0, 2.0, 4.5] and np.isnan(ds.mos_a[:, 1]).all()
    batch = PairCollator(tiny_builder.pad_token_id)([ds[0], ds[2]])
    assert batch["mos_b"][:, 0].tolist() == [2.0, 4.5]
    # a run with the margin loss trains on it; one without MOS columns fails at start, saying why
    cfg = make_cfg(tmp_path / "out", data, tiny_base, "max_steps=2", "loss.type=margin", "train.export_at_end=false")
    result = FinetuneRun(cfg).train()
    assert math.isfinite(result.train_metrics["train_loss"])
    no_mos = tmp_path / "nomos"
    write_pref_set(no_mos, "train", 5, seed=2)
    with pytest.raises(ConfigError, match="needs MOS columns"):
        FinetuneRun(make_cfg(tmp_path / "out2", no_mos, tiny_base, "loss.type=reg"))


def test_continue_from_a_serving_checkpoint(tmp_path, pref_data, tiny_ckpt):
    """init_checkpoint: the reward tokens, head and reward config come from the checkpoint; export round-trips."""
    cfg = make_cfg(
        tmp_path / "out", pref_data, tiny_ckpt, "base_model=null", f"init_checkpoint={tiny_ckpt}", "max_steps=2",
    )
    result = FinetuneRun(cfg).train()
    start = load_checkpoint(tiny_ckpt)
    trained = load_checkpoint(result.serving_dir)
    assert trained.reward_token_ids == start.reward_token_ids
    assert trained.reward_config.prompt_template == start.reward_config.prompt_template
    assert trained.reward_config.sampling.num_frames == 4  # the run's sampling is what it serves with
    assert not torch.equal(trained.model.rm_head.weight, start.model.rm_head.weight)
    with pytest.raises(ConfigError, match="model.reward.eval_dims applies to a fresh model"):
        FinetuneRun(make_cfg(
            tmp_path / "o2", pref_data, tiny_ckpt, "base_model=null", f"init_checkpoint={tiny_ckpt}",
            "model.reward.eval_dims=[VQ]",
        ))
    assert export_cli.main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


def test_split_rewards_order():
    r = torch.arange(8.0).view(4, 2)
    a, b = split_rewards(r)
    assert a.tolist() == [[0, 1], [2, 3]] and b.tolist() == [[4, 5], [6, 7]]
