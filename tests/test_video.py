"""Tests for model/video.py: sampling arithmetic, resize sizes, decoding and errors."""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from model import video as vid
from model.errors import (
    InvalidInputError,
    InvalidSamplingError,
    NoVideoStreamError,
    TooFewFramesError,
    VideoDecodeError,
    VideoEmptyError,
    VideoError,
    VideoUnreadableError,
)
from model.video import SamplingConfig

FIXTURES = Path(__file__).parents[1].parent / "shared/fixtures/videoalign-examples"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "videos").is_dir(),
    reason=f"real example videos not found at {FIXTURES} (shared fixtures folder is absent)",
)

FPS_MODE = SamplingConfig()
MIN_PX, MAX_PX = 100352, 200704


def num_frames_cfg(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(fps=None, num_frames=n, **kw)


# ---------------------------------------------------------------------------
# Frame counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "video_fps", "fps", "expected"),
    [
        (126, 24, 2.0, 10),  # 10.5 -> round(5.25)=5 -> 10
        (152, 30, 2.0, 10),  # 10.13 -> 10
        (144, 24, 2.0, 12),  # exactly 12
        (128, 24, 2.0, 10),  # 10.67 -> round(5.33)=5 -> 10
        (10, 24, 2.0, 4),  # 0.83 -> raised to min_frames 4
        (5, 24, 2.0, 4),  # min 4, max floor_even(5)=4
        (4, 24, 2.0, 4),
        (3, 24, 2.0, 2),  # max_frames = floor_even(3) = 2 beats min_frames 4
        (2, 24, 2.0, 2),
        (100, 1, 2.0, 100),  # 200 capped at floor_even(100)
        (101, 1, 2.0, 100),  # 202 capped at floor_even(101) = 100
        (100_000, 30, 2.0, 768),  # 6666.7 capped at 768
        (1000, 24, 2.0, 84),  # 83.33 -> round(41.67)=42 -> 84
        (90, 10, 1.0, 8),  # 9 -> round(4.5) = 4 (ties to even) -> 8
        (110, 10, 1.0, 12),  # 11 -> round(5.5) = 6 -> 12
        (30, 24, 8.0, 10),
        (24, 24, 0.5, 4),
    ],
)
def test_num_sampled_frames_fps_mode(total, video_fps, fps, expected):
    assert vid.num_sampled_frames(total, video_fps, fps=fps) == expected


@pytest.mark.parametrize(
    ("total", "num_frames", "expected"),
    [
        (100, 8, 8),
        (100, 5, 4),  # round(2.5) = 2 (banker's)
        (100, 7, 8),  # round(3.5) = 4
        (100, 9, 8),  # round(4.5) = 4
        (100, 3, 4),  # round(1.5) = 2 -> 4
        (100, 11, 12),  # round(5.5) = 6 -> 12
        (100, 2, 2),
        (5, 8, 5),  # more than the video holds -> all frames (may be odd)
        (3, 16, 3),
        (2, 2, 2),
    ],
)
def test_num_sampled_frames_num_frames_mode(total, num_frames, expected):
    assert vid.num_sampled_frames(total, 24.0, num_frames=num_frames) == expected


@pytest.mark.parametrize(
    ("total", "kwargs"),
    [
        (1, {"fps": 2.0}),
        (0, {"fps": 2.0}),
        (1, {"num_frames": 2}),
        (0, {"num_frames": 8}),
    ],
)
def test_too_few_frames(total, kwargs):
    with pytest.raises(TooFewFramesError) as info:
        vid.num_sampled_frames(total, 24.0, **kwargs)
    assert info.value.code == "video_too_few_frames"
    assert f"{total} frame(s)" in info.value.message
    assert "at least 2" in info.value.message


def test_num_sampled_frames_needs_exactly_one_mode():
    with pytest.raises(InvalidSamplingError):
        vid.num_sampled_frames(100, 24.0)
    with pytest.raises(InvalidSamplingError):
        vid.num_sampled_frames(100, 24.0, fps=2.0, num_frames=8)


