"""Shared fixtures: the real example videos, synthetic videos and tiny checkpoints made on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.reward_config import VIDEOREWARD_NORMALIZATION, RewardConfig
from model.tiny import write_tiny
from model.video import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VIDEOALIGN_FIXTURES", ROOT.parent / "shared" / "fixtures" / "videoalign-examples"))
TINY_SAMPLING = SamplingConfig(max_pixels=56 * 56 * 4, min_pixels=28 * 28 * 4)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "videos").is_dir():
        pytest.skip(f"real example videos not found at {FIXTURES} (set VIDEOALIGN_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_videos(fixtures_dir: Path) -> list[Path]:
    return sorted((fixtures_dir / "videos").glob("*.mp4"))


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Videos of different lengths, sizes, codecs and orientations."""
    from tests.media import write_video

    d = tmp_path_factory.mktemp("synthetic")
    return {
        "landscape_mp4": write_video(d / "landscape.mp4", num_frames=30, width=160, height=96, fps=24),
        "portrait_webm": write_video(d / "portrait.webm", num_frames=17, width=72, height=128, fps=12, codec="libvpx-vp9"),
        "odd_mkv": write_video(d / "odd.mkv", num_frames=9, width=101, height=67, fps=10, codec="libvpx-vp9"),
        "long_mov": write_video(d / "long.mov", num_frames=75, width=128, height=128, fps=30),
    }


def make_checkpoint(root: Path, name: str, **reward_kwargs) -> Path:
    rc = RewardConfig(sampling=TINY_SAMPLING, **reward_kwargs)
    return write_tiny(root / name, seed=0, reward_config=rc)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """special pooling, output_dim 1, no normalisation."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny")


@pytest.fixture(scope="session")
def tiny_norm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As tiny_ckpt (same seed, same weights) but with the published normalisation statistics."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny_norm", normalization=VIDEOREWARD_NORMALIZATION)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Qwen2-VL directory laid out like Qwen2-VL-2B-Instruct (old key names, no reward tokens)."""
    from model.tiny import write_base

    return write_base(tmp_path_factory.mktemp("base") / "base", seed=0)
