"""Synthetic preference data: deterministic, labels follow the levels, splits disjoint, videos decode."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from model.video import SamplingConfig, load_video, probe
from training.pairs import read_pairs
from training.synthetic import Quality, Scene, generate, render


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_deterministic_and_labelled_by_levels(tmp_path):
    train, test = generate(tmp_path / "a", n_train=12, n_test=6, seed=3)
    train2, _ = generate(tmp_path / "b", n_train=12, n_test=6, seed=3)
    assert pd.read_csv(train).equals(pd.read_csv(train2))
    a = sorted((tmp_path / "a/videos").glob("train_*"))
    b = sorted((tmp_path / "b/videos").glob("train_*"))
    assert _digest(a) == _digest(b)
    df = pd.read_csv(train)
    for dim in ("VQ", "MQ", "TA"):
        la, lb = df[f"level_{dim}_A"], df[f"level_{dim}_B"]
        expected = np.where(la == lb, "same", np.where(la < lb, "A", "B"))
        assert (df[dim] == expected).all()
        assert set(df[dim]) <= {"A", "B", "same"}
    assert df["prompt"].str.match(r"^a (red|green|blue|yellow) (circle|square|triangle) moving (left|right|up|down)$").all()
    # the split is held out: no video (or (prompt, video) item) in common
    te = pd.read_csv(test)
    train_videos = set(df.path_A) | set(df.path_B)
    assert not train_videos & (set(te.path_A) | set(te.path_B))
    train_hashes = set(_digest([tmp_path / "a" / p for p in train_videos]))
    assert not train_hashes & set(_digest([tmp_path / "a" / p for p in set(te.path_A) | set(te.path_B)]))
    table = read_pairs(train, tmp_path / "a", ("VQ", "MQ", "TA"))
    assert len(table) == 12 and table.sampling(0, "A") == {"fps": 8.0, "num_frames": 8}


def test_videos_decode_through_the_serving_pipeline(tmp_path):
    generate(tmp_path, n_train=2, n_test=1, seed=0)
    v = tmp_path / "videos" / "train_00000_A.mp4"
    meta = probe(v)
    assert (meta.width, meta.height, meta.total_frames, meta.fps) == (64, 64, 8, 8.0)
    dec = load_video(v, SamplingConfig(fps=None, num_frames=8, max_pixels=56 * 56, min_pixels=28 * 28))
    assert dec.frames.shape == (8, 3, 56, 56)


def test_quality_axes_change_what_they_say():
    scene = Scene("circle", "red", "left")
    clean = render(scene, Quality(0, 0, 0), np.random.default_rng(0))
    noisy = render(scene, Quality(2, 0, 0), np.random.default_rng(0))
    frozen = render(scene, Quality(0, 0, 0), np.random.default_rng(0))
    assert clean.shape == (8, 64, 64, 3) and clean.dtype == np.uint8
    assert np.array_equal(clean, frozen)  # same seed, same video
    assert np.abs(noisy.astype(int) - clean.astype(int)).mean() > 1  # degraded frames differ
    red = (clean[..., 0] > 180) & (clean[..., 1] < 80)
    xs = [np.nonzero(red[i])[1].mean() for i in range(8)]
    assert all(x1 < x0 for x0, x1 in zip(xs, xs[1:], strict=False))  # moving left
    wrong = render(scene, Quality(0, 0, 3), np.random.default_rng(0))
    assert not ((wrong[..., 0] > 180) & (wrong[..., 1] < 80)).any()  # colour changed (all attributes wrong)


def test_pairs_are_twins_that_differ_only_in_quality():
    scene = Scene("circle", "red", "left")

    def clip(q, kinds=("noise", "frozen"), other_rng=0):
        return render(scene, q, np.random.default_rng(other_rng), pair_rng=np.random.default_rng(7),
                      vq_kind=kinds[0], mq_kind=kinds[1])

    clean = clip(Quality(0, 0, 0))
    # the same quality gives the same clip whatever the clip's own generator
    assert np.array_equal(clean, clip(Quality(0, 0, 0), other_rng=1))
    # a visual degradation leaves the scene where it was: the noisy twin is the clean one plus noise
    noisy = clip(Quality(2, 0, 0)).astype(int)
    assert 10 < np.abs(noisy - clean).mean() < 60 and abs((noisy - clean).mean()) < 5
    # frozen motion (MQ level 2): every frame is the first frame of the clean twin
    frozen = clip(Quality(0, 2, 0))
    assert all(np.array_equal(frozen[i], clean[0]) for i in range(len(frozen)))
    # text alignment: level 2 keeps level 1's wrong attribute and adds a second one
    one, two = render(scene, Quality(0, 0, 1), np.random.default_rng(0), pair_rng=np.random.default_rng(3)), \
        render(scene, Quality(0, 0, 2), np.random.default_rng(0), pair_rng=np.random.default_rng(3))
    assert not np.array_equal(one, clean) and not np.array_equal(two, one)


def test_a_pair_shares_its_degradation_kinds(tmp_path):
    from training.synthetic import MQ_KINDS, VQ_KINDS

    train, _ = generate(tmp_path, n_train=40, n_test=2, seed=1)
    df = pd.read_csv(train)
    assert set(df.kind_VQ) <= set(VQ_KINDS) and set(df.kind_MQ) <= set(MQ_KINDS)
    assert df.kind_VQ.nunique() > 1 and df.kind_MQ.nunique() > 1  # drawn per pair, not fixed
    with pytest.raises(ValueError, match="vq_kind"):
        render(Scene("circle", "red", "left"), Quality(1, 0, 0), np.random.default_rng(0), vq_kind="sepia")
