"""Synthetic preference data with known answers: short videos of a moving shape at controlled quality.

    python -m training.synthetic OUT [--train 600] [--test 150] [--seed 0] [--size 64] [--frames 8]

A scene is a shape (circle, square, triangle) of a colour (red, green, blue,
yellow) moving in a direction (left, right, up, down) over a background; the
prompt says it in words ("a red circle moving left"). Each video has three
independent quality levels, 0 (best) to 2 (worst):

- VQ: additive noise, blur or blockiness, stronger with the level;
- MQ: temporal jitter, stutter (repeated frames), flicker or frozen motion, stronger with the level;
- TA: the number of the prompt's attributes (colour, shape, direction) the video gets wrong.

A pair shares its prompt and its random draws (the background's shade, the
object's size and path, which attributes a misaligned clip gets wrong, the
noise and jitter patterns, and the kind of each degradation): its two clips
are twins that differ only in their quality levels. So a pair's label is about
quality, not about an unrelated difference between two clips, and it compares
two severities of one degradation (noise with more noise, stutter with more
stutter), never two unrelated ones whose relative badness would be a matter
of taste. That is what lets a small model learn from a few thousand pairs.
Per dimension the label is A, B or same from the two levels; the CSV also
records the levels (``level_<dim>_<side>``) and kinds (``kind_VQ``, ``kind_MQ``).

The output is a CSV per split in the training format (path_A, path_B, prompt,
VQ, MQ, TA, fps_A, num_frames_A, fps_B, num_frames_B), plus ``videos/``. The split is deterministic for a seed, and the test split's
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
VQ_KINDS = ("noise", "blur", "blocky")
MQ_KINDS = ("jitter", "stutter", "frozen", "flicker")


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
    """The scene with ``n`` of its attributes changed (what a misaligned video shows).

    The draws are the same whatever ``n``: with one generator state, n=2 keeps n=1's wrong attribute.
    """
    order = list(rng.permutation(["shape", "colour", "direction"]))
    replacement = {
        "shape": str(rng.choice([s for s in SHAPES if s != scene.shape])),
        "colour": str(rng.choice([c for c in COLOURS if c != scene.colour])),
        "direction": str(rng.choice([d for d in DIRECTIONS if d != scene.direction])),
    }
    attrs = {"shape": scene.shape, "colour": scene.colour, "direction": scene.direction}
    for name in order[:n]:
        attrs[name] = replacement[name]
    return Scene(**attrs)


def render(
    scene: Scene,
    quality: Quality,
    rng: np.random.Generator,
    *,
    size: int = 64,
    frames: int = 8,
    pair_rng: np.random.Generator | None = None,
    vq_kind: str | None = None,
    mq_kind: str | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of ``scene`` at ``quality``.

    ``rng`` draws the kind of each degradation (``VQ_KINDS``, ``MQ_KINDS``; ``vq_kind`` / ``mq_kind``
    choose one instead). ``pair_rng`` (default ``rng``) draws everything else: the nuisance (background
    shade, object size, path offset), which attributes a misaligned clip gets wrong, and the noise and
    jitter patterns. These draws are the same whatever the quality, so two clips whose ``pair_rng`` is
    seeded alike are twins: they differ only where their quality (or degradation kind) differs, and a
    stronger level of a degradation is the weaker one amplified.
    """
    for name, value, kinds in (("vq_kind", vq_kind, VQ_KINDS), ("mq_kind", mq_kind, MQ_KINDS)):
        if value is not None and value not in kinds:
            raise ValueError(f"{name} must be one of {kinds}, got {value!r}")
    mq = mq_kind if mq_kind is not None else MQ_KINDS[int(rng.integers(len(MQ_KINDS)))]
    vq = vq_kind if vq_kind is not None else VQ_KINDS[int(rng.integers(len(VQ_KINDS)))]
    draws = rng if pair_rng is None else pair_rng
    shown = _mismatch(scene, quality.ta, draws)
    # per-clip nuisance (shade, size, path offset): no two pairs look the same, at any quality
    low = float(draws.uniform(55, 85))
    grad = np.linspace(low, low + 60, size, dtype=np.float32)
    background = np.stack([grad[:, None].repeat(size, 1)] * 3, axis=-1)  # (H, W, 3) grey gradient
    radius = size * 0.22 * float(draws.uniform(0.85, 1.15))
    offset = draws.uniform(-size * 0.08, size * 0.08, 2)
    jitter = draws.normal(0, 1, frames)  # (T,)
    noise = draws.normal(0, 1, (frames, size, size, 3)).astype(np.float32)  # (T, H, W, 3)
    dy, dx = DIRECTIONS[shown.direction]
    travel = size * 0.5
    start = np.array([size / 2, size / 2]) + offset - np.array([dy, dx]) * travel / 2
    t = np.arange(frames, dtype=np.float32)
    # motion: positions over time, then the MQ degradation of the time axis
    progress = t / max(1, frames - 1)
    if quality.mq:
        strength = quality.mq
        if mq == "jitter":  # Gaussian offsets along the path, std 12% (level 1) or 24% (level 2) of the travel
            progress = progress + 0.12 * strength * jitter
        elif mq == "stutter":  # hold frames
            hold = 2 * strength
            progress = progress[(np.arange(frames) // hold) * hold]
        elif mq == "frozen":  # for part (level 1) or all (level 2) of the clip
            progress = np.minimum(progress, 0.0 if strength == 2 else progress[frames // 3])
    centres = start[None, :] + np.outer(progress, np.array([dy, dx]) * travel)
    colour = np.array(COLOURS[shown.colour], dtype=np.float32)
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    for i in range(frames):
        frame = background.copy()
        frame[_mask(shown.shape, size, centres[i, 0], centres[i, 1], radius)] = colour
        video[i] = frame
    if quality.mq and mq == "flicker":
        gain = 1.0 + (0.35 * quality.mq) * np.where(np.arange(frames) % 2 == 0, 1.0, -1.0)
        video *= gain[:, None, None, None]
    if quality.vq:
        if vq == "noise":
            video += 28.0 * quality.vq * noise
        elif vq == "blur":  # repeated box filter
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
        # The pair's shared draws: its clips are twins, degraded (where they are) the same way, so a
        # label compares severities of one degradation, never two unrelated ones.
        vq_kind = VQ_KINDS[int(rng.integers(len(VQ_KINDS)))]
        mq_kind = MQ_KINDS[int(rng.integers(len(MQ_KINDS)))]
        pair_seed = int(rng.integers(2**63))
        paths = []
        for side, q in (("A", qa), ("B", qb)):
            rel = Path("videos") / f"{split}_{i:05d}_{side}.mp4"
            clip = render(scene, q, rng, size=size, frames=frames, pair_rng=np.random.default_rng(pair_seed),
                          vq_kind=vq_kind, mq_kind=mq_kind)
            write_frames(out / rel, clip, fps)
            paths.append(rel.as_posix())
        rows.append({
            "path_A": paths[0], "path_B": paths[1], "prompt": scene.prompt,
            "VQ": _label(qa.vq, qb.vq), "MQ": _label(qa.mq, qb.mq), "TA": _label(qa.ta, qb.ta),
            "fps_A": float(fps), "num_frames_A": float(frames), "fps_B": float(fps), "num_frames_B": float(frames),
            "level_VQ_A": qa.vq, "level_MQ_A": qa.mq, "level_TA_A": qa.ta,
            "level_VQ_B": qb.vq, "level_MQ_B": qb.mq, "level_TA_B": qb.ta,
            "kind_VQ": vq_kind, "kind_MQ": mq_kind,
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
