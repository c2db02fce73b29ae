"""Benchmark the attention op alone: full causal attention vs LongLoRA S2-Attn, forward + backward.

For each sequence length T, random q, k, v (B, H, T, D) with requires_grad go through the pattern
function and ``backward`` of a random output gradient; we report the median wall time and the peak
bytes allocated by the op (CPU: ``pipeline.train.memory``'s tensor-allocation tracker, minus outputs
that alias an input -- a view of q allocates nothing, though that tracker counts a view of a tensor made
before the region as new bytes; CUDA: the allocator's peak), both patterns in the same run. Runs on CPU,
and on CUDA when available.

    python scripts/bench_attention.py [--quick] [--json PATH] [--device cpu|cuda|all]

JSON records (the scripts/bench_*.py convention): {"name", "baseline", "value", "ratio", "unit"},
with baseline = full attention, value = S2-Attn, ratio = baseline / value (> 1: S2-Attn is better).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.patterns import PATTERNS, AttentionConfig  # noqa: E402
from pipeline.train.memory import AllocationTracker, measure_peak  # noqa: E402

LENGTHS = [2048, 4096, 8192, 16384]
QUICK_LENGTHS = [1024, 2048]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(B: int, H: int, Hkv: int, T: int, D: int, device: torch.device, dtype: torch.dtype):
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, H, T, D, device=device, dtype=dtype)
    return q, k, v, grad


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs (CPU: new storages only; CUDA: the allocator's peak)."""
    if device.type == "cuda":
        with measure_peak(None, device) as reading:
            fn()
        return reading.region_peak_bytes
    with AllocationTracker() as tracker:
        fn()
    return tracker.peak


def fwd_bwd(fn: Callable[..., torch.Tensor], cfg: AttentionConfig, q, k, v, grad) -> None:
    fn(q, k, v, cfg).backward(grad)


def bench_one(pattern: str, cfg: AttentionConfig, shape: tuple[int, int, int, int, int],
              device: torch.device, dtype: torch.dtype, repeats: int) -> tuple[float, int]:
    """Median fwd+bwd seconds over ``repeats`` (after one warm-up) and peak bytes of one run."""
    fn = PATTERNS.get(pattern)
    B, H, Hkv, T, D = shape
    q, k, v, grad = _inputs(B, H, Hkv, T, D, device, dtype)
    fwd_bwd(fn, cfg, q, k, v, grad)  # warm-up (kernel selection, allocator)
    times = []
    for _ in range(repeats):
        q.grad = k.grad = v.grad = None
        _sync(device)
        start = time.perf_counter()
        fwd_bwd(fn, cfg, q, k, v, grad)
        _sync(device)
        times.append(time.perf_counter() - start)
    q.grad = k.grad = v.grad = None
    gc.collect()
    # Memory in a separate, untimed run: the CPU tracker intercepts every op.
    return statistics.median(times), peak_bytes(lambda: fwd_bwd(fn, cfg, q, k, v, grad), device)


def run(devices: list[torch.device], lengths: list[int], B: int, H: int, Hkv: int, D: int,
        ratio: float, repeats: int) -> list[dict]:
    records: list[dict] = []
    for device in devices:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        torch.manual_seed(0)
        print(f"\n{device.type}: B={B} H={H} Hkv={Hkv} D={D} {dtype}, group_ratio={ratio}, "
              f"median of {repeats}")
        print(f"{'T':>6} {'full ms':>10} {'S2 ms':>10} {'speedup':>8} {'full MiB':>10} {'S2 MiB':>10} "
              f"{'mem ratio':>9}")
        for T in lengths:
            cfg = AttentionConfig(train="shifted_sparse", group_ratio=ratio)
            shape = (B, H, Hkv, T, D)
            full_s, full_b = bench_one("full", cfg, shape, device, dtype, repeats)
            s2_s, s2_b = bench_one("shifted_sparse", cfg, shape, device, dtype, repeats)
            print(f"{T:>6} {full_s * 1e3:>10.1f} {s2_s * 1e3:>10.1f} {full_s / s2_s:>7.2f}x "
                  f"{full_b / 2**20:>10.1f} {s2_b / 2**20:>10.1f} {full_b / max(s2_b, 1):>8.2f}x", flush=True)
            tag = f"{device.type}/B{B}_H{H}_Hkv{Hkv}_D{D}/T{T}"
            records.append({"name": f"attention_s2_vs_full/fwd_bwd_time/{tag}", "baseline": full_s * 1e3,
                            "value": s2_s * 1e3, "ratio": full_s / s2_s, "unit": "ms"})
            records.append({"name": f"attention_s2_vs_full/peak_memory/{tag}", "baseline": float(full_b),
                            "value": float(s2_b), "ratio": full_b / max(s2_b, 1), "unit": "bytes"})
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"short run: T in {QUICK_LENGTHS}, one repeat")
    parser.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: CPU, plus CUDA when available")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"override T (default {LENGTHS})")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--group-ratio", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 3, quick 1)")
    args = parser.parse_args(argv)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    repeats = args.repeats or (1 if args.quick else 3)
    records = run(devices, lengths, args.batch, args.heads, args.kv_heads or args.heads, args.head_dim,
                  args.group_ratio, repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return records


if __name__ == "__main__":
    main()
