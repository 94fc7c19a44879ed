"""Tensor-parallel serving under torchrun on 2 CPU ranks (gloo), with the tiny checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from model.scorer import VideoRewardScorer
from service.client import VideoRewardClient
from tests.conftest import ROOT
from tests.service_helpers import free_port

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]


def start_tp(ckpt: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [*TORCHRUN, str(free_port()), "-m", "service", "--checkpoint", str(ckpt), "--tp", "2",
           "--port", str(port), "--tp-timeout-s", "10", "--tp-heartbeat-s", "0.5", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _descendants(pid: int) -> list[int]:
    """All descendants (torchrun starts its ranks in sessions of their own, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop(proc: subprocess.Popen) -> str:
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, _ = proc.communicate(timeout=30)
    return out


def test_tp2_scores_equal_tp1_and_serves_all_routes(tiny_ckpt, fixture_videos, synthetic_videos):
    videos = [*fixture_videos, synthetic_videos["landscape_mp4"], synthetic_videos["portrait_webm"]]
    expected = VideoRewardScorer.from_pretrained(tiny_ckpt).score([(v, "tensor parallel") for v in videos])
    proc, url = start_tp(tiny_ckpt, "--max-wait-ms", "50")
    try:
        with VideoRewardClient(url) as c:
            c.wait_ready(180)
            got = c.score(videos, "tensor parallel")  # one request: items are batched together
            for r, e in zip(got["results"], expected, strict=True):
                assert r["error"] is None
                for k in ("VQ", "MQ", "TA", "Overall"):
                    assert r[k] == pytest.approx(e[k], abs=1e-4)
            cmp = c.compare([(videos[0], videos[1], "tensor parallel")])
            d = cmp["results"][0]["dims"]["Overall"]
            assert d["margin"] == pytest.approx(expected[0]["Overall"] - expected[1]["Overall"], abs=2e-4)
            info = c.model()
        assert info["tp"] == 2 and info["engine"]["kind"] == "tensor_parallel"
        ranks = info["engine"]["per_rank_parameter_bytes"]
        assert len(ranks) == 2
        full = VideoRewardScorer.from_pretrained(tiny_ckpt).model
        total = sum(p.numel() * p.element_size() for p in full.parameters())
        # each rank holds about half of the sharded parts, plus everything replicated
        assert ranks[0]["sharded"] + ranks[1]["sharded"] + ranks[0]["replicated"] == total
        for r in ranks:
            assert r["sharded"] == pytest.approx((total - r["replicated"]) / 2, rel=0.01)
        assert ranks[0]["replicated"] >= sum(p.numel() * 4 for p in full.model.visual.parameters())  # vision replicated
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not stop the group:\n" + stop(proc)[-4000:])
        assert "rank 1: shutdown from rank 0" in out, out[-3000:]
    finally:
        stop(proc) if proc.poll() is None else None


def test_killing_a_rank_fails_fast_and_answers_every_client(tiny_ckpt, fixture_videos):
    proc, url = start_tp(tiny_ckpt)
    try:
        with VideoRewardClient(url, retries=0) as c:
            c.wait_ready(180)
            rank1 = c.model()["engine"]["per_rank_parameter_bytes"][1]["pid"]
        body = {"items": [{"video": {"base64": __import__("base64").b64encode(v.read_bytes()).decode()}, "prompt": f"load {i}",
                           "num_frames": 32} for i, v in enumerate(fixture_videos)]}

        def call() -> int:
            try:
                return httpx.post(url + "/score", json=body, timeout=60).status_code
            except httpx.TransportError:
                return -1  # the server closed on us: not an answer

        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(call) for _ in range(4)]
            time.sleep(0.3)
            t0 = time.monotonic()
            os.kill(rank1, signal.SIGKILL)
            statuses = [f.result() for f in futs]
        assert all(s in (200, 503) for s in statuses), statuses
        assert 503 in statuses or statuses.count(200) == 4
        code = proc.wait(timeout=30)
        assert code != 0
        assert time.monotonic() - t0 < 30
        out = stop(proc)
        assert "fatal" in out or "engine dead" in out, out[-3000:]
    finally:
        stop(proc) if proc.poll() is None else None


def test_invalid_tp_degree_is_refused(tiny_ckpt):
    out = subprocess.run([sys.executable, "-m", "service", "--checkpoint", str(tiny_ckpt), "--tp", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "does not divide" in out.stderr and "valid degrees" in out.stderr
    out = subprocess.run([sys.executable, "-m", "service", "--checkpoint", str(tiny_ckpt), "--tp", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "torchrun --nproc-per-node 2" in out.stderr
