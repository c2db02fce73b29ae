"""Our fused CPU kernels (models/native/*.c): built on first use with the system C compiler and called through ctypes.

Why our own C and not a library: the fused kernels that exist (mamba-ssm's scan, fla's chunked linear attention)
are CUDA/Triton-only, and the PyTorch forms on CPU are bound by memory passes over state-sized tensors and by
many small ops. The C files need no PyTorch headers, so each builds in about a second (a torch C++ extension
takes a minute); a library is cached under ``$LONGCTX_NATIVE_CACHE`` (default ``~/.cache/longctx/native``),
keyed by its source, the flags and this CPU's feature flags, so a home directory shared by machines with
different CPUs never loads a library built for another instruction set.

Where no C compiler exists (or a build fails) ``load`` returns None and each caller keeps its PyTorch path:
the fused kernels are fast paths, never requirements (``LONGCTX_NATIVE=0`` turns them all off). They compute
in float32 only.
"""

from __future__ import annotations

import ctypes
import functools
import glob
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

SOURCES = os.path.join(os.path.dirname(__file__), "native")
# -fno-trapping-math lets the loops with floorf / float-to-int (the exp) vectorise; no reassociation (no fast-math)
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build(compiler: str, name: str) -> str:
    source = os.path.join(SOURCES, f"{name}.c")
    with open(source, "rb") as f:
        text = f.read()
    for header in sorted(glob.glob(os.path.join(SOURCES, "*.h"))):  # what the sources include
        with open(header, "rb") as f:
            text += f.read()
    key = hashlib.sha256(b"\0".join([text, " ".join(FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    cache = os.environ.get("LONGCTX_NATIVE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx", "native"))
    path = os.path.join(cache, f"{name}-{key}.so")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        # built aside, then renamed: concurrent jobs never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, source, "-o", tmp, "-lm"], check=True, capture_output=True, text=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


@functools.cache
def load(name: str) -> Optional[ctypes.CDLL]:
    """models/native/<name>.c built and loaded, or None (no compiler, a failed build, or LONGCTX_NATIVE=0)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or os.environ.get("LONGCTX_NATIVE", "1") == "0":
        return None
    try:
        return ctypes.CDLL(_build(compiler, name))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(f"the fused CPU kernel models/native/{name}.c did not build ({compiler}): {detail}; "
                      "the PyTorch path runs instead", stacklevel=3)
        return None


def library(name: str, **signatures: list) -> Optional[ctypes.CDLL]:
    """``load(name)`` with its functions' argument types declared (ctypes would pass Python ints as 32-bit);
    each function returns an int status. Declared once per loaded library: callers ask on every forward."""
    lib = load(name)
    if lib is not None and not getattr(lib, "declared", False):
        for fn_name, argtypes in signatures.items():
            fn = getattr(lib, fn_name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.declared = True
    return lib


P, I64, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float  # the argument types the kernels use


def supports(*tensors: Optional[torch.Tensor]) -> bool:
    """The fused kernels take float32 CPU tensors only."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


_pool: Optional[ThreadPoolExecutor] = None


def run_rows(fn, rows: int, *args) -> None:
    """fn(*args, r0, r1) over independent rows, split across torch's intra-op threads (ctypes drops the GIL)."""
    global _pool
    threads = min(torch.get_num_threads(), rows)
    if threads <= 1:
        status = [fn(*args, 0, rows)]
    else:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads)
        bounds = [rows * i // threads for i in range(threads + 1)]
        status = list(_pool.map(lambda i: fn(*args, bounds[i], bounds[i + 1]), range(threads)))
    if any(status):
        raise MemoryError(f"{fn.__name__}: a fused CPU kernel could not allocate its work buffers")


def pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])
