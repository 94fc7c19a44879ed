"""Run the scoring service.

    python -m service --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--device cpu|cuda|npu] [--dtype fp32|bf16|fp16]

Tensor-parallel, one model sharded over N devices (rank 0 serves HTTP):

    torchrun --nproc-per-node N -m service --checkpoint DIR --tp N [--device cuda|npu|cpu] [--port P]

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
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from model.errors import VideoRewardError

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
        self.exit_code = 0
        app.state.svc.on_fatal = self.fatal

    def fatal(self, reason: str) -> None:
        """Unrecoverable engine failure: answer what is in flight (503), then exit non-zero."""
        self.exit_code = 1
        self.should_exit = True

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


def _serve(settings: Settings, app: Any) -> int:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    logger.info(
        "starting: checkpoint %s on %s/%s (tp=%d), listening on http://%s:%d", Path(settings.checkpoint).resolve(),
        settings.device, settings.dtype, settings.tp, settings.host, settings.port,
    )
    server.run()
    return server.exit_code


def _main_tensor_parallel(settings: Settings) -> int:
    import torch.distributed as dist

    from .distributed import TensorParallelEngine, check_tp_degree, init_distributed, load_tp_scorer, worker_loop

    try:
        check_tp_degree(settings.checkpoint, settings.tp)
        ctx = init_distributed(settings.device, settings.tp, settings.tp_timeout_s)
    except VideoRewardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ctx.rank != 0:
        try:
            scorer, _ = load_tp_scorer(settings.checkpoint, settings.dtype, ctx)
        except Exception as e:
            logger.error("rank %d: model load failed: %s", ctx.rank, e)
            os._exit(1)
        code = worker_loop(scorer, ctx)
        if code != 0:
            os._exit(code)  # the group is broken: destroying it could block
        dist.destroy_process_group()
        return 0
    per_rank: list = []

    def load():
        scorer, sizes = load_tp_scorer(settings.checkpoint, settings.dtype, ctx)
        per_rank.extend(sizes)
        return scorer

    holder: dict[str, Any] = {}

    def engine(scorer):
        holder["engine"] = TensorParallelEngine(
            scorer, ctx, per_rank, timeout_s=settings.tp_timeout_s, heartbeat_s=settings.tp_heartbeat_s,
            on_dead=app.state.svc.fatal,
        )
        return holder["engine"]

    app = create_app(settings, scorer_factory=load, engine_factory=engine)
    code = _serve(settings, app)
    if code != 0:
        logging.shutdown()
        os._exit(code)  # a rank is gone: skip process-group teardown, which could block
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            msg = err["msg"]
            if loc == "checkpoint" and err["type"] == "missing":
                # no silent default: serving the demo model must be a choice (scripts/serve-demo.sh makes it)
                msg = (
                    "no checkpoint: pass --checkpoint DIR (or set VIDEOREWARD_CHECKPOINT) to serve a serving "
                    "checkpoint; `bash scripts/serve-demo.sh` builds and serves the synthetic demo model"
                )
            print(f"error: {loc}: {msg}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.tp > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _main_tensor_parallel(settings)
    return _serve(settings, create_app(settings))


if __name__ == "__main__":
    sys.exit(main())
