"""Does decoding + preparation scale across threads (is the GIL released)? Prints JSON.

    python bench/bench_decode_pool.py [--fixtures DIR] [--repeats 2]

Prepares every fixture video (decode, sample, resize, processor) sequentially,
then on 2 threads, and reports the speedup. Near 2x on 2 cores means the heavy
parts (PyAV decode, torchvision resize, the processor's tensor ops) release the GIL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.reward_config import RewardConfig  # noqa: E402
from model.scorer import VideoRewardScorer  # noqa: E402
from model.tiny import write_tiny  # noqa: E402
from model.video import SamplingConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared/fixtures/videoalign-examples")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    videos = sorted((args.fixtures / "videos").glob("*.mp4")) * args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_tiny(Path(tmp) / "c", reward_config=RewardConfig(sampling=SamplingConfig()))
        scorer = VideoRewardScorer.from_pretrained(ckpt)
        scorer.prepare(videos[0], "warm-up")
        t0 = time.perf_counter()
        for v in videos:
            scorer.prepare(v, "a video")
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda v: scorer.prepare(v, "a video"), videos))
        threaded = time.perf_counter() - t0
    print(json.dumps({
        "date": date.today().isoformat(), "cores": os.cpu_count(), "videos": len(videos),
        "sequential_s": sequential, "two_threads_s": threaded, "speedup": sequential / threaded,
    }, indent=2))


if __name__ == "__main__":
    main()
