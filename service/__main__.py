"""Run the scoring service.

    python -m service --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--device cpu|cuda|npu] [--dtype fp32|bf16|fp16]

Every option is also an environment variable with the prefix ``VIDEOREWARD_``
(``VIDEOREWARD_CHECKPOINT=DIR python -m service``); command-line flags win.
See ``python -m service --help`` for all limits and batching options.

On SIGTERM (or Ctrl-C) the server stops being ready, refuses new work with
503, lets in-flight requests finish for up to ``--drain-timeout-s`` seconds,
then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .settings import Settings

logger = logging.getLogger("service")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service", description="VideoReward scoring service")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if name == "allowed_roots":
            p.add_argument(flag, nargs="*", default=None, help="directories server-side paths may point into")
        elif name == "api_key":
            p.add_argument(flag, default=None, help="bearer token for scoring routes (prefer the env var)")
        else:
            p.add_argument(flag, default=None, help=help_text)
    return p


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, app: Any, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app_ref = app
        self.drain_timeout_s = drain_timeout_s
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = self.app_ref.state.svc
        if self._draining:  # a second signal: stop now
            self.force_exit = True
            return super().handle_exit(sig, frame)
        self._draining = True
        state.draining = True
        state.metrics.ready.set(0)
        logger.info("signal %s: draining (up to %.0f s), readiness is false", signal.Signals(sig).name, self.drain_timeout_s)
        asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        state = self.app_ref.state.svc
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline:
            busy = state.pipeline.admitted if state.pipeline is not None else 0
            if busy == 0:
                break
            await asyncio.sleep(0.05)
        else:
            logger.warning("drain timeout: %d items still in flight", state.pipeline.admitted if state.pipeline else 0)
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            print(f"error: {loc}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    logger.info(
        "starting: checkpoint %s on %s/%s, listening on http://%s:%d", Path(settings.checkpoint).resolve(),
        settings.device, settings.dtype, settings.host, settings.port,
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
