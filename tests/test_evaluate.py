"""training.evaluate end to end: the real example videos, a tiny checkpoint, the xlsx/JSON/PNG reports, resume.

Every number in the reports is checked against :class:`model.scorer.VideoRewardScorer`
scoring each video directly, and every accuracy against :func:`training.metrics.pair_accuracy`
(whose definitions tests/test_metrics.py checks against the benchmark's worked examples).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.errors import InvalidInputError
from model.scorer import VideoRewardScorer
from training.evaluate import SCORES_NAME, evaluate_pairs, main
from training.metrics import pair_accuracy
from training.pairs import read_pairs

DIMS = ["VQ", "MQ", "TA", "Overall"]
P1 = "The camera remains still, a girl with braided hair approached the chair in the room and sat on it."
P2 = "The camera follows a young explorer through an abandoned urban building at night."
# RewardBench columns over the four example videos. Row 3 repeats row 1 reversed with './' paths (same videos);
# rows 4 and 5 score example_1_A and example_1_B under another prompt (two more items); row 5 has an invalid
# VQ label. Unique (video, prompt) items: 6.
ROWS = [
    ("videos/example_1_A.mp4", "videos/example_1_B.mp4", "m1", "m2", P1, "B", "B", "A", "B"),
    ("videos/example_2_A.mp4", "videos/example_2_B.mp4", "m1", "m2", P2, "same", "same", "A", "A"),
    ("./videos/example_1_B.mp4", "./videos/example_1_A.mp4", "m2", "m1", P1, "A", "same", "B", "same"),
    ("videos/example_1_A.mp4", "videos/example_2_B.mp4", "m1", "m2", P2, "A", "B", "same", "B"),
    ("videos/example_2_A.mp4", "videos/example_1_B.mp4", "m1", "m2", P2, "tie", "A", "B", "A"),
]
META = {"example_1_A": (24.0, 126), "example_1_B": (30.0, 152), "example_2_A": (24.0, 144), "example_2_B": (24.0, 128)}


def write_bench_csv(path: Path, *, labels: bool = True) -> Path:
    records = []
    for pa, pb, ma, mb, prompt, *lab in ROWS:
        rec = {"path_A": pa, "path_B": pb, "A_model": ma, "B_model": mb, "prompt": prompt}
        if labels:
            rec.update(zip(DIMS, lab, strict=True))
        fa, na = META[Path(pa).stem]
        fb, nb = META[Path(pb).stem]
        rec.update(fps_A=fa, num_frames_A=na, fps_B=fb, num_frames_B=nb)
        records.append(rec)
    pd.DataFrame(records).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def norm_scorer(tiny_norm_ckpt: Path) -> VideoRewardScorer:
    return VideoRewardScorer.from_pretrained(tiny_norm_ckpt)


@pytest.fixture(scope="module")
def direct(norm_scorer: VideoRewardScorer, fixtures_dir: Path) -> dict[tuple[str, str, bool], dict[str, float]]:
    """(video stem, prompt, normalised) → the scorer's own scores, one video per forward pass."""
    out = {}
    for stem in META:
        for prompt in (P1, P2):
            raw = norm_scorer.forward([norm_scorer.prepare(fixtures_dir / "videos" / f"{stem}.mp4", prompt)])
            for norm in (False, True):
                out[(stem, prompt, norm)] = norm_scorer.postprocess(raw, normalize=norm)[0]
    return out


def _numeric_cells(path: Path, columns: list[str]) -> None:
    """The given columns hold number cells (not text) in every row."""
    ws = openpyxl.load_workbook(path, read_only=True).active
    rows = ws.iter_rows(values_only=False)
    header = [c.value for c in next(rows)]
    idx = [header.index(c) for c in columns]
    for row in rows:
        for i in idx:
            value = row[i].value
            assert row[i].data_type == "n" and isinstance(value, (int, float)) and not isinstance(value, bool), (header[i], value)


