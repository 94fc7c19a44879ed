"""The demo model end to end: synthetic data → training → export → held-out evaluation → HTTP service.

One reduced build (the ``--quick`` preset, a few minutes on 2 CPU cores) is shared by the tests.
"""

from __future__ import annotations

import json
import logging

import pytest

from model.checkpoint import DEMO_CARD_NAME
from model.scorer import VideoRewardScorer
from service.app import create_app
from service.client import VideoRewardClient
from service.settings import Settings
from tests.service_helpers import ServerThread
from training.demo import CLIP_FPS, PRESETS, build, is_built, main, smoke, twins
from training.synthetic import DIMS, write_frames

# The bar: 0.62 without ties on every dimension. Chance is 0.5 (the margin's sign is a coin toss for a
# model that learnt nothing). The quick build has 200 held-out pairs, ~130 of them decided per
# dimension, so the standard error of an accuracy near 0.5 is 0.044 and 0.62 is 2.7 standard errors
# above chance (one-sided p < 0.005): a model that did not learn a dimension fails. The bar is not
# higher because the quick build is short: TA (matching prompt words to what the clip shows) is the
# last dimension to emerge and is still rising at 600 steps (README, "Demo model", has the figures).
ABOVE_CHANCE = 0.62


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build(tmp_path_factory.mktemp("demo"), preset=PRESETS["quick"], seed=0)


def test_build_learns_every_dimension_on_held_out_pairs(demo):
    assert is_built(demo.out)
    report = json.loads((demo.eval_dir / "eval_accuracy.json").read_text())
    for dim in DIMS:
        acc = report[f"{dim} Accuracy"]
        assert acc["without_ties"] >= ABOVE_CHANCE, (dim, acc)
        assert acc["pairs"] - acc["ties"] >= 50, (dim, acc)  # enough decided pairs for the bar to mean something
        assert acc["without_ties"] == pytest.approx(demo.accuracy[dim].without_ties)
    for name in ("reward_out_pair.xlsx", "reward_out_single.xlsx", "eval_report.png"):
        assert (demo.eval_dir / name).is_file()
    # the accuracy table is in the checkpoint, next to the weights it describes
    card = json.loads((demo.checkpoint / DEMO_CARD_NAME).read_text())
    assert card["demo"] is True and "NOT VideoReward" in card["note"]
    assert card["heldout_accuracy"]["TA"]["without_ties"] == pytest.approx(demo.accuracy["TA"].without_ties)
    assert "| TA |" in (demo.checkpoint / "DEMO.md").read_text()
    # the checkpoint's own sampling: the clip's 8 frames at 56x56
    sampling = VideoRewardScorer.from_pretrained(demo.checkpoint).reward_config.sampling
    assert (sampling.num_frames, sampling.max_pixels, sampling.min_pixels) == (8, 56 * 56, 56 * 56)


def test_service_prefers_clean_clips_and_says_it_is_the_demo(demo, tmp_path, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="service.app"):
        app = create_app(Settings(checkpoint=demo.checkpoint, max_wait_ms=1))
        with ServerThread(app) as server:
            with VideoRewardClient(server.url) as client:
                info = client.model()
                assert info["demo"] is True and "NOT VideoReward" in info["note"]
                noise = twins(seed=0)[0]
                assert noise.dim == "VQ"
                clean = write_frames(tmp_path / "clean.mp4", noise.clean, CLIP_FPS)
                noisy = write_frames(tmp_path / "noisy.mp4", noise.degraded, CLIP_FPS)
                res = client.compare([(clean, noisy, noise.prompt), (noisy, clean, noise.prompt)])["results"]
                assert res[0]["dims"]["VQ"]["winner"] == "A" and res[0]["dims"]["VQ"]["margin"] > 0
                assert res[1]["dims"]["VQ"]["winner"] == "B"  # the order of the pair does not matter
            # the smoke command against the same server: clean beats degraded on all three dimensions
            assert smoke(server.url) == 0
    assert "ok, the clean clip wins on every dimension" in capsys.readouterr().out
    assert any("DEMO MODEL" in r.getMessage() and "NOT VideoReward" in r.getMessage() for r in caplog.records)


def test_real_checkpoints_are_not_marked_demo(tiny_ckpt):
    with ServerThread(create_app(Settings(checkpoint=tiny_ckpt))) as server, VideoRewardClient(server.url) as client:
        info = client.model()
    assert info["demo"] is False and info["note"] is None


def test_smoke_fails_cleanly_without_a_server(capsys):
    from tests.service_helpers import free_port

    assert main(["smoke", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "0.5"]) == 2


def test_serve_demo_script_serves_the_built_demo_and_smoke_passes(demo, tmp_path):
    """The README's main command after the install: scripts/serve-demo.sh reuses a finished build and serves it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.service_helpers import free_port

    repo = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable, "VIDEOREWARD_DEMO_DIR": str(demo.out), "VIDEOREWARD_PORT": str(port)}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(repo / "scripts/serve-demo.sh"), "--log-level", "warning"],
                                cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        smoke_run = subprocess.run(["bash", str(repo / "scripts/smoke.sh"), f"http://127.0.0.1:{port}"], cwd=repo,
                                   env=env, capture_output=True, text=True, timeout=180)
        assert smoke_run.returncode == 0, smoke_run.stdout + smoke_run.stderr + log.read_text()
        assert "the synthetic DEMO model" in smoke_run.stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0  # SIGTERM drains and exits cleanly
    text = log.read_text()
    assert "using the demo model built earlier" in text  # no rebuild
    assert "compare --url" in text and "DEMO MODEL" in text  # copy-paste examples, and the warning


def test_service_without_a_checkpoint_points_to_the_demo(monkeypatch, capsys):
    from service.__main__ import main as service_main

    monkeypatch.delenv("VIDEOREWARD_CHECKPOINT", raising=False)
    assert service_main([]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint DIR" in err and "scripts/serve-demo.sh" in err


def test_a_damaged_demo_card_still_marks_the_demo(tmp_path):
    from model.checkpoint import read_demo_card

    assert read_demo_card(tmp_path) is None  # real weights: no card
    (tmp_path / DEMO_CARD_NAME).write_text('{"demo": false}')
    assert read_demo_card(tmp_path) is None
    (tmp_path / DEMO_CARD_NAME).write_text("{not json")
    card = read_demo_card(tmp_path)
    assert card is not None and card["demo"] is True  # never lets a demo pass for real weights