# ---------------------------------------------------------------------------
# Indices
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "video_fps", "cfg", "expected"),
    [
        (10, 24, num_frames_cfg(4), [0, 3, 6, 9]),  # linspace 0,3,6,9
        (5, 24, num_frames_cfg(4), [0, 1, 3, 4]),  # 0, 1.33, 2.67, 4
        (5, 24, num_frames_cfg(8), [0, 1, 2, 3, 4]),  # capped at 5 -> every frame
        (30, 24, FPS_MODE, [0, 10, 19, 29]),  # n=4: 0, 9.67, 19.33, 29
        (3, 24, FPS_MODE, [0, 2]),
        # 126 frames at 24 fps, fps=2 -> n=10: 0, 13.89, 27.78, 41.67, 55.56, 69.44, ...
        (126, 24, FPS_MODE, [0, 14, 28, 42, 56, 69, 83, 97, 111, 125]),
        (152, 30, FPS_MODE, [0, 17, 34, 50, 67, 84, 101, 117, 134, 151]),
        (144, 24, FPS_MODE, [0, 13, 26, 39, 52, 65, 78, 91, 104, 117, 130, 143]),
        (128, 24, FPS_MODE, [0, 14, 28, 42, 56, 71, 85, 99, 113, 127]),
    ],
)
def test_uniform_indices(total, video_fps, cfg, expected):
    assert vid.sample_indices(total, video_fps, cfg) == expected


MULTI = SamplingConfig(sample_type="multi_pts")


def test_multi_pts_by_hand():
    # 24 frames at 24 fps: m = 24*8//24 = 8 grid points linspace(0, 23, 8)
    # = 0, 3.29, 6.57, 9.86, 13.14, 16.43, 19.71, 23 -> [0, 3, 7, 10, 13, 16, 20, 23];
    # anchors linspace(3, 4, 4) = 3, 3.33, 3.67, 4 -> [3, 3, 4, 4]; windows grid[a-3:a+3].
    first, second = [0, 3, 7, 10, 13, 16], [3, 7, 10, 13, 16, 20]
    assert vid.sample_indices(24, 24.0, MULTI) == first * 2 + second * 2
    # 21 frames: m = 7, grid [0, 3, 7, 10, 13, 17, 20]; anchors all 3 -> grid[0:6] four times.
    assert vid.sample_indices(21, 24.0, MULTI) == [0, 3, 7, 10, 13, 17] * 4


