"""Device and dtype handling, in one place.

``npu`` goes through ``torch_npu``, imported only when asked for; a missing
backend raises :class:`DeviceUnavailableError` with a fix, never a traceback,
and never silently falls back to the CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import torch

from .errors import DeviceUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DEVICE_TYPES = ("cpu", "cuda", "npu")
DIST_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name not in DTYPE_NAMES:
            raise InvalidInputError(f"unsupported dtype {name}; use one of fp32, bf16, fp16")
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise InvalidInputError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return DTYPES[key]


def import_torch_npu() -> object:
    """Import torch_npu (which registers the ``npu`` device with torch) or explain how to get it."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError as e:
        raise DeviceUnavailableError(
            "device 'npu' needs the Ascend torch_npu package and the CANN toolkit: "
            "install with `pip install '.[npu]'` on an Ascend host (see README), or use --device cpu/cuda"
        ) from e


def _npu_available() -> bool:
    import_torch_npu()
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """Turn 'cpu', 'cuda', 'cuda:1', 'npu', 'npu:0' or 'auto' into a usable torch.device.

    'auto' picks npu, then cuda, then cpu, but only among backends that are installed.
    """
    spec = str(name).strip().lower()
    if spec == "auto":
        if importlib.util.find_spec("torch_npu") is not None and _npu_available():
            spec = "npu"
        elif torch.cuda.is_available():
            spec = "cuda"
        else:
            spec = "cpu"
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_TYPES:
        raise InvalidInputError(f"unknown device {name!r}; use cpu, cuda[:N], npu[:N] or auto")
    if index and not index.isdigit():
        raise InvalidInputError(f"bad device index in {name!r}; use e.g. cuda:0")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "device 'cuda' was asked for but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                "check the driver and CUDA_VISIBLE_DEVICES, or use --device cpu"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {spec} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif kind == "npu":
        if not _npu_available():
            raise DeviceUnavailableError(
                "device 'npu' was asked for but torch_npu reports no available NPU; check the Ascend driver, "
                "CANN environment (source set_env.sh) and ASCEND_RT_VISIBLE_DEVICES"
            )
        count = torch.npu.device_count()  # type: ignore[attr-defined]
        if index and int(index) >= count:
            raise DeviceUnavailableError(f"device {spec} does not exist: {count} NPU(s) visible")
    return torch.device(spec)


def dist_backend(device: torch.device | str) -> str:
    """The collective backend for a device (or device type): cpu→gloo, cuda→nccl, npu→hccl."""
    kind = device.type if isinstance(device, torch.device) else str(device).partition(":")[0]
    return DIST_BACKENDS[kind]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]
