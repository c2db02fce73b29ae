"""Device and precision flags shared by the benchmarks (``--device``, ``--dtype``), and GPU peaks for MFU.

``--dtype bfloat16`` means mixed precision as training runs it (Lightning's ``bf16-mixed``): fp32
weights and optimizer states, matmuls and attention under ``torch.autocast(bfloat16)``. Decode
benchmarks instead cast the model (inference holds bf16 weights and a bf16 KV cache).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's data sheets, matched on the name
# torch.cuda.get_device_name() reports; most specific first. Others: pass --peak-tflops.
PEAK_BF16_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12),
    ("L40S", 362.1e12),
)


def add_device_args(ap: argparse.ArgumentParser, default_device: str = "cpu") -> None:
    ap.add_argument("--device", default=default_device, help=f"cpu or cuda[:N] (default {default_device})")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32",
                    help="bfloat16: autocast mixed precision (training) or a bf16 model (decode)")


def resolve(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The device and dtype the flags ask for, or a usage error before any work starts."""
    if not str(args.device).startswith(("cpu", "cuda")):
        ap.error(f"--device={args.device}: allowed cpu or cuda[:N]")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device} but no CUDA device is available")
    return device, DTYPES[args.dtype]


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock times cover the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for ``dtype`` below float32; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device, dtype: torch.dtype, override_tflops: float | None) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None when unknown: MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    return peak_bf16_for(torch.cuda.get_device_name(device))


def peak_bf16_for(gpu_name: str) -> float | None:
    """The dense bf16 peak of the GPU ``torch.cuda.get_device_name`` calls ``gpu_name`` (None: unlisted)."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in gpu_name), None)
