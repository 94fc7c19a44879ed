"""A small typed client for the scoring service, with retries on 503 that honour Retry-After.

    python -m service.client score   --url http://127.0.0.1:8000 --prompt TEXT a.mp4 [b.mp4 ...]
    python -m service.client compare --url http://127.0.0.1:8000 --prompt TEXT a.mp4 b.mp4

Both print the JSON response. ``--api-key`` (or ``VIDEOREWARD_API_KEY``) sends a bearer token.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx


class ServiceHTTPError(Exception):
    """A non-2xx answer: ``status`` and the body's error ``code`` / ``message``."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        err = body.get("error") if isinstance(body, dict) else None
        self.code = err.get("code") if isinstance(err, dict) else None
        self.message = err.get("message") if isinstance(err, dict) else str(body)
        super().__init__(f"HTTP {status} {self.code}: {self.message}")


class VideoRewardClient:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 5,
        max_retry_wait: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VideoRewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, allow_partial: bool = False, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            r = self._http.request(method, path, **kwargs)
            if r.status_code == 503 and attempt < self.retries:
                attempt += 1
                wait = float(r.headers.get("Retry-After", 2 ** min(attempt, 5)))
                time.sleep(min(wait, self.max_retry_wait))
                continue
            try:
                body = r.json()
            except ValueError:
                body = r.text
            if r.status_code >= 400:
                raise ServiceHTTPError(r.status_code, body)
            return body

    # -- scoring -----------------------------------------------------------------------------
    def score(
        self,
        videos: Sequence[str | Path | bytes],
        prompt: str | Sequence[str],
        *,
        normalize: bool | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
        max_pixels: int | None = None,
    ) -> dict:
        """Upload videos (paths or bytes) as JSON base64 items; returns the /score response."""
        prompts = [prompt] * len(videos) if isinstance(prompt, str) else list(prompt)
        items = []
        for v, p in zip(videos, prompts, strict=True):
            item: dict[str, Any] = {"video": {"base64": _b64(v)}, "prompt": p}
            for k, val in (("fps", fps), ("num_frames", num_frames), ("max_pixels", max_pixels)):
                if val is not None:
                    item[k] = val
            items.append(item)
        body: dict[str, Any] = {"items": items}
        if normalize is not None:
            body["normalize"] = normalize
        return self._request("POST", "/score", json=body)

    def score_paths(self, paths: Sequence[str], prompt: str, **kw: Any) -> dict:
        """Score server-side paths (under the server's allowed roots)."""
        body = {"items": [{"video": {"path": p}, "prompt": prompt} for p in paths], **kw}
        return self._request("POST", "/score", json=body)

    def compare(
        self,
        pairs: Sequence[tuple[str | Path | bytes, str | Path | bytes, str]],
        *,
        normalize: bool | None = None,
        tie_threshold: float | None = None,
    ) -> dict:
        body: dict[str, Any] = {
            "pairs": [{"video_a": {"base64": _b64(a)}, "video_b": {"base64": _b64(b)}, "prompt": p} for a, b, p in pairs]
        }
        if normalize is not None:
            body["normalize"] = normalize
        if tie_threshold is not None:
            body["tie_threshold"] = tie_threshold
        return self._request("POST", "/compare", json=body)

    # -- info --------------------------------------------------------------------------------
    def model(self) -> dict:
        return self._request("GET", "/v1/model")

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def metrics(self) -> str:
        return self._http.get("/metrics").text

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"service not ready after {timeout:g} s")


def _b64(v: str | Path | bytes) -> str:
    data = v if isinstance(v, bytes) else Path(v).read_bytes()
    return base64.b64encode(data).decode("ascii")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.client", description="Client for the VideoReward service")
    p.add_argument("command", choices=["score", "compare"])
    p.add_argument("videos", nargs="+")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--prompt", required=True)
    p.add_argument("--api-key", default=os.environ.get("VIDEOREWARD_API_KEY"))
    p.add_argument("--no-norm", action="store_true")
    args = p.parse_args(argv)
    norm = False if args.no_norm else None
    try:
        with VideoRewardClient(args.url, api_key=args.api_key) as c:
            if args.command == "score":
                out = c.score(args.videos, args.prompt, normalize=norm)
            else:
                if len(args.videos) != 2:
                    p.error("compare takes exactly two videos: A and B")
                out = c.compare([(args.videos[0], args.videos[1], args.prompt)], normalize=norm)
    except ServiceHTTPError as e:
        print(json.dumps({"status": e.status, **(e.body if isinstance(e.body, dict) else {"error": e.body})}), file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(json.dumps({"error": {"code": "connection_failed", "message": str(e)}}), file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
