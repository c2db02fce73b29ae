"""The fused CPU selective scan (models/native/selective_scan.c), built on first use and called through ctypes.

Why our own C and not a library: mamba-ssm's fused scan is CUDA-only, and the PyTorch scan (models/scan.py)
is bound by memory passes over state-sized tensors (the scan is ~2/3 of a Mamba training step on CPU). The C
file needs no PyTorch headers, so it builds with the system C compiler in about a second (a torch C++
extension takes a minute); the library is cached under ``$LONGCTX_NATIVE_CACHE`` (default
``~/.cache/longctx/native``), keyed by the source, the flags and this CPU's feature flags, so a home directory
shared by machines with different CPUs never loads a library built for another instruction set.

Where no C compiler exists (or the build fails) ``available()`` is False and models/scan.py keeps the PyTorch
scan: the fused scan is a fast path, never a requirement. It computes in float32 only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
import torch.nn.functional as F

SOURCE = os.path.join(os.path.dirname(__file__), "native", "selective_scan.c")
SOFTPLUS_THRESHOLD = 20.0  # F.softplus's: above it softplus(x) = x
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build(compiler: str) -> str:
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    cache = os.environ.get("LONGCTX_NATIVE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx", "native"))
    path = os.path.join(cache, f"selective_scan-{key}.so")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        # built aside, then renamed: concurrent jobs never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, SOURCE, "-o", tmp, "-lm"], check=True, capture_output=True, text=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


@functools.lru_cache(maxsize=1)
def _library() -> Optional[ctypes.CDLL]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or os.environ.get("LONGCTX_NATIVE_SCAN", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(_build(compiler))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(f"the fused CPU selective scan did not build ({compiler}): {detail}; "
                      "Mamba keeps the PyTorch scan (models/scan.py)", stacklevel=3)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ss_forward.argtypes = [ptr, ptr, ptr, ptr, i64, i64]
    lib.ss_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64]
    for fn in (lib.ss_forward, lib.ss_backward):
        fn.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True where the fused scan built (or was cached) on this machine; LONGCTX_NATIVE_SCAN=0 turns it off."""
    return _library() is not None


def supports(*tensors: Optional[torch.Tensor]) -> bool:
    """The fused scan takes float32 CPU tensors only."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


_pool: Optional[ThreadPoolExecutor] = None


def _run(fn, B: int, *args) -> None:
    """fn(*args, b0, b1) over the batch rows, split across torch's intra-op threads (ctypes drops the GIL)."""
    global _pool
    threads = min(torch.get_num_threads(), B)
    if threads <= 1:
        status = [fn(*args, 0, B)]
    else:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads)
        bounds = [B * i // threads for i in range(threads + 1)]
        status = list(_pool.map(lambda i: fn(*args, bounds[i], bounds[i + 1]), range(threads)))
    if any(status):
        raise MemoryError("the fused CPU selective scan could not allocate its work buffers")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, X, L) -> a (B, L, X) view with unit stride on X (a copy only where the input lacks it)."""
    rows = t.transpose(1, 2)
    return rows if rows.stride(2) == 1 else rows.contiguous()


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])


class NativeScan(torch.autograd.Function):
    """selective_scan's contract (models/scan.py) for float32 CPU tensors: (y (B, D, L), last state (B, D, N))."""

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus):
        raw = _rows(delta)
        if bias is not None:
            raw = raw + bias
        dl = F.softplus(raw) if softplus else raw  # (B, L, D); the scan takes the step size itself
        rows = [_rows(u), dl if dl.stride(2) == 1 else dl.contiguous(), _rows(Bm), _rows(Cm),
                None if z is None else _rows(z)]
        At, D = A.t().contiguous(), None if D is None else D.contiguous()  # states are (N, D) in the scan
        h0 = None if h0 is None else h0.transpose(1, 2).contiguous()
        Bsz, L, Dn = rows[0].shape
        N = A.shape[1]
        dims = (ctypes.c_int64 * 7)(Bsz, L, Dn, N, D is not None, z is not None, h0 is not None)
        pairs = [(t.stride(0), t.stride(1)) if t is not None else (0, 0) for t in rows]
        strides = (ctypes.c_int64 * 10)(*[s for pair in pairs for s in pair])
        ins = [rows[0], rows[1], At, rows[2], rows[3], D, rows[4], h0]
        y = u.new_empty(Bsz, L, Dn)
        last = u.new_empty(Bsz, N, Dn)
        _run(_library().ss_forward, Bsz, dims, strides, _pointers(ins), _pointers([y, last]))
        # raw (delta + bias, before the softplus) is kept, not the step sizes: the backward recomputes them
        ctx.save_for_backward(ins[0], raw, *ins[2:])
        ctx.shape, ctx.strides, ctx.softplus, ctx.has_bias = tuple(dims), tuple(strides), softplus, bias is not None
        return y.transpose(1, 2), last.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, raw, At, Bm, Cm, D, z, h0 = ctx.saved_tensors
        dl = F.softplus(raw) if ctx.softplus else raw
        dl = dl if dl.stride(2) == 1 else dl.contiguous()
        ins = [u, dl, At, Bm, Cm, D, z, h0]
        Bsz, L, Dn = u.shape
        N = At.shape[0]
        strides = list(ctx.strides)
        strides[2:4] = dl.stride(0), dl.stride(1)
        gy = torch.zeros_like(u) if grad_y is None else grad_y.transpose(1, 2).contiguous()
        glast = None if grad_last is None else grad_last.transpose(1, 2).contiguous()  # (B, N, D)
        du, ddl = u.new_empty(Bsz, L, Dn), u.new_empty(Bsz, L, Dn)
        dz = u.new_empty(Bsz, L, Dn) if z is not None else du  # never written without z
        dB, dC = u.new_empty(Bsz, L, N), u.new_empty(Bsz, L, N)
        dA, dD, dh0 = u.new_empty(Bsz, N, Dn), u.new_empty(Bsz, Dn), u.new_empty(Bsz, N, Dn)
        _run(_library().ss_backward, Bsz, (ctypes.c_int64 * 7)(*ctx.shape), (ctypes.c_int64 * 10)(*strides),
             _pointers(ins), gy.data_ptr(), None if glast is None else glast.data_ptr(),
             _pointers([du, ddl, dz, dB, dC, dA, dD, dh0]))
        if ctx.softplus:  # d softplus(x) / dx = sigmoid(x), and 1 above F.softplus's threshold, where it is x
            ddl = ddl * torch.where(raw > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(raw))
        t = lambda g: g.transpose(1, 2)  # noqa: E731  (B, L, X) -> (B, X, L), the inputs' shapes
        return (t(du), t(ddl), dA.sum(0).t(), t(dB), t(dC), None if D is None else dD.sum(0),
                None if z is None else t(dz), ddl.sum((0, 1)) if ctx.has_bias else None,
                None if h0 is None else dh0.transpose(1, 2), None)
