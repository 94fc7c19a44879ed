"""Tensor-parallel serving: one model sharded over N ranks, one HTTP front on rank 0.

    torchrun --nproc-per-node N -m service --checkpoint DIR --tp N [--device cpu|cuda|npu] [--port P]

- Each rank initialises the process group itself, with the backend chosen by
  device (cpu → gloo, cuda → nccl, npu → hccl via torch_npu), builds a 1-D
  DeviceMesh and loads the checkpoint through transformers' tensor-parallel
  support (the config's ``base_model_tp_plan``: q/k/v/gate/up column-wise,
  o/down row-wise). The vision tower and merger are replicated on every rank
  (see the README for the measurement behind that choice).
- Rank 0 runs HTTP, limits and the batcher. For each batch it broadcasts a
  small int64 header (command and shapes) and then the batch tensors; all
  ranks run the forward together and only rank 0 returns results. Nothing is
  pickled between processes.
- When idle, rank 0 broadcasts a heartbeat every ``tp_heartbeat_s``; every
  collective has the process group's timeout (``tp_timeout_s``). A dead or
  stuck rank therefore surfaces on every rank within a bounded time: rank 0
  marks the engine dead (readiness false, in-flight items answered with 503
  ``engine_unavailable``) and exits non-zero, and workers exit non-zero, so
  torchrun (or a supervisor) restarts the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from model.checkpoint import load_checkpoint
from model.device import dist_backend, import_torch_npu, resolve_device, resolve_dtype
from model.errors import CheckpointError, InvalidInputError
from model.inputs import PreparedItem
from model.scorer import VideoRewardScorer

logger = logging.getLogger(__name__)

CMD_SHUTDOWN, CMD_HEARTBEAT, CMD_FORWARD = 0, 1, 2
HEADER_LEN = 6  # [command, B, T, P, patch_dim, reserved]


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    mesh: object

    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: the CPU for gloo, the accelerator otherwise."""
        return torch.device("cpu") if self.backend == "gloo" else self.device


def check_tp_degree(checkpoint: Path, tp: int) -> None:
    """Refuse a TP degree that does not divide the heads, KV heads and MLP width."""
    from transformers import Qwen2VLConfig

    if tp < 1:
        raise InvalidInputError(f"--tp must be >= 1, got {tp}")
    try:
        text = Qwen2VLConfig.from_pretrained(checkpoint).text_config
    except Exception as e:
        raise CheckpointError(f"cannot read {checkpoint}/config.json: {e}") from e
    for name, value in (
        ("attention heads", text.num_attention_heads),
        ("KV heads", text.num_key_value_heads),
        ("MLP intermediate size", text.intermediate_size),
    ):
        if value % tp:
            valid = [d for d in range(1, text.num_key_value_heads + 1)
                     if text.num_attention_heads % d == 0 and text.num_key_value_heads % d == 0 and text.intermediate_size % d == 0]
            raise InvalidInputError(
                f"--tp {tp} does not divide the model's {name} ({value}); valid degrees for this checkpoint: {valid}"
            )


def init_distributed(device: str, tp: int, timeout_s: float) -> DistContext:
    """Initialise the process group (backend by device) and a 1-D 'tp' DeviceMesh. Needs torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world != tp:
        raise InvalidInputError(
            f"--tp {tp} needs {tp} ranks started by torchrun (WORLD_SIZE is {world}): "
            f"torchrun --nproc-per-node {tp} -m service --checkpoint DIR --tp {tp}"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = str(device).partition(":")[0]
    if kind == "npu":
        import_torch_npu()  # registers the npu device and the hccl backend
    if kind == "auto":
        kind = resolve_device("auto").type
    dev = resolve_device(f"{kind}:{local_rank}" if kind != "cpu" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif dev.type == "npu":
        torch.npu.set_device(dev)  # type: ignore[attr-defined]
    backend = dist_backend(dev)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(dev.type, (tp,), mesh_dim_names=("tp",))
    logger.info("rank %d/%d: process group up (%s on %s)", rank, world, backend, dev)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend, mesh=mesh)


def param_bytes(model: torch.nn.Module) -> dict[str, int]:
    """This rank's parameter bytes: sharded (local shards of Shard-placed DTensors) and replicated (the rest)."""
    from torch.distributed.tensor import DTensor, Shard

    sharded = replicated = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        size = local.numel() * local.element_size()
        if isinstance(p, DTensor) and any(isinstance(pl, Shard) for pl in p.placements):
            sharded += size
        else:
            replicated += size
    return {"sharded": sharded, "replicated": replicated, "total": sharded + replicated}


