"""Score videos from the command line.

    python -m model.score --checkpoint DIR --prompt TEXT --video A.mp4 [--video B.mp4 ...] \
        [--no-norm] [--device cpu|cuda|npu] [--dtype fp32|bf16|fp16] [--batch-size N]

Prints a JSON list, one object per video, with keys VQ, MQ, TA and Overall.
Errors print ``{"error": {"code", "message"}}`` to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import VideoRewardError
from .scorer import ScoreRequest, VideoRewardScorer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.score", description="Score videos with a VideoReward checkpoint.")
    p.add_argument("--checkpoint", required=True, help="serving checkpoint directory")
    p.add_argument("--prompt", required=True, help="the text prompt the videos were generated from")
    p.add_argument("--video", action="append", required=True, help="video file (repeat for several)")
    p.add_argument("--no-norm", action="store_true", help="raw scores, without the checkpoint's normalisation")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N], npu[:N] or auto")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--batch-size", type=int, default=None, help="videos per forward pass (default: all)")
    p.add_argument("--fps", type=float, default=None, help="override the checkpoint's sampling fps")
    p.add_argument("--num-frames", type=int, default=None, help="sample this many frames instead of by fps")
    p.add_argument("--max-pixels", type=int, default=None, help="override the per-frame pixel budget")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        scorer = VideoRewardScorer.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
        reqs = [
            ScoreRequest(v, args.prompt, fps=args.fps, num_frames=args.num_frames, max_pixels=args.max_pixels)
            for v in args.video
        ]
        scores = scorer.score(reqs, normalize=False if args.no_norm else None, batch_size=args.batch_size)
    except VideoRewardError as e:
        print(json.dumps({"error": e.to_dict()}), file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
