"""Bulk scoring on Ray Data (training.bulk): a local Ray with 2 scoring actors, against the library's scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.scorer import ScoreRequest, VideoRewardScorer
from tests.conftest import ROOT
from tests.media import write_video
from training import bulk

PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four good videos (two codecs, one per-row num_frames override), a corrupt one, a missing one, an empty prompt."""
    root = tmp_path_factory.mktemp("bulk")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", num_frames=16, width=64, height=48, fps=8)
    write_video(videos / "b.mp4", num_frames=24, width=48, height=64, fps=12)
    write_video(videos / "c.webm", num_frames=20, width=64, height=64, fps=10, codec="libvpx-vp9")
    (videos / "corrupt.mp4").write_text("this is not a video\n" * 40)
    lines = [
        "id,video,prompt,num_frames,split",
        f"100,videos/a.mp4,{PROMPT},,train",
        "101,videos/b.mp4,a blue square,,train",
        f"102,videos/c.webm,{PROMPT},,test",
        "103,videos/corrupt.mp4,a prompt,,test",
        f"104,{videos / 'b.mp4'},NA,4,test",  # absolute path; "NA" is a prompt, not a missing value
        "105,videos/missing.mp4,a prompt,,test",
        "106,videos/a.mp4,,,test",
    ]
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED_ERRORS = {103: "video_unreadable", 105: "invalid_input", 106: "invalid_input"}
GOOD = {100: ("a.mp4", PROMPT, None), 101: ("b.mp4", "a blue square", None), 102: ("c.webm", PROMPT, None), 104: ("b.mp4", "NA", 4)}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_bulk_scores_equal_the_library_and_keep_every_row(local_ray, tiny_ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "scores.parquet"
    # The CLI, as a separate driver joining the running Ray by address: as on a cluster, and the
    # workers must import the pipeline's functions from training.bulk (not from the CLI's __main__).
    cmd = [
        sys.executable, "-m", "training.bulk", "--checkpoint", str(tiny_ckpt), "--manifest", str(manifest),
        "--out", str(out), "--address", local_ray.get_runtime_context().gcs_address,
        "--actors", "2", "--min-actors", "2", "--batch-size", "2", "--prepare-batch-size", "2",
        "--actor-cpus", "0.5", "--prepare-cpus", "0.5",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["rows"] == 7
    table = pq.read_table(out)
    # the manifest's columns, unchanged and in order, then the scores and the status columns
    assert table.column_names == ["id", "video", "prompt", "num_frames", "split", "VQ", "MQ", "TA", "Overall",
                                  "error_code", "error", "sampled_frames", "num_tokens"]
    assert table["id"].type == pa.int64() and table["id"].to_pylist() == [100, 101, 102, 103, 104, 105, 106]
    rows = {r["id"]: r for r in table.to_pylist()}

    library = VideoRewardScorer.from_pretrained(tiny_ckpt)
    videos = manifest.parent / "videos"
    requests = [ScoreRequest(videos / name, prompt, num_frames=nf) for name, prompt, nf in GOOD.values()]
    expected = dict(zip(GOOD, library.score(requests), strict=True))
    for key, want in expected.items():
        row = rows[key]
        assert row["error_code"] is None and row["error"] is None, row
        for dim in ("VQ", "MQ", "TA", "Overall"):
            assert row[dim] == pytest.approx(want[dim], abs=1e-5), (key, dim)
    assert rows[104]["sampled_frames"] == 4, "the per-row num_frames override was not applied"

    for key, code in EXPECTED_ERRORS.items():
        row = rows[key]
        assert row["error_code"] == code and row["error"], row
        assert row["VQ"] is None and row["Overall"] is None and row["num_tokens"] is None
    assert "does not exist" in rows[105]["error"] and "prompt is empty" in rows[106]["error"]

    meta = json.loads(out.with_suffix(".bulk.json").read_text())
    assert meta["summary"]["rows"] == 7 and meta["summary"]["scored"] == 4
    assert meta["summary"]["errors"] == {"video_unreadable": 1, "invalid_input": 2}
    assert meta["config"]["max_actors"] == 2 and meta["config"]["checkpoint"] == str(tiny_ckpt)


def test_manifest_parquet_reads_like_csv_and_bad_manifests_say_what_is_wrong(manifest: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the ray extra (pip install '.[ray]')")
    csv = bulk.read_manifest(manifest)
    parquet = tmp_path / "m.parquet"
    pq.write_table(csv, parquet)
    assert bulk.read_manifest(parquet).equals(csv)
    work = bulk._work_table(csv)
    assert work.column_names == ["row", "video", "prompt", "fps", "num_frames", "max_pixels"]
    assert work["prompt"][4].as_py() == "NA"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.mp4,hello\n")
    with pytest.raises(bulk.BulkError, match=r"no column \['video', 'prompt'\].*Required: video, prompt"):
        bulk.read_manifest(bad)
    bad.write_text("video,prompt,fps\na.mp4,hello,fast\n")
    with pytest.raises(bulk.BulkError, match="'fps' must be numeric"):
        bulk.read_manifest(bad)


def test_bulk_config_errors_are_actionable(tiny_ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    def cfg(**kw) -> bulk.BulkConfig:
        base = dict(checkpoint=str(tiny_ckpt), manifest=str(manifest), out=str(tmp_path / "o.parquet"))
        return bulk.BulkConfig(**{**base, **kw})

    cfg().validate()
    with pytest.raises(bulk.BulkError, match="python -m model.tiny"):
        cfg(checkpoint=str(tmp_path / "nope")).validate()
    with pytest.raises(bulk.BulkError, match="must end in .parquet"):
        cfg(out=str(tmp_path / "o.csv")).validate()
    with pytest.raises(bulk.BulkError, match="cpu, cuda or npu"):
        cfg(device="cuda:1").validate()
    with pytest.raises(bulk.BulkError, match="min-actors"):
        cfg(min_actors=3, max_actors=2).validate()


def test_token_groups_fit_the_budget_and_keep_every_item() -> None:
    lengths = [100, 900, 300, 300, 50, 1000]
    groups = bulk._token_groups(lengths, max_tokens=1200)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or max(lengths[i] for i in g) * len(g) <= 1200
    assert bulk._token_groups([5000], max_tokens=1000) == [[0]]  # a long item still runs, alone


def test_missing_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, manifest: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(bulk.BulkError, match=r"pip install '\.\[ray\]'"):
        bulk.require_ray()
    rc = bulk.main(["--checkpoint", str(tiny_ckpt), "--manifest", str(manifest), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert error["code"] == "bulk_invalid" and "pip install '.[ray]'" in error["message"]
    assert not (tmp_path / "o.parquet").exists()
