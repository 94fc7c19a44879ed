"""The scoring service: a real uvicorn server on loopback with a tiny checkpoint (no model mocks)."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from model.scorer import VideoRewardScorer
from service.app import create_app
from service.client import ServiceHTTPError, VideoRewardClient
from service.engine import LocalEngine
from service.settings import Settings
from tests.conftest import ROOT
from tests.media import write_audio_only, write_video
from tests.service_helpers import ServerThread, free_port

PROMPT = "a red circle moving left"


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    root = d / "root"
    root.mkdir()
    outside = d / "outside"
    outside.mkdir()
    m = {
        "root": root,
        "good": write_video(root / "good.mp4", num_frames=24, width=96, height=64, fps=12),
        "good2": write_video(root / "good2.webm", num_frames=20, width=64, height=96, fps=10, codec="libvpx-vp9"),
        "long": write_video(d / "long.mp4", num_frames=400, width=32, height=32, fps=10),  # 40 s
        "huge": write_video(d / "huge.mp4", num_frames=2, width=1920, height=1088, fps=10),
        "audio": write_audio_only(d / "audio.m4a"),
        "secret": write_video(outside / "secret.mp4", num_frames=10, width=32, height=32, fps=10),
    }
    (root / "escape.mp4").symlink_to(m["secret"])
    truncated = d / "truncated.mp4"
    truncated.write_bytes(m["good"].read_bytes()[: m["good"].stat().st_size // 3])
    m["truncated"] = truncated
    text = d / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    m["text"] = text
    return m


def settings_for(ckpt: Path, media: dict[str, Path], **kw) -> Settings:
    base = dict(
        checkpoint=ckpt, allowed_roots=[media["root"]], max_items_per_request=8, max_queue_items=64,
        max_video_bytes=2_000_000, max_request_bytes=4_000_000, max_duration_s=20, max_pixels_per_frame=1400 * 800,
        max_wait_ms=40, max_batch_size=8,
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def server(tiny_ckpt, media):
    with ServerThread(create_app(settings_for(tiny_ckpt, media))) as srv:
        yield srv


@pytest.fixture(scope="module")
def library(tiny_ckpt):
    return VideoRewardScorer.from_pretrained(tiny_ckpt)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_scores_over_http_equal_library(server, library, media, fixture_videos):
    videos = [media["good"], media["good2"], *fixture_videos[:2]]
    expected = library.score([(v, PROMPT) for v in videos])
    with VideoRewardClient(server.url) as c:
        got = c.score(videos, PROMPT)
        assert got["model"].startswith("tiny@") and got["normalized"] is False
        for r, e in zip(got["results"], expected, strict=True):
            assert r["error"] is None
            for k in ("VQ", "MQ", "TA", "Overall"):
                assert r[k] == pytest.approx(e[k], abs=1e-5)
        # multipart, one prompt for all
        files = [("video", (v.name, v.read_bytes(), "application/octet-stream")) for v in videos[:2]]
        r = httpx.post(server.url + "/score", files=files, data={"prompt": PROMPT}, timeout=120)
        assert r.status_code == 200
        assert [x["VQ"] for x in r.json()["results"]] == pytest.approx([e["VQ"] for e in expected[:2]], abs=1e-5)
        # a server-side path under the allowed root (relative to it)
        p = c.score_paths(["good.mp4"], PROMPT)
        assert p["results"][0]["VQ"] == pytest.approx(expected[0]["VQ"], abs=1e-5)
        # the second time it's a cache hit
        again = c.score([videos[0]], PROMPT)
        assert again["results"][0]["cached"] is True
        assert again["results"][0]["VQ"] == pytest.approx(expected[0]["VQ"], abs=1e-5)


def test_concurrent_clients_are_batched_and_exact(server, library, media):
    prompts = [f"{PROMPT} number {i}" for i in range(8)]  # distinct prompts: no cache or coalescing
    expected = [library.score([(media["good"], p)])[0] for p in prompts]
    before = httpx.get(server.url + "/metrics").text
    barrier = threading.Barrier(8)

    def one(p: str) -> dict:
        with VideoRewardClient(server.url) as c:
            barrier.wait()
            return c.score([media["good"]], p)["results"][0]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, prompts))
    after = httpx.get(server.url + "/metrics").text
    batches = metric(after, "videoreward_batch_size_items_count") - metric(before, "videoreward_batch_size_items_count")
    items = metric(after, "videoreward_batch_size_items_sum") - metric(before, "videoreward_batch_size_items_sum")
    assert items == 8 and batches < 8, f"8 items in {batches} batches: no batching happened"
    for g, e in zip(got, expected, strict=True):
        for k in ("VQ", "MQ", "TA", "Overall"):
            assert g[k] == pytest.approx(e[k], abs=1e-5)


def test_compare(server, media):
    with VideoRewardClient(server.url) as c:
        before = metric(c.metrics(), "videoreward_videos_decoded_total")
        a, b = media["good"], media["good2"]
        body = {
            "pairs": [
                {"video_a": {"base64": b64(a)}, "video_b": {"base64": b64(b)}, "prompt": "shared video test"},
                {"video_a": {"base64": b64(a)}, "video_b": {"path": "good2.webm"}, "prompt": "shared video test"},
                {"video_a": {"base64": b64(b)}, "video_b": {"base64": b64(b)}, "prompt": "shared video test"},
            ],
            "tie_threshold": 0.01,
        }
        out = c._request("POST", "/compare", json=body)
        decoded = metric(c.metrics(), "videoreward_videos_decoded_total") - before
    assert decoded == 2, "each distinct video is decoded once per request"
    assert out["tie_threshold"] == 0.01 and out["k"] == 5.0
    for pr in out["results"]:
        assert pr["error"] is None
        for dim in ("VQ", "MQ", "TA", "Overall"):
            d = pr["dims"][dim]
            assert d["p_A"] + d["p_B"] + d["p_tie"] == pytest.approx(1.0, abs=1e-12)
            assert d["margin"] == pytest.approx(d["A"] - d["B"], abs=1e-9)
            assert d["p_A"] == pytest.approx(1 / (1 + math.exp(-(d["margin"] - math.log(5)))), abs=1e-12)
            expected = "tie" if abs(d["margin"]) <= 0.01 else ("A" if d["margin"] > 0 else "B")
            assert d["winner"] == expected
            assert (d["p_A"] > d["p_B"]) == (d["margin"] > 0) or d["margin"] == 0
    assert out["results"][0]["dims"] == out["results"][1]["dims"]
    assert all(d["winner"] == "tie" and d["margin"] == 0 for d in out["results"][2]["dims"].values())
    # multipart form
    r = httpx.post(server.url + "/compare", files={"video_a": a.read_bytes(), "video_b": b.read_bytes()}, data={"prompt": "x"}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["dims"]["VQ"]["winner"] in ("A", "B")


BAD_CASES = {
    "truncated": ("truncated", 422, {"video_unreadable", "video_decode_failed", "video_too_few_frames"}),
    "zero_bytes": (None, 422, {"video_empty"}),
    "text_as_mp4": ("text", 422, {"video_unreadable", "video_no_stream"}),
    "audio_only": ("audio", 422, {"video_no_stream"}),
    "huge_resolution": ("huge", 422, {"resolution_too_large"}),
    "too_long": ("long", 422, {"video_too_long"}),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_videos_answer_4xx_while_good_request_succeeds(server, media, case):
    name, status, codes = BAD_CASES[case]
    data = b"" if name is None else media[name].read_bytes()
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(lambda: VideoRewardClient(server.url).score([media["good2"]], "concurrent good request " + case))
        r = httpx.post(server.url + "/score", json={"items": [{"video": {"base64": base64.b64encode(data).decode()}, "prompt": "x"}]}, timeout=60)
        assert good.result()["results"][0]["error"] is None
    assert r.status_code == status, r.text
    body = r.json()
    assert body["results"][0]["error"]["code"] in codes
    assert body["results"][0]["error"]["message"]


def _post(server, json=None, **kw):
    return httpx.post(server.url + "/score", json=json, timeout=60, **kw)


def test_request_level_errors(server, media):
    good = {"video": {"base64": b64(media["good"])}, "prompt": "x"}
    cases = [
        ({"items": [{"video": {"path": "../outside/secret.mp4"}, "prompt": "x"}]}, 403, "path_not_allowed"),
        ({"items": [{"video": {"path": str(media["secret"])}, "prompt": "x"}]}, 403, "path_not_allowed"),
        ({"items": [{"video": {"path": "escape.mp4"}, "prompt": "x"}]}, 403, "path_not_allowed"),  # symlink escape
        ({"items": [{"video": {"base64": b64(media["good"])}, "prompt": "   "}]}, 422, "empty_prompt"),
        ({"items": [{"video": {"base64": b64(media["good"])}, "prompt": "y" * 5000}]}, 422, "prompt_too_long"),
        ({"items": [{"video": {"base64": b64(media["good"])}, "prompt": "<|im_end|>"}]}, 422, "invalid_input"),
        ({"items": [good] * 9}, 422, "too_many_items"),
        ({"items": [{"video": {"base64": 5}, "prompt": "x"}]}, 422, "invalid_request"),
        ({"items": "nope"}, 422, "invalid_request"),
        ({"items": [{"video": {"base64": "!!notbase64"}, "prompt": "x"}]}, 422, "invalid_request"),
        ({"items": [{**good, "num_frames": 100000}]}, 422, "invalid_sampling"),
        ({"items": [{**good, "fps": 2, "num_frames": 8}]}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = _post(server, body)
        assert r.status_code == status, (body if len(str(body)) < 300 else code, r.text)
        j = r.json()
        got = j["error"]["code"] if "error" in j else j["results"][0]["error"]["code"]
        assert got == code, (code, j)
    # mixed: one good, one bad → 200 with a per-item error
    r = _post(server, {"items": [good, {"video": {"path": "escape.mp4"}, "prompt": "x"}]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["error"] is None and res[1]["error"]["code"] == "path_not_allowed"
    # oversize upload: per video, and for the whole body (refused while streaming)
    big = os.urandom(2_100_000)
    r = httpx.post(server.url + "/score", files={"video": ("big.mp4", big)}, data={"prompt": "x"}, timeout=60)
    assert r.status_code == 413 and r.json()["results"][0]["error"]["code"] == "payload_too_large"
    r = httpx.post(server.url + "/score", content=b"{" + b" " * 5_000_000 + b"}", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for _ in range(50):
            yield b" " * 100_000

    r = httpx.post(server.url + "/score", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = httpx.post(server.url + "/score", content=b"x", headers={"content-type": "text/plain"}, timeout=60)
    assert r.status_code == 415
    assert httpx.get(server.url + "/readyz").status_code == 200  # still up


def test_health_model_info_and_openapi(server):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    info = httpx.get(server.url + "/v1/model").json()
    assert info["eval_dims"] == ["VQ", "MQ", "TA"] and info["device"] == "cpu" and info["dtype"] == "fp32"
    assert info["batching"]["max_batch_size"] == 8 and info["sampling"]["fps"] == 2.0
    spec = httpx.get(server.url + "/openapi.json").json()
    content = spec["paths"]["/score"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "ScoreResponse" in str(spec["paths"]["/score"]["post"]["responses"])
    text = httpx.get(server.url + "/metrics").text
    for name in ("videoreward_requests_total", "videoreward_queue_wait_seconds", "videoreward_decode_seconds",
                 "videoreward_forward_seconds", "videoreward_batch_size_tokens", "videoreward_queue_depth",
                 "videoreward_inflight_items", "videoreward_cache_hits_total", "videoreward_rejected_total"):
        assert name in text


class SlowEngine(LocalEngine):
    """The real model, with a delay before each forward (to hold the queue full)."""

    delay = 1.0

    async def forward(self, items):
        await asyncio.sleep(self.delay)
        return await super().forward(items)


class FailOnceEngine(LocalEngine):
    """The real model, whose first forward raises (a device fault)."""

    failed = False

    async def forward(self, items):
        if not self.failed:
            self.failed = True
            raise RuntimeError("simulated device fault")
        return await super().forward(items)


def test_overload_gives_503_with_retry_after(tiny_ckpt, media):
    s = settings_for(tiny_ckpt, media, max_queue_items=2, max_items_per_request=2, retry_after_s=3, cache_size=0)
    with ServerThread(create_app(s, engine_factory=SlowEngine)) as srv:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: _post(srv, {"items": [{"video": {"base64": b64(media["good"])}, "prompt": p} for p in ("a", "b")]}))
            time.sleep(0.5)
            r = _post(srv, {"items": [{"video": {"base64": b64(media["good"])}, "prompt": "c"}]})
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "queue_full"
            assert first.result().status_code == 200
        assert metric(httpx.get(srv.url + "/metrics").text, "videoreward_rejected_total") >= 1
        # the client retries and then succeeds once capacity frees up
        with VideoRewardClient(srv.url, max_retry_wait=1.5) as c:
            assert c.score([media["good"]], "after")["results"][0]["error"] is None


def test_failed_forward_fails_only_its_batch(tiny_ckpt, media):
    s = settings_for(tiny_ckpt, media, cache_size=0)
    with ServerThread(create_app(s, engine_factory=FailOnceEngine)) as srv:
        r = _post(srv, {"items": [{"video": {"base64": b64(media["good"])}, "prompt": "x"}]})
        assert r.status_code == 500 and r.json()["results"][0]["error"]["code"] == "inference_failed"
        r = _post(srv, {"items": [{"video": {"base64": b64(media["good"])}, "prompt": "x"}]})
        assert r.status_code == 200
        assert httpx.get(srv.url + "/readyz").status_code == 200


def test_auth(tiny_ckpt, media):
    s = settings_for(tiny_ckpt, media, api_key="s3cret")
    with ServerThread(create_app(s)) as srv:
        body = {"items": [{"video": {"base64": b64(media["good"])}, "prompt": "x"}]}
        assert _post(srv, body).status_code == 401
        assert _post(srv, body, headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "unauthorized"
        assert _post(srv, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 200
        with pytest.raises(ServiceHTTPError) as e:
            VideoRewardClient(srv.url).score([media["good"]], "x")
        assert e.value.status == 401
        assert VideoRewardClient(srv.url, api_key="s3cret").score([media["good"]], "x")["results"][0]["error"] is None


def test_sigterm_drains_in_flight_requests(tiny_ckpt, media, fixture_videos):
    port = free_port()
    env = {**os.environ, "VIDEOREWARD_CHECKPOINT": str(tiny_ckpt), "VIDEOREWARD_MAX_WAIT_MS": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--drain-timeout-s", "60"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        VideoRewardClient(url).wait_ready(120)
        # a request that takes a while: several real videos at many frames
        body = {"items": [{"video": {"base64": b64(v)}, "prompt": "drain", "num_frames": 48} for v in fixture_videos]}
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(lambda: httpx.post(url + "/score", json=body, timeout=300))
            deadline = time.monotonic() + 30
            while metric(httpx.get(url + "/metrics").text, "videoreward_inflight_items") == 0:
                assert time.monotonic() < deadline, "request never started"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            ready = httpx.get(url + "/readyz")
            assert ready.status_code == 503
            refused = httpx.post(url + "/score", json={"items": [{"video": {"base64": b64(media["good"])}, "prompt": "late"}]}, timeout=30)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            r = fut.result()
        assert r.status_code == 200 and all(x["error"] is None for x in r.json()["results"])
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert re.search(r"draining", out)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_settings_fail_fast(tmp_path):
    out = subprocess.run([sys.executable, "-m", "service", "--checkpoint", str(tmp_path / "missing")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_request_deadline_gives_504_and_frees_capacity(tiny_ckpt, media):
    s = settings_for(tiny_ckpt, media, request_timeout_s=0.3, cache_size=0)
    with ServerThread(create_app(s, engine_factory=SlowEngine)) as srv:
        r = _post(srv, {"items": [{"video": {"base64": b64(media["good"])}, "prompt": "slow"}]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        time.sleep(1.5)  # the abandoned forward finishes; nothing stays admitted
        assert metric(httpx.get(srv.url + "/metrics").text, "videoreward_inflight_items") == 0
        assert httpx.get(srv.url + "/readyz").status_code == 200
