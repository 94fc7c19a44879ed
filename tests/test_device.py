"""Device handling: clear errors for missing backends, no silent CPU fallback; accelerator runs when present."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from model.device import dist_backend, resolve_device, resolve_dtype
from model.errors import DeviceUnavailableError, InvalidInputError
from model.scorer import VideoRewardScorer
from tests.conftest import ROOT

HAS_NPU_PKG = importlib.util.find_spec("torch_npu") is not None


def test_dtypes():
    assert resolve_dtype("fp32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    with pytest.raises(InvalidInputError, match="unknown dtype"):
        resolve_dtype("int8")


def test_cpu_and_backends():
    assert resolve_device("cpu") == torch.device("cpu")
    assert dist_backend(torch.device("cpu")) == "gloo"
    assert dist_backend(torch.device("cuda", 0)) == "nccl"
    assert dist_backend("npu:0") == "hccl"  # a string: torch.device("npu") needs torch_npu loaded
    with pytest.raises(InvalidInputError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(InvalidInputError, match="bad device index"):
        resolve_device("cuda:x")


@pytest.mark.skipif(HAS_NPU_PKG, reason="torch_npu is installed here")
def test_npu_without_torch_npu_is_a_clear_error_not_a_fallback():
    with pytest.raises(DeviceUnavailableError, match="torch_npu"):
        resolve_device("npu")
    with pytest.raises(DeviceUnavailableError):
        resolve_device("npu:1")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        resolve_device("cuda")


def test_cli_reports_missing_backend_without_traceback(tiny_ckpt, synthetic_videos):
    device = "cuda" if not torch.cuda.is_available() else ("npu" if not HAS_NPU_PKG else None)
    if device is None:
        pytest.skip("both CUDA and torch_npu are present")
    out = subprocess.run(
        [sys.executable, "-m", "model.score", "--checkpoint", str(tiny_ckpt), "--prompt", "x",
         "--video", str(synthetic_videos["landscape_mp4"]), "--device", device],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert json.loads(out.stderr.strip().splitlines()[-1])["error"]["code"] == "device_unavailable"


def _accelerator_matches_cpu(device: str, tiny_ckpt, synthetic_videos):
    vids = [(synthetic_videos["landscape_mp4"], "a"), (synthetic_videos["portrait_webm"], "b c")]
    cpu = VideoRewardScorer.from_pretrained(tiny_ckpt).score(vids)
    for dtype, tol in (("fp32", 1e-3), ("bf16", 5e-2)):
        acc = VideoRewardScorer.from_pretrained(tiny_ckpt, device=device, dtype=dtype).score(vids)
        for a, b in zip(acc, cpu, strict=True):
            for k in b:
                assert a[k] == pytest.approx(b[k], abs=tol), (device, dtype, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_scores_match_cpu(tiny_ckpt, synthetic_videos):
    _accelerator_matches_cpu("cuda", tiny_ckpt, synthetic_videos)


@pytest.mark.skipif(not HAS_NPU_PKG, reason="torch_npu (Ascend NPU) is not installed on this machine")
def test_npu_scores_match_cpu(tiny_ckpt, synthetic_videos):
    _accelerator_matches_cpu("npu", tiny_ckpt, synthetic_videos)