@pytest.mark.parametrize("use_norm", [False, True])
def test_evaluate_end_to_end_matches_direct_scores(tmp_path, fixtures_dir, tiny_norm_ckpt, direct, use_norm, capsys):
    csv = write_bench_csv(tmp_path / "bench.csv")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_norm_ckpt), "--data-path", str(csv), "--data-folder", str(fixtures_dir),
            "--out", str(out), "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(argv + (["--use-norm"] if use_norm else [])) == 0
    printed = json.loads(capsys.readouterr().out)

    single = pd.read_excel(out / "reward_out_single.xlsx")
    assert len(single) == 6  # './' paths are the same file; the same file under another prompt is another item
    assert list(single.columns) == ["path", "model", "prompt", "fps", "num_frames", *(f"reward_{d}" for d in DIMS)]
    _numeric_cells(out / "reward_out_single.xlsx", ["fps", *(f"reward_{d}" for d in DIMS)])
    for row in single.itertuples():
        stem = Path(row.path).stem
        assert row.path == f"videos/{stem}.mp4" and (row.fps, row.num_frames) == META[stem]
        want = direct[(stem, row.prompt, use_norm)]
        for d in DIMS:
            assert getattr(row, f"reward_{d}") == pytest.approx(want[d], abs=1e-5), (stem, d)

    pairs = pd.read_excel(out / "reward_out_pair.xlsx", keep_default_na=False, na_values=[""])
    assert len(pairs) == len(ROWS)
    _numeric_cells(out / "reward_out_pair.xlsx", [f"{c}_{d}" for d in DIMS for c in ("margin",)]
                   + [f"reward_{d}_{s}" for d in DIMS for s in "AB"])
    summary = json.loads((out / "eval_accuracy.json").read_text())
    assert printed["VQ Accuracy"] == summary["VQ Accuracy"]
    for d in DIMS:
        a = np.array([direct[(Path(r[0]).stem, r[4], use_norm)][d] for r in ROWS])
        b = np.array([direct[(Path(r[1]).stem, r[4], use_norm)][d] for r in ROWS])
        np.testing.assert_allclose(pairs[f"reward_{d}_A"], a, atol=1e-5)
        np.testing.assert_allclose(pairs[f"reward_{d}_B"], b, atol=1e-5)
        np.testing.assert_allclose(pairs[f"margin_{d}"], a - b, atol=2e-5)
        assert list(pairs[f"pred_{d}"]) == ["A" if m > 0 else "B" for m in a - b]
        labels = read_pairs(csv, fixtures_dir, tuple(DIMS)).labels[d]
        acc = pair_accuracy(labels, a - b)
        got = summary[f"{d} Accuracy"]
        assert got["with_ties"] == pytest.approx(acc.with_ties) and got["without_ties"] == pytest.approx(acc.without_ties)
        assert got["tie_threshold"] == pytest.approx(acc.tie_threshold, abs=2e-5)
        assert (got["pairs"], got["ties"], got["invalid"]) == (acc.pairs, acc.ties, acc.invalid)
        assert summary["tie_thresholds"][d] == got["tie_threshold"]
        # the per-pair columns add up to the reported accuracies
        decided = pairs[f"correct_{d}"].dropna().astype(bool)
        assert decided.mean() == pytest.approx(got["without_ties"])
        assert pairs[f"correct_ties_{d}"].dropna().astype(bool).mean() == pytest.approx(got["with_ties"])
    assert summary["VQ Accuracy"]["invalid"] == 1 and summary["counts"]["invalid_labels"] == {"VQ": 1, "MQ": 0, "TA": 0, "Overall": 0}
    assert summary["counts"]["pairs"] == 5 and summary["counts"]["videos"] == 6 and summary["counts"]["ties"]["MQ"] == 2
    assert summary["settings"]["use_norm"] is use_norm
    assert (out / "eval_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_without_labels(tmp_path, fixtures_dir, norm_scorer, direct):
    csv = write_bench_csv(tmp_path / "unlabelled.csv", labels=False)
    table = read_pairs(csv, fixtures_dir, tuple(DIMS), require_labels=False)
    with pytest.raises(InvalidInputError, match="--task inference"):
        evaluate_pairs(norm_scorer, table, data_root=fixtures_dir, out_dir=tmp_path / "x", progress=False)
    out = tmp_path / "out"
    report = evaluate_pairs(norm_scorer, table, data_root=fixtures_dir, task="inference", out_dir=out, progress=False)
    assert not (out / "eval_accuracy.json").exists() and report.accuracy == {}
    assert (out / "eval_report.png").is_file()
    pairs = pd.read_excel(out / "reward_out_pair.xlsx")
    assert not any(c.startswith("correct") for c in pairs.columns)
    np.testing.assert_allclose(
        pairs["reward_Overall_A"], [direct[(Path(r[0]).stem, r[4], False)]["Overall"] for r in ROWS], atol=1e-5
    )


class CountingScorer(VideoRewardScorer):
    """The real scorer, counting forward passes; optionally interrupted (Ctrl-C) after some of them."""

    def __init__(self, *args, interrupt_after: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items_scored: list[int] = []
        self.interrupt_after = interrupt_after

    def forward(self, items):
        if self.interrupt_after is not None and len(self.items_scored) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.items_scored.append(len(items))
        return super().forward(items)


def test_interrupted_run_resumes_without_rescoring(tmp_path, fixtures_dir, tiny_norm_ckpt, tiny_ckpt, direct, caplog):
    loaded = load_checkpoint(tiny_norm_ckpt)
    csv = write_bench_csv(tmp_path / "bench.csv")
    table = read_pairs(csv, fixtures_dir, tuple(DIMS))
    out = tmp_path / "out"
    kw = dict(data_root=fixtures_dir, out_dir=out, batch_size=1, progress=False)

    first = CountingScorer(loaded, torch.device("cpu"), torch.float32, interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_pairs(first, table, workers=2, **kw)
    lines = (out / SCORES_NAME).read_text().splitlines()
    assert len(lines) == 1 + 2 and not (out / "reward_out_pair.xlsx").exists()
    with (out / SCORES_NAME).open("a") as f:
        f.write('{"key": "torn wri')  # killed in the middle of a line

    second = CountingScorer(loaded, torch.device("cpu"), torch.float32)
    report = evaluate_pairs(second, table, workers=0, **kw)
    assert sum(second.items_scored) == 6 - 2  # only what the first run did not finish
    assert "torn last line" in caplog.text
    assert report.summary["counts"]["videos_reused"] == 2 and report.summary["counts"]["videos_scored_now"] == 4
    for row in report.single.itertuples():
        assert row.reward_TA == pytest.approx(direct[(Path(row.path).stem, row.prompt, False)]["TA"], abs=1e-5)

    # a finished run is not rescored, also when only the normalisation changes
    third = CountingScorer(loaded, torch.device("cpu"), torch.float32)
    normed = evaluate_pairs(third, table, use_norm=True, **kw)
    assert third.items_scored == []
    for row in normed.single.itertuples():
        assert row.reward_MQ == pytest.approx(direct[(Path(row.path).stem, row.prompt, True)]["MQ"], abs=1e-5)

    # scores from another checkpoint (here: other reward config) are never mixed in
    with pytest.raises(InvalidInputError, match="different checkpoint"):
        evaluate_pairs(VideoRewardScorer.from_pretrained(tiny_ckpt), table, **kw)


def test_unreadable_video_is_recorded_and_missing_files_fail_early(tmp_path, fixtures_dir, norm_scorer):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    for stem in ("example_1_A", "example_2_A"):
        (root / "videos" / f"{stem}.mp4").symlink_to(fixtures_dir / "videos" / f"{stem}.mp4")
    (root / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    pd.DataFrame(
        [
            {"path_A": "videos/example_1_A.mp4", "path_B": "videos/broken.mp4", "prompt": P1, "VQ": "A", "MQ": "A", "TA": "B"},
            {"path_A": "videos/example_2_A.mp4", "path_B": "videos/example_1_A.mp4", "prompt": P1, "VQ": "B", "MQ": "A", "TA": "A"},
        ]
    ).to_csv(tmp_path / "p.csv", index=False)
    table = read_pairs(tmp_path / "p.csv", root, tuple(DIMS), require_labels=False)
    report = evaluate_pairs(norm_scorer, table, data_root=root, out_dir=tmp_path / "out", progress=False)
    counts = report.summary["counts"]
    assert counts["videos_failed"] == 1 and counts["pairs_without_score"] == 1
    assert report.summary["VQ Accuracy"]["pairs"] == 1 and report.summary["VQ Accuracy"]["invalid"] == 1
    assert "Overall Accuracy" not in report.summary  # no Overall column in this CSV
    single = pd.read_excel(tmp_path / "out" / "reward_out_single.xlsx")
    broken = single[single["path"] == "videos/broken.mp4"].iloc[0]
    assert math.isnan(broken["reward_VQ"]) and broken["error"].startswith("video_")

    (root / "videos" / "example_2_A.mp4").unlink()
    table = read_pairs(tmp_path / "p.csv", root, tuple(DIMS), require_labels=False)
    with pytest.raises(InvalidInputError, match=r"1 video file\(s\) not found.*example_2_A\.mp4.*--data-folder"):
        evaluate_pairs(norm_scorer, table, data_root=root, out_dir=tmp_path / "out2", progress=False)