def _published_multi_pts(total_frames: int, video_fps: float) -> list[int]:
    """The published VideoAlign multi_pts loop, list-based, for cross-checking."""
    frames_each_pts, num_pts, fps = 6, 4, 8
    nframes = int(total_frames * fps // video_fps)
    frames_idx = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    start_pt = int(frames_each_pts // 2)
    end_pt = int(nframes - frames_each_pts // 2 - 1)
    pts = torch.linspace(start_pt, end_pt, num_pts).round().long().tolist()
    idx: list[int] = []
    for pt in pts:
        idx.extend(frames_idx[pt - frames_each_pts // 2 : pt + frames_each_pts // 2])
    return idx


@pytest.mark.parametrize(("total", "video_fps"), [(126, 24), (152, 30), (144, 24), (128, 24), (21, 24), (1000, 29.97)])
def test_multi_pts_matches_published_loop(total, video_fps):
    got = vid.sample_indices(total, video_fps, MULTI)
    assert got == _published_multi_pts(total, video_fps)
    assert len(got) == 24
    if total >= 100:  # long videos: the 4 windows do not overlap
        assert got == sorted(got)


def test_multi_pts_fixture_values():
    assert vid.sample_indices(126, 24.0, MULTI) == [
        0, 3, 6, 9, 12, 15, 37, 40, 43, 46, 49, 52, 70, 73, 76, 79, 82, 85, 107, 110, 113, 116, 119, 122,
    ]  # fmt: skip


@pytest.mark.parametrize("total", [0, 1, 18, 20])  # 20*8//24 = 6 < 7
def test_multi_pts_too_short(total):
    with pytest.raises(TooFewFramesError, match="multi_pts"):
        vid.sample_indices(total, 24.0, MULTI)


# ---------------------------------------------------------------------------
# SamplingConfig
# ---------------------------------------------------------------------------
def test_sampling_defaults():
    cfg = SamplingConfig()
    assert (cfg.fps, cfg.num_frames, cfg.max_pixels, cfg.min_pixels, cfg.sample_type) == (
        2.0,
        None,
        448 * 448,
        128 * 28 * 28,
        "uniform",
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 8},  # fps default still set -> both
        {"fps": None},
        {"fps": 0},
        {"fps": -1.0},
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"fps": True},
        {"fps": "2"},
        {"fps": None, "num_frames": 1},
        {"fps": None, "num_frames": 2.5},
        {"min_pixels": 783},
        {"max_pixels": 100000},  # below default min_pixels
        {"sample_type": "random"},
    ],
)
def test_sampling_config_rejects(kwargs):
    with pytest.raises(InvalidSamplingError) as info:
        SamplingConfig(**kwargs)
    assert info.value.code == "invalid_sampling"


def test_sampling_config_accepts_edges():
    assert SamplingConfig(min_pixels=784, max_pixels=784).max_pixels == 784
    assert SamplingConfig(fps=None, num_frames=8.0).num_frames == 8
    assert isinstance(SamplingConfig(fps=1).fps, float)


def test_with_overrides():
    base = SamplingConfig()
    nf = base.with_overrides(num_frames=16)
    assert (nf.fps, nf.num_frames) == (None, 16)
    back = nf.with_overrides(fps=1.0)
    assert (back.fps, back.num_frames) == (1.0, None)
    px = base.with_overrides(max_pixels=300000, min_pixels=50000)
    assert (px.max_pixels, px.min_pixels, px.fps) == (300000, 50000, 2.0)
    assert base.with_overrides() == base
    with pytest.raises(InvalidSamplingError, match="not both"):
        base.with_overrides(fps=1.0, num_frames=8)
    with pytest.raises(InvalidSamplingError, match="max_pixels"):
        base.with_overrides(max_pixels=1000)
    multi = SamplingConfig(sample_type="multi_pts").with_overrides(num_frames=8)
    assert multi.sample_type == "multi_pts"


def test_to_from_dict():
    cfg = SamplingConfig(fps=None, num_frames=12, max_pixels=300000, sample_type="multi_pts")
    d = cfg.to_dict()
    assert d == {"fps": None, "num_frames": 12, "max_pixels": 300000, "min_pixels": 100352, "sample_type": "multi_pts"}
    assert SamplingConfig.from_dict(d) == cfg
    assert SamplingConfig.from_dict({}) == SamplingConfig()
    assert SamplingConfig.from_dict({"num_frames": 8}) == SamplingConfig(fps=None, num_frames=8)
    assert SamplingConfig.from_dict({"fps": None, "num_frames": None, "max_pixels": None}) == SamplingConfig()
    assert SamplingConfig.from_dict({"fps": 1}).fps == 1.0
    with pytest.raises(InvalidSamplingError, match="unknown sampling option"):
        SamplingConfig.from_dict({"fps": 2.0, "frames": 8})
    with pytest.raises(InvalidSamplingError):
        SamplingConfig.from_dict({"fps": 2.0, "num_frames": 8})
    with pytest.raises(InvalidSamplingError):
        SamplingConfig.from_dict([("fps", 2.0)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Resize sizes
# ---------------------------------------------------------------------------
# (width, height, fps, frames, (resized_h, resized_w)) worked by hand for the defaults
# min_pixels=100352, max_pixels=200704, factor 28:
# 1360x752: rounded 756x1372 > max -> beta = sqrt(752*1360/200704) = 2.25736;
#           752/beta/28 = 11.90 -> 11*28 = 308; 1360/beta/28 = 21.52 -> 21*28 = 588
# 1280x720: beta = sqrt(921600/200704) = 960/448 = 15/7; 720*7/15/28 = 12.0 -> 336;
#           1280*7/15/28 = 21.33 -> 588
# 672x384:  rounded 392x672 = 263424 > max -> beta = sqrt(258048/200704) = 1.13389;
#           384/beta/28 = 12.09 -> 336; 672/beta/28 = 21.17 -> 588
# 1280x768: beta = sqrt(983040/200704) = 2.21313; 768/beta/28 = 12.39 -> 336;
#           1280/beta/28 = 20.66 -> 560
FIXTURE_VIDEOS = {
    "example_1_A.mp4": (1360, 752, 24.0, 126, (308, 588)),
    "example_1_B.mp4": (1280, 720, 30.0, 152, (336, 588)),
    "example_2_A.mp4": (672, 384, 24.0, 144, (336, 588)),
    "example_2_B.mp4": (1280, 768, 24.0, 128, (336, 560)),
}


@pytest.mark.parametrize(("name", "info"), sorted(FIXTURE_VIDEOS.items()))
def test_resized_hw_fixture_sizes(name, info):
    width, height, _, _, expected = info
    assert vid.resized_hw(height, width, min_pixels=MIN_PX, max_pixels=MAX_PX) == expected


def test_resized_hw_by_hand():
    # 1280x720 beta worked out independently of smart_resize
    beta = math.sqrt(1280 * 720 / MAX_PX)
    assert (math.floor(720 / beta / 28) * 28, math.floor(1280 / beta / 28) * 28) == (336, 588)
    # Upscale: 64x48 rounds to 56x56 = 3136 < min -> beta = sqrt(100352/3072) = 5.7155;
    # 48*beta/28 = 9.80 -> ceil 10 -> 280; 64*beta/28 = 13.06 -> ceil 14 -> 392
    assert vid.resized_hw(48, 64, min_pixels=MIN_PX, max_pixels=MAX_PX) == (280, 392)
    # Portrait 360x640 (w x h): rounded 364x644 = 234416 > max -> beta = sqrt(230400/200704) = 1.07143;
    # 640/beta/28 = 21.33 -> 588; 360/beta/28 = 12.0 -> 336
    assert vid.resized_hw(640, 360, min_pixels=MIN_PX, max_pixels=MAX_PX) == (588, 336)
    # In range: 448x336 rounds to 448x336 (16x12 patches) = 150528 -> unchanged
    assert vid.resized_hw(336, 448, min_pixels=MIN_PX, max_pixels=MAX_PX) == (336, 448)
    # Rounding to the nearest multiple: 450x330 -> 448x336
    assert vid.resized_hw(330, 450, min_pixels=MIN_PX, max_pixels=MAX_PX) == (336, 448)


def test_resized_hw_errors():
    with pytest.raises(VideoError, match="aspect ratio"):
        vid.resized_hw(10, 2500, min_pixels=MIN_PX, max_pixels=MAX_PX)
    with pytest.raises(VideoError):
        vid.resized_hw(0, 100, min_pixels=MIN_PX, max_pixels=MAX_PX)
    with pytest.raises(InvalidSamplingError):
        vid.resized_hw(100, 100, min_pixels=MAX_PX, max_pixels=MIN_PX)


def test_resize_frames():
    frames = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert vid.resize_frames(frames, 48, 64) is frames
    out = vid.resize_frames(frames, 56, 84)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 56, 84)
    ref = tvf.resize(frames, [56, 84], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(out, ref)


# ---------------------------------------------------------------------------
# Real example videos
# ---------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize(("name", "info"), sorted(FIXTURE_VIDEOS.items()))
def test_fixture_probe_and_load(name, info):
    width, height, fps, frames, (rh, rw) = info
    path = FIXTURES / "videos" / name
    meta = vid.probe(path)
    assert (meta.width, meta.height, meta.fps, meta.total_frames) == (width, height, fps, frames)
    assert meta.frame_count_source == "container"
    assert meta.codec == "h264"
    assert "mp4" in meta.container
    assert meta.duration == pytest.approx(frames / fps, abs=0.1)

    decoded = vid.load_video(path, FPS_MODE, metadata=meta)
    n = vid.num_sampled_frames(frames, fps, fps=2.0)
    assert decoded.frames.shape == (n, 3, rh, rw)
    assert decoded.frames.dtype == torch.uint8
    assert list(decoded.indices) == vid.sample_indices(frames, fps, FPS_MODE)
    assert decoded.metadata == meta


@needs_fixtures
def test_fixture_load_matches_decode_then_resize():
    path = FIXTURES / "videos" / "example_2_A.mp4"
    cfg = num_frames_cfg(4)
    decoded = vid.load_video(str(path), cfg)
    raw = vid.decode_frames(path, list(decoded.indices))
    assert raw.shape == (4, 3, 384, 672)
    assert torch.equal(decoded.frames, vid.resize_frames(raw, 336, 588))
    multi = vid.load_video(path, SamplingConfig(sample_type="multi_pts"))
    assert multi.frames.shape == (24, 3, 336, 588)


# ---------------------------------------------------------------------------
# Synthetic videos
# ---------------------------------------------------------------------------
SYNTH = {
    # name: (suffix, codec, pix_fmt, width, height, count source)
    "h264_mp4": (".mp4", "libx264", "yuv420p", 64, 48, "container"),
    "h264_mov": (".mov", "libx264", "yuv420p", 64, 48, "container"),
    "h264_mkv": (".mkv", "libx264", "yuv420p", 64, 48, "demux"),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p", 64, 48, "demux"),
    "vp8_webm": (".webm", "libvpx", "yuv420p", 64, 48, "demux"),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p", 64, 48, "container"),
    "odd_h264_444_mp4": (".mp4", "libx264", "yuv444p", 65, 49, "container"),
    "odd_vp9_webm": (".webm", "libvpx-vp9", "yuv420p", 67, 37, "demux"),
    "portrait_h264_mp4": (".mp4", "libx264", "yuv420p", 48, 80, "container"),
}
SYNTH_FRAMES = 30


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def synth(synth_dir) -> dict[str, Path]:
    out = {}
    for name, (suffix, codec, pix_fmt, w, h, _) in SYNTH.items():
        out[name] = media.write_video(
            synth_dir / f"{name}{suffix}", num_frames=SYNTH_FRAMES, width=w, height=h, codec=codec, pix_fmt=pix_fmt
        )
    return out


@pytest.fixture(scope="module")
def mp4(synth) -> Path:
    return synth["h264_mp4"]


def indices_of(frames: torch.Tensor) -> list[int]:
    return [media.frame_index(f) for f in frames]


def test_media_pattern_round_trip():
    for i in (0, 1, 2, 29, 1000, 4095):
        assert media.frame_index(media.make_frame(i, 65, 49)) == i


@pytest.mark.parametrize("name", sorted(SYNTH))
def test_synthetic_formats(synth, name):
    _, _, _, w, h, count_source = SYNTH[name]
    path = synth[name]
    meta = vid.probe(path)
    assert (meta.width, meta.height, meta.total_frames, meta.fps) == (w, h, SYNTH_FRAMES, 24.0)
    assert meta.frame_count_source == count_source

    every = vid.decode_frames(path, list(range(SYNTH_FRAMES)))
    assert every.shape == (SYNTH_FRAMES, 3, h, w) and every.dtype == torch.uint8
    assert indices_of(every) == list(range(SYNTH_FRAMES))

    decoded = vid.load_video(path, num_frames_cfg(8))
    expected_idx = [0, 4, 8, 12, 17, 21, 25, 29]  # linspace(0, 29, 8) = 0, 4.14, 8.29, 12.43, 16.57, ...
    assert list(decoded.indices) == expected_idx
    rh, rw = vid.resized_hw(h, w, min_pixels=MIN_PX, max_pixels=MAX_PX)
    assert decoded.frames.shape == (8, 3, rh, rw)
    assert decoded.frames.dtype == torch.uint8


MULTI_SHORT = SamplingConfig(sample_type="multi_pts")  # 30 frames at 24 fps -> m = 10


def test_decoded_frames_follow_requested_order_and_repeats(mp4):
    idx = [0, 0, 3, 3, 3, 17, 29]
    assert indices_of(vid.decode_frames(mp4, idx)) == idx
    assert indices_of(vid.decode_frames(mp4, [5, 2])) == [5, 2]
    frames = vid.decode_frames(mp4, vid.sample_indices(SYNTH_FRAMES, 24.0, MULTI_SHORT))
    assert indices_of(frames) == vid.sample_indices(SYNTH_FRAMES, 24.0, MULTI_SHORT)


def test_decoded_pixels_match_source(mp4):
    frame = vid.decode_frames(mp4, [7])[0].permute(1, 2, 0).numpy().astype(np.int16)
    expected = media.make_frame(7, 64, 48).astype(np.int16)
    assert np.abs(frame - expected).mean() < 6  # lossy but close


def test_pattern_static_vs_moving(tmp_path):
    moving = vid.decode_frames(media.write_video(tmp_path / "m.mp4", num_frames=4, width=64, height=48), [1, 2])
    static = vid.decode_frames(
        media.write_video(tmp_path / "s.mp4", num_frames=4, width=64, height=48, pattern="static"), [1, 2]
    )
    bottom = slice(32, 48)
    assert not torch.equal(moving[0, :, bottom], moving[1, :, bottom])
    assert torch.allclose(static[0, :, bottom].float(), static[1, :, bottom].float(), atol=8)


def test_bytes_and_file_like_match_path(mp4):
    idx = [0, 9, 21, 29]
    ref = vid.decode_frames(mp4, idx)
    data = mp4.read_bytes()
    for src in (data, bytearray(data), memoryview(data), io.BytesIO(data), str(mp4)):
        assert torch.equal(vid.decode_frames(src, idx), ref)
    ref_video = vid.load_video(mp4, FPS_MODE)
    assert torch.equal(vid.load_video(data, FPS_MODE).frames, ref_video.frames)
    with open(mp4, "rb") as f:
        meta = vid.probe(f)
        assert f.tell() == 0 and not f.closed
        decoded = vid.load_video(f, FPS_MODE, metadata=meta)
        assert torch.equal(decoded.frames, ref_video.frames)
        assert torch.equal(vid.load_video(f, FPS_MODE).frames, ref_video.frames)  # reusable
        assert not f.closed and f.tell() == 0


def test_file_like_at_offset(mp4):
    data = mp4.read_bytes()
    buf = io.BytesIO(b"JUNKJUNK" + data)
    buf.seek(8)
    assert vid.probe(buf).total_frames == SYNTH_FRAMES
    assert buf.tell() == 8
    assert indices_of(vid.decode_frames(buf, [3, 4])) == [3, 4]


def test_webm_and_mkv_counts_come_from_demux(synth_dir):
    for n in (7, 13):
        p = media.write_video(synth_dir / f"count{n}.webm", num_frames=n, width=32, height=32, codec="libvpx-vp9")
        meta = vid.probe(p)
        assert (meta.total_frames, meta.frame_count_source) == (n, "demux")
        p = media.write_video(synth_dir / f"count{n}.mkv", num_frames=n, width=32, height=32)
        meta = vid.probe(p)
        assert (meta.total_frames, meta.frame_count_source) == (n, "demux")


def test_fractional_fps(tmp_path):
    p = media.write_video(tmp_path / "ntsc.mp4", num_frames=20, width=32, height=32, fps=30000 / 1001)
    meta = vid.probe(p)
    assert meta.fps == pytest.approx(29.97, abs=0.01)
    assert vid.load_video(p, FPS_MODE).frames.shape[0] == 4


def test_two_frame_video_works(tmp_path):
    p = media.write_video(tmp_path / "two.mp4", num_frames=2, width=32, height=32)
    decoded = vid.load_video(p, FPS_MODE)
    assert decoded.indices == (0, 1)
    assert indices_of(vid.decode_frames(p, [0, 1])) == [0, 1]


def test_one_frame_video_rejected(tmp_path):
    p = media.write_video(tmp_path / "one.mp4", num_frames=1, width=32, height=32)
    assert vid.probe(p).total_frames == 1
    with pytest.raises(TooFewFramesError, match="1 frame"):
        vid.load_video(p, FPS_MODE)
    with pytest.raises(TooFewFramesError):
        vid.load_video(p, num_frames_cfg(2))


def test_zero_frame_video_rejected(tmp_path):
    p = media.write_zero_frame_video(tmp_path / "zero.mkv")
    meta = vid.probe(p)
    assert meta.total_frames == 0
    with pytest.raises(TooFewFramesError, match="0 frame"):
        vid.load_video(p, FPS_MODE)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["probe", "load"])
def test_empty_inputs(tmp_path, fn):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    call = vid.probe if fn == "probe" else (lambda s: vid.load_video(s, FPS_MODE))
    for src in (b"", bytearray(), memoryview(b""), io.BytesIO(), empty):
        with pytest.raises(VideoEmptyError) as info:
            call(src)
        assert info.value.code == "video_empty"


def _assert_unreadable(src, fragment: str = "not a readable video"):
    with pytest.raises(VideoUnreadableError) as info:
        vid.load_video(src, FPS_MODE)
    assert info.value.code == "video_unreadable"
    assert fragment in info.value.message
    return info.value


def test_unreadable_inputs(tmp_path, mp4):
    data = mp4.read_bytes()
    err = _assert_unreadable(data[: len(data) // 2])  # truncated mp4: moov atom at the end is missing
    assert "MP4" in err.message and "WebM" in err.message  # names accepted formats
    _assert_unreadable(b"this is a text file, not a video\n" * 40)
    _assert_unreadable(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_unreadable(data[:100])
    text = tmp_path / "notes.mp4"
    text.write_text("hello\n" * 100)
    _assert_unreadable(text)
    _assert_unreadable(io.BytesIO(b"\x00" * 1000))


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope" / "missing.mp4"
    err = _assert_unreadable(missing, "not found")
    assert str(missing) in err.message
    with pytest.raises(VideoUnreadableError, match="not found"):
        vid.probe(str(missing))
    _assert_unreadable(tmp_path, "not a regular file")


def test_unsupported_source_type():
    with pytest.raises(InvalidInputError):
        vid.probe(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".m4a", ".wav", ".mp3", ".mka"])
def test_audio_only(tmp_path, suffix):
    p = media.write_audio_only(tmp_path / f"tone{suffix}")
    for call in (vid.probe, lambda s: vid.load_video(s, FPS_MODE), lambda s: vid.decode_frames(s, [0])):
        with pytest.raises(NoVideoStreamError) as info:
            call(p)
        assert info.value.code == "video_no_stream"
        assert "audio" in info.value.message


def test_bad_indices(mp4):
    for bad in ([], [-1], [1.5], [True]):
        with pytest.raises(InvalidSamplingError):
            vid.decode_frames(mp4, bad)


def test_decode_past_end_raises(mp4):
    with pytest.raises(VideoDecodeError, match="ended after 30"):
        vid.decode_frames(mp4, [0, 30])


def test_mid_stream_decode_failure_is_typed(mp4, monkeypatch):
    real = vid._iter_frames

    def failing(container, stream):
        for i, frame in enumerate(real(container, stream)):
            if i == 3:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(vid, "_iter_frames", failing)
    before = _open_fds()
    with pytest.raises(VideoDecodeError) as info:
        vid.load_video(mp4, FPS_MODE)
    assert info.value.code == "video_decode_failed"
    assert "frame 3" in info.value.message
    assert _open_fds() == before


def test_corrupted_payload_gives_typed_errors(mp4):
    """Flip bytes inside the media data: every outcome is success or a VideoError."""
    data = mp4.read_bytes()
    outcomes = set()
    for frac in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        corrupt = bytearray(data)
        start = int(len(corrupt) * frac)
        for o in range(start, start + 64):
            corrupt[o] ^= 0xFF
        try:
            vid.load_video(bytes(corrupt), num_frames_cfg(30))
            outcomes.add("ok")
        except VideoError as exc:
            outcomes.add(type(exc).__name__)
    assert outcomes <= {"ok", "VideoDecodeError", "VideoUnreadableError"}
    assert "VideoDecodeError" in outcomes


# ---------------------------------------------------------------------------
# Wrong container frame counts
# ---------------------------------------------------------------------------
def test_overstated_frame_count_resamples(mp4, caplog):
    meta = vid.probe(mp4)
    wrong = dataclasses.replace(meta, total_frames=60)
    with caplog.at_level(logging.WARNING, logger="model.video"):
        decoded = vid.load_video(mp4, num_frames_cfg(8), metadata=wrong)
    assert "resampling" in caplog.text
    assert decoded.metadata.total_frames == SYNTH_FRAMES
    assert decoded.metadata.frame_count_source == "decode"
    assert list(decoded.indices) == vid.sample_indices(SYNTH_FRAMES, 24.0, num_frames_cfg(8))
    # No padding: 8 distinct, correctly ordered frames from the real 30.
    raw = vid.decode_frames(mp4, list(decoded.indices))
    assert indices_of(raw) == list(decoded.indices)


# ---------------------------------------------------------------------------
# Decode efficiency and resource handling
# ---------------------------------------------------------------------------
def test_only_sampled_frames_converted_and_decoding_stops(mp4, monkeypatch):
    converted = []
    real_to_ndarray = av.VideoFrame.to_ndarray

    def counting_to_ndarray(self, *args, **kwargs):
        converted.append(kwargs.get("format"))
        return real_to_ndarray(self, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", counting_to_ndarray)

    pulled = []
    real_iter = vid._iter_frames

    def counting_iter(container, stream):
        for frame in real_iter(container, stream):
            pulled.append(frame.pts)
            yield frame

    monkeypatch.setattr(vid, "_iter_frames", counting_iter)

    idx = [2, 2, 5, 11]
    frames = vid.decode_frames(mp4, idx)
    assert indices_of(frames) == idx
    assert converted == ["rgb24"] * 3  # distinct indices only
    assert len(pulled) == 12  # frames 0..11, nothing after the last wanted index

    converted.clear()
    pulled.clear()
    decoded = vid.load_video(mp4, FPS_MODE)  # indices [0, 10, 19, 29]
    assert list(decoded.indices) == [0, 10, 19, 29]
    assert len(converted) == 4
    assert len(pulled) == SYNTH_FRAMES


def test_probe_does_not_decode(synth, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("probe decoded a frame")

    monkeypatch.setattr(vid, "_iter_frames", boom)
    monkeypatch.setattr(av.VideoFrame, "to_ndarray", boom)
    for name in ("h264_mp4", "vp9_webm", "h264_mkv"):
        assert vid.probe(synth[name]).total_frames == SYNTH_FRAMES


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_no_leaked_file_descriptors(tmp_path, mp4):
    data = mp4.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    audio = media.write_audio_only(tmp_path / "a.wav")
    one = media.write_video(tmp_path / "one.mp4", num_frames=1, width=32, height=32)
    buf = io.BytesIO(b"not a video" * 100)

    def failing_calls():
        for call in (
            lambda: vid.load_video(truncated, FPS_MODE),
            lambda: vid.load_video(audio, FPS_MODE),
            lambda: vid.load_video(one, FPS_MODE),
            lambda: vid.decode_frames(mp4, [0, 99]),
            lambda: vid.decode_frames(str(truncated), [0]),
            lambda: vid.probe(buf),
        ):
            with pytest.raises(VideoError):
                call()

    failing_calls()  # warm up lazily opened library handles
    before = _open_fds()
    for _ in range(10):
        failing_calls()
    assert _open_fds() == before
    # The caller's file-like object survives failures, at its original position.
    assert not buf.closed and buf.tell() == 0