def load_tp_scorer(checkpoint: Path, dtype: str, ctx: DistContext) -> tuple[VideoRewardScorer, list[dict[str, int]]]:
    """Load this rank's shard; return the scorer and every rank's pid and parameter bytes (collective)."""
    from transformers.distributed.configuration_utils import DistributedConfig

    dt = resolve_dtype(dtype)
    loaded = load_checkpoint(
        checkpoint, dtype=dt, distributed_config=DistributedConfig(tp_size=ctx.world_size), device_mesh=ctx.mesh
    )
    loaded.model.to(ctx.device)
    mine = param_bytes(loaded.model)
    local = torch.tensor([mine["sharded"], mine["replicated"], os.getpid()], dtype=torch.int64, device=ctx.comm_device)
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)  # also a barrier: every rank has loaded
    per_rank = [
        {"rank": r, "pid": int(g[2]), "sharded": int(g[0]), "replicated": int(g[1]), "total": int(g[0] + g[1])}
        for r, g in enumerate(gathered)
    ]
    return VideoRewardScorer(loaded, ctx.device, dt), per_rank


# -- the wire format: header + tensors, broadcast from rank 0 ----------------------------------
def _broadcast_batch(ctx: DistContext, batch: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0 sends ``batch``; other ranks receive into fresh buffers. Returns the batch on every rank."""
    dev = ctx.comm_device
    if ctx.rank == 0:
        assert batch is not None
        ids = batch["input_ids"]
        pv = batch["pixel_values_videos"]
        header = torch.tensor([CMD_FORWARD, ids.shape[0], ids.shape[1], pv.shape[0], pv.shape[1], 0], dtype=torch.int64)
        _bcast(header.to(dev))
        out = {
            "input_ids": ids.to(torch.int64),
            "attention_mask": batch["attention_mask"].to(torch.int64),
            "mm_token_type_ids": batch["mm_token_type_ids"].to(torch.int64),
            "pixel_values_videos": pv.to(torch.float32),
            "video_grid_thw": batch["video_grid_thw"].to(torch.int64),
        }
        for key in out:
            out[key] = out[key].to(dev).contiguous()
            _bcast(out[key])
        return out
    raise AssertionError("workers receive with recv_command")


def _bcast(t: torch.Tensor) -> None:
    dist.broadcast(t, src=0)


def _send_command(ctx: DistContext, cmd: int) -> None:
    _bcast(torch.tensor([cmd, 0, 0, 0, 0, 0], dtype=torch.int64, device=ctx.comm_device))


def _recv(ctx: DistContext) -> tuple[int, dict[str, torch.Tensor] | None]:
    dev = ctx.comm_device
    header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=dev)
    _bcast(header)
    cmd, b, t, p, d = (int(x) for x in header[:5].tolist())
    if cmd != CMD_FORWARD:
        return cmd, None
    shapes = {
        "input_ids": ((b, t), torch.int64),
        "attention_mask": ((b, t), torch.int64),
        "mm_token_type_ids": ((b, t), torch.int64),
        "pixel_values_videos": ((p, d), torch.float32),
        "video_grid_thw": ((b, 3), torch.int64),
    }
    out = {}
    for key, (shape, dtype) in shapes.items():
        buf = torch.empty(shape, dtype=dtype, device=dev)
        _bcast(buf)
        out[key] = buf
    return cmd, out


def _run_model(scorer: VideoRewardScorer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    dev = scorer.device
    kwargs = {k: v.to(dev) for k, v in batch.items()}
    kwargs["pixel_values_videos"] = kwargs["pixel_values_videos"].to(scorer.dtype)
    kwargs["mm_token_type_ids"] = kwargs["mm_token_type_ids"].to(torch.int32)
    with torch.inference_mode():
        return scorer.model(**kwargs).float().cpu()


def worker_loop(scorer: VideoRewardScorer, ctx: DistContext) -> int:
    """Ranks > 0: receive commands from rank 0 and run every forward with it. Returns the exit code."""
    terminating = False

    def on_term(signum: int, frame: object) -> None:  # rank 0 coordinates shutdown; remember we were asked
        nonlocal terminating
        terminating = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    logger.info("rank %d: serving forwards for rank 0", ctx.rank)
    while True:
        try:
            cmd, batch = _recv(ctx)
        except Exception as e:  # rank 0 died, or a collective timed out
            if terminating:
                logger.info("rank %d: shutting down", ctx.rank)
                return 0
            logger.error("rank %d: lost rank 0 (%s); exiting so the group restarts", ctx.rank, e)
            return 1
        if cmd == CMD_SHUTDOWN:
            logger.info("rank %d: shutdown from rank 0", ctx.rank)
            return 0
        if cmd == CMD_HEARTBEAT:
            continue
        assert batch is not None
        try:
            _run_model(scorer, batch)
        except Exception as e:
            logger.error("rank %d: forward failed (%s); exiting so the group restarts", ctx.rank, e)
            return 1


class TensorParallelEngine:
    """Rank 0's engine: broadcasts each batch, runs its share of the forward, returns the rewards.

    All collectives run on one thread, in order. Any collective failure or a
    forward that outlives ``timeout_s`` makes the engine dead for good and
    calls ``on_dead`` (the server then answers 503 and exits non-zero).
    """

    def __init__(
        self,
        scorer: VideoRewardScorer,
        ctx: DistContext,
        per_rank_bytes: list[dict[str, int]],
        *,
        timeout_s: float,
        heartbeat_s: float,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        self.scorer = scorer
        self.ctx = ctx
        self.per_rank_bytes = per_rank_bytes
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.on_dead = on_dead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tp-collectives")
        self._dead: str | None = None
        self._closed = False
        self._last_use = time.monotonic()
        self._busy = False
        self._heartbeat_task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._closed

    def info(self) -> dict:
        return {
            "kind": "tensor_parallel",
            "tp": self.ctx.world_size,
            "backend": self.ctx.backend,
            "alive": self.alive,
            "dead_reason": self._dead,
            "vision_tower": "replicated",
            "per_rank_parameter_bytes": self.per_rank_bytes,
        }

    def _die(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
            logger.error("tensor-parallel engine dead: %s", reason)
            if self.on_dead is not None:
                self.on_dead(reason)

    async def _call(self, fn: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        from .errors import ServiceError

        if not self.alive:
            raise ServiceError("engine_unavailable", f"the tensor-parallel group is down ({self._dead or 'closed'})")
        loop = asyncio.get_running_loop()
        self._busy = True
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, fn), timeout=self.timeout_s)
        except TimeoutError:
            self._die(f"a collective did not finish within {self.timeout_s:g} s (a rank is stuck or gone)")
            raise ServiceError("engine_unavailable", "the tensor-parallel group stopped answering") from None
        except Exception as e:
            self._die(f"collective failed: {type(e).__name__}: {e}")
            raise ServiceError("engine_unavailable", "a tensor-parallel rank failed") from None
        finally:
            self._busy = False
            self._last_use = time.monotonic()

    async def forward(self, items: Sequence[PreparedItem]) -> torch.Tensor:
        batch = self.scorer.collate(items).as_kwargs()

        def run() -> torch.Tensor:
            sent = _broadcast_batch(self.ctx, batch)
            return _run_model(self.scorer, sent)

        out = await self._call(run)
        assert out is not None
        return out

    def start_heartbeat(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="tp-heartbeat")

    async def _heartbeat(self) -> None:
        while self.alive:
            await asyncio.sleep(self.heartbeat_s / 2)
            if not self._busy and time.monotonic() - self._last_use >= self.heartbeat_s:
                try:
                    await self._call(lambda: _send_command(self.ctx, CMD_HEARTBEAT))
                except Exception:
                    return

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self.alive:
            try:
                await self._call(lambda: _send_command(self.ctx, CMD_SHUTDOWN))
            except Exception:
                pass
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
