"""Synthetic preference data with known answers: short videos of a moving shape at controlled quality.

    python -m training.synthetic OUT [--train 600] [--test 150] [--seed 0] [--size 64] [--frames 8]

A scene is a shape (circle, square, triangle) of a colour (red, green, blue,
yellow) moving in a direction (left, right, up, down) over a background; the
prompt says it in words ("a red circle moving left"). Each video has three
independent quality levels, 0 (best) to 2 (worst):

- VQ: additive noise, blur or blockiness, stronger with the level;
- MQ: temporal jitter, stutter (repeated frames), flicker or frozen motion, stronger with the level;
- TA: the number of the prompt's attributes (colour, shape, direction) the video gets wrong.

A pair shares its prompt; per dimension the label is A, B or same from the
two levels. The output is a CSV per split in the training format
(path_A, path_B, prompt, VQ, MQ, TA, fps_A, num_frames_A, fps_B, num_frames_B),
plus ``videos/``. The split is deterministic for a seed, and the test split's
videos are rendered separately, so it shares no (prompt, video) item with training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
LEVELS = 3  # 0 best .. 2 worst
DIMS = ("VQ", "MQ", "TA")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    direction: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class Quality:
    vq: int
    mq: int
    ta: int


def _mask(shape: str, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    # an upward triangle: inside when below the two slanted edges and above the base
    return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)


def _mismatch(scene: Scene, n: int, rng: np.random.Generator) -> Scene:
    """The scene with ``n`` of its attributes changed (what a misaligned video shows)."""
    attrs = list(rng.permutation(["shape", "colour", "direction"])[:n])
    shape, colour, direction = scene.shape, scene.colour, scene.direction
    if "shape" in attrs:
        shape = str(rng.choice([s for s in SHAPES if s != shape]))
    if "colour" in attrs:
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
    if "direction" in attrs:
        direction = str(rng.choice([d for d in DIRECTIONS if d != direction]))
    return Scene(shape, colour, direction)


def render(scene: Scene, quality: Quality, rng: np.random.Generator, *, size: int = 64, frames: int = 8) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of ``scene`` at ``quality``."""
    shown = _mismatch(scene, quality.ta, rng) if quality.ta else scene
    # per-video nuisance (shade, size, path offset): no two videos are the same, at any quality
    low = float(rng.uniform(55, 85))
    grad = np.linspace(low, low + 60, size, dtype=np.float32)
    background = np.stack([grad[:, None].repeat(size, 1)] * 3, axis=-1)  # (H, W, 3) grey gradient
    radius = size * 0.16 * float(rng.uniform(0.85, 1.15))
    dy, dx = DIRECTIONS[shown.direction]
    travel = size * 0.5
    offset = rng.uniform(-size * 0.08, size * 0.08, 2)
    start = np.array([size / 2, size / 2]) + offset - np.array([dy, dx]) * travel / 2
    t = np.arange(frames, dtype=np.float32)
    # motion: positions over time, then the MQ degradation of the time axis
    progress = t / max(1, frames - 1)
    mq_kind = rng.integers(4)
    if quality.mq:
        strength = quality.mq
        if mq_kind == 0:  # jitter
            progress = progress + rng.normal(0, 0.12 * strength, frames)
        elif mq_kind == 1:  # stutter: hold frames
            hold = 2 * strength
            progress = progress[(np.arange(frames) // hold) * hold]
        elif mq_kind == 2:  # frozen for part (level 1) or all (level 2) of the clip
            progress = np.minimum(progress, 0.0 if strength == 2 else progress[frames // 3])
    centres = start[None, :] + np.outer(progress, np.array([dy, dx]) * travel)
    colour = np.array(COLOURS[shown.colour], dtype=np.float32)
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    for i in range(frames):
        frame = background.copy()
        frame[_mask(shown.shape, size, centres[i, 0], centres[i, 1], radius)] = colour
        video[i] = frame
    if quality.mq and mq_kind == 3:  # flicker
        gain = 1.0 + (0.35 * quality.mq) * np.where(np.arange(frames) % 2 == 0, 1.0, -1.0)
        video *= gain[:, None, None, None]
    if quality.vq:
        kind = rng.integers(3)
        if kind == 0:  # noise
            video += rng.normal(0, 28.0 * quality.vq, video.shape)
        elif kind == 1:  # blur: repeated box filter
            for _ in range(2 * quality.vq):
                video = (video + np.roll(video, 1, 1) + np.roll(video, -1, 1) + np.roll(video, 1, 2) + np.roll(video, -1, 2)) / 5
        else:  # blockiness: average over blocks
            b = 4 * quality.vq
            h = size // b * b
            v = video[:, :h, :h].reshape(frames, h // b, b, h // b, b, 3).mean(axis=(2, 4))
            video[:, :h, :h] = np.repeat(np.repeat(v, b, axis=1), b, axis=2)
    return np.clip(video, 0, 255).astype(np.uint8)


def write_frames(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Encode (T, H, W, 3) uint8 frames as MPEG-4 Part 2 in mp4 at high quality (degradations survive).

    Not H.264: libx264 here gave different bytes for the same frames now and then, and the
    data must be byte-for-byte deterministic for a seed (the prepared-item cache keys on content).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps), options={"qscale": "2"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _label(a: int, b: int) -> str:
    return "same" if a == b else ("A" if a < b else "B")


def generate_split(
    out: Path, split: str, n_pairs: int, seed: int, *, size: int = 64, frames: int = 8, fps: int = 8
) -> pd.DataFrame:
    """Render ``n_pairs`` pairs into ``out/videos/<split>_*.mp4`` and return their rows."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}.get(split, 2)])
    scenes = [Scene(s, c, d) for s in SHAPES for c in COLOURS for d in DIRECTIONS]
    rows = []
    for i in tqdm(range(n_pairs), desc=f"rendering {split} pairs", unit="pair"):
        scene = scenes[int(rng.integers(len(scenes)))]
        qa = Quality(*(int(x) for x in rng.integers(LEVELS, size=3)))
        qb = Quality(*(int(x) for x in rng.integers(LEVELS, size=3)))
        paths = []
        for side, q in (("A", qa), ("B", qb)):
            rel = Path("videos") / f"{split}_{i:05d}_{side}.mp4"
            write_frames(out / rel, render(scene, q, rng, size=size, frames=frames), fps)
            paths.append(rel.as_posix())
        rows.append({
            "path_A": paths[0], "path_B": paths[1], "prompt": scene.prompt,
            "VQ": _label(qa.vq, qb.vq), "MQ": _label(qa.mq, qb.mq), "TA": _label(qa.ta, qb.ta),
            "fps_A": float(fps), "num_frames_A": float(frames), "fps_B": float(fps), "num_frames_B": float(frames),
            "level_VQ_A": qa.vq, "level_MQ_A": qa.mq, "level_TA_A": qa.ta,
            "level_VQ_B": qb.vq, "level_MQ_B": qb.mq, "level_TA_B": qb.ta,
        })
    return pd.DataFrame(rows)


def generate(
    out: str | Path, *, n_train: int = 600, n_test: int = 150, seed: int = 0, size: int = 64, frames: int = 8, fps: int = 8
) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (and ``videos/``) under ``out``; returns the two CSV paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (("train", n_train), ("test", n_test)):
        df = generate_split(out, split, n, seed, size=size, frames=frames, fps=fps)
        path = out / f"{split}.csv"
        df.to_csv(path, index=False)
        paths.append(path)
        logger.info("%s: %d pairs -> %s", split, n, path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="frame width and height (even)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--fps", type=int, default=8)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate(args.out, n_train=args.train, n_test=args.test, seed=args.seed, size=args.size, frames=args.frames, fps=args.fps)


if __name__ == "__main__":
    main()
