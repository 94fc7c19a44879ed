"""Benchmark the video pipeline and the model forward. Prints JSON (and writes it with --out).

    python bench/bench_pipeline.py [--fixtures DIR] [--repeats 3] [--out bench/results/pipeline.json]

Measures, per fixture video (milliseconds per video, median of repeats):
- ``decode_ms``: our decode + sample + resize (model.video.load_video);
- ``naive_ms``: a baseline that decodes every frame to RGB, then indexes and resizes;
- ``prepare_ms``: chat template + processor (rescale, normalise, patchify);
and the model forward (batch of the fixtures, and one at a time) for a tiny and a
mid-size (~100M parameter) random checkpoint made on the spot.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.reward_config import RewardConfig  # noqa: E402
from model.scorer import VideoRewardScorer  # noqa: E402
from model.tiny import write_tiny  # noqa: E402
from model.video import SamplingConfig, load_video, probe, resize_frames, resized_hw, sample_indices  # noqa: E402


def naive_load(path: Path, sampling: SamplingConfig) -> torch.Tensor:
    """The baseline: decode and convert every frame to RGB, then index."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    meta = probe(path)
    idx = sample_indices(len(frames), meta.fps, sampling)
    video = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
    h, w = resized_hw(video.shape[-2], video.shape[-1], min_pixels=sampling.min_pixels, max_pixels=sampling.max_pixels)
    return resize_frames(video, h, w)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared/fixtures/videoalign-examples")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="tiny,mid")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    videos = sorted((args.fixtures / "videos").glob("*.mp4"))
    if not videos:
        sys.exit(f"no fixture videos under {args.fixtures}")
    sampling = SamplingConfig()  # the published defaults: fps 2, 448x448 max pixels
    result: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "torch": torch.__version__,
        "sampling": sampling.to_dict(),
        "videos": {},
        "forward": {},
    }
    for v in videos:
        meta = probe(v)
        dec = load_video(v, sampling)
        entry = {
            "size": f"{meta.width}x{meta.height}",
            "frames": meta.total_frames,
            "sampled": int(dec.frames.shape[0]),
            "resized": f"{dec.frames.shape[-1]}x{dec.frames.shape[-2]}",
            "decode_ms": timed(lambda v=v: load_video(v, sampling), args.repeats),
            "naive_ms": timed(lambda v=v: naive_load(v, sampling), args.repeats),
        }
        assert torch.equal(naive_load(v, sampling), dec.frames), f"naive and ours disagree on {v.name}"
        entry["speedup"] = round(entry["naive_ms"] / entry["decode_ms"], 2)
        result["videos"][v.name] = entry
    result["decode_ms_mean"] = statistics.mean(e["decode_ms"] for e in result["videos"].values())
    result["naive_ms_mean"] = statistics.mean(e["naive_ms"] for e in result["videos"].values())

    with tempfile.TemporaryDirectory() as tmp:
        for size in [s for s in args.sizes.split(",") if s]:
            ckpt = write_tiny(Path(tmp) / size, size=size, reward_config=RewardConfig(sampling=sampling))
            scorer = VideoRewardScorer.from_pretrained(ckpt, device=args.device)
            params = sum(p.numel() for p in scorer.model.parameters())
            items = [scorer.prepare(v, "a video") for v in videos]
            prep_ms = timed(lambda scorer=scorer: scorer.prepare(videos[0], "a video"), args.repeats)
            scorer.forward(items[:1])  # warm-up
            batch_ms = timed(lambda items=items, scorer=scorer: scorer.forward(items), args.repeats)
            one_ms = timed(lambda items=items, scorer=scorer: [scorer.forward([it]) for it in items], args.repeats)
            def vision_only(items=items, scorer=scorer) -> None:
                with torch.inference_mode():
                    for it in items:
                        scorer.model.model.visual(it.pixel_values_videos, grid_thw=it.video_grid_thw[None])

            vision_ms = timed(vision_only, args.repeats)
            vision_params = sum(p.numel() for p in scorer.model.model.visual.parameters())
            result["forward"][size] = {
                "vision_parameters_M": round(vision_params / 1e6, 1),
                "vision_ms_per_video": vision_ms / len(items),
                "parameters_M": round(params / 1e6, 1),
                "tokens_per_video": [it.num_tokens for it in items],
                "prepare_ms_first_video": prep_ms,
                "batched_ms_per_video": batch_ms / len(items),
                "one_at_a_time_ms_per_video": one_ms / len(items),
            }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
