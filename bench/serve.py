"""Benchmark the service under concurrent load against a sequential reference loop. Prints JSON.

    python bench/serve.py [--checkpoint DIR | --size tiny|mid] [--clients 8] [--requests 64] [--out FILE]
    python bench/serve.py --tp 2 [--device cpu|cuda|npu] ...     # tensor-parallel (torchrun, one rank per device)

Starts ``python -m service`` on a loopback port, drives it with N concurrent
clients (one item per request, distinct prompts so nothing is a cache hit)
over the fixture videos and generated ones, and reports throughput, p50/p99
latency, the batch-size distribution and the share of time in decode vs
forward (from /metrics). In the same run it times a sequential reference loop
over the same model and items (decode, then forward at batch 1, one at a
time) and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.reward_config import RewardConfig  # noqa: E402
from model.scorer import VideoRewardScorer  # noqa: E402
from model.tiny import write_tiny  # noqa: E402
from model.video import SamplingConfig  # noqa: E402
from service.client import VideoRewardClient  # noqa: E402
from tests.media import write_video  # noqa: E402


def _metric(text: str, name: str, label: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and (label is None or label in line)):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _histogram(text: str, name: str) -> dict[str, float]:
    """Per-bucket counts (not cumulative) of a Prometheus histogram."""
    cum = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            cum.append((le, float(line.rsplit(" ", 1)[1])))
    out, prev = {}, 0.0
    for le, c in cum:
        if c - prev:
            out[f"<={le}"] = c - prev
        prev = c
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--size", default="tiny", choices=["tiny", "mid"])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared/fixtures/videoalign-examples")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=20)
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (starts the service under torchrun)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or npu (each rank takes its local device)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ckpt = args.checkpoint
    if ckpt is None:
        sampling = SamplingConfig(fps=2.0, max_pixels=200704 // 4, min_pixels=100352 // 4)
        ckpt = write_tiny(tmp / "ckpt", size=args.size, reward_config=RewardConfig(sampling=sampling))
    videos = sorted((args.fixtures / "videos").glob("*.mp4"))
    videos += [
        write_video(tmp / "gen1.mp4", num_frames=48, width=320, height=240, fps=24),
        write_video(tmp / "gen2.webm", num_frames=40, width=240, height=320, fps=20, codec="libvpx-vp9"),
    ]
    work = [(videos[i % len(videos)], f"benchmark prompt number {i}") for i in range(args.requests)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VIDEOREWARD_CHECKPOINT": str(ckpt), "VIDEOREWARD_MAX_BATCH_SIZE": str(args.max_batch_size),
           "VIDEOREWARD_MAX_WAIT_MS": str(args.max_wait_ms), "VIDEOREWARD_DECODE_WORKERS": str(args.decode_workers),
           "VIDEOREWARD_LOG_LEVEL": "warning", "VIDEOREWARD_DEVICE": args.device, "VIDEOREWARD_DTYPE": args.dtype}
    launcher = [sys.executable, "-m", "service"]
    if args.tp > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            master = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.tp),
                    "--master-port", str(master), "-m", "service", "--tp", str(args.tp)]
    proc = subprocess.Popen([*launcher, "--port", str(port)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        client = VideoRewardClient(url)
        client.wait_ready(300)
        client.score([videos[0]], "warm-up")
        m0 = client.metrics()
        latencies: list[float] = []

        def one(item: tuple[Path, str]) -> None:
            with VideoRewardClient(url) as c:
                t0 = time.perf_counter()
                out = c.score([item[0]], item[1])
                latencies.append(time.perf_counter() - t0)
                assert out["results"][0]["error"] is None, out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, work))
        wall = time.perf_counter() - t0
        m1 = client.metrics()
        engine = client.model()["engine"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def delta(name: str) -> float:
        return _metric(m1, name) - _metric(m0, name)

    decode_s, forward_s = delta("videoreward_decode_seconds_sum"), delta("videoreward_forward_seconds_sum")
    h0, h1 = _histogram(m0, "videoreward_batch_size_items"), _histogram(m1, "videoreward_batch_size_items")
    batch_hist = {k: h1.get(k, 0) - h0.get(k, 0) for k in h1 if h1.get(k, 0) - h0.get(k, 0)}

    # the sequential reference: same model and items, decode then forward at batch 1, one at a time
    scorer = VideoRewardScorer.from_pretrained(ckpt, device=args.device if args.tp == 1 else "cpu" if args.device == "cpu" else f"{args.device}:0", dtype=args.dtype)
    scorer.forward([scorer.prepare(videos[0], "warm-up")])
    t0 = time.perf_counter()
    for v, prompt in work:
        scorer.forward([scorer.prepare(v, prompt)])
    seq_wall = time.perf_counter() - t0

    lat = sorted(latencies)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "checkpoint": str(ckpt),
        "clients": args.clients,
        "tp": args.tp,
        "device": args.device,
        "per_rank_parameter_bytes": engine.get("per_rank_parameter_bytes"),
        "requests": args.requests,
        "service": {
            "throughput_items_per_s": args.requests / wall,
            "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] * 1e3,
            "batches": delta("videoreward_batch_size_items_count"),
            "mean_batch_size": delta("videoreward_batch_size_items_sum") / max(1.0, delta("videoreward_batch_size_items_count")),
            "batch_size_histogram": batch_hist,
            "decode_share": decode_s / max(1e-9, decode_s + forward_s),
            "forward_share": forward_s / max(1e-9, decode_s + forward_s),
        },
        "sequential": {"throughput_items_per_s": args.requests / seq_wall},
        "speedup_vs_sequential": seq_wall / wall,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
