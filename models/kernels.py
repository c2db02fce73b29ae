"""``model.kernel=auto|torch|cuda``, one rule for every mixer with an optional CUDA kernel package.

auto: the kernel where its package imported and the input is on a GPU, else the pure-PyTorch path;
torch: always the PyTorch path; cuda: the kernel, and an error (never a silent fallback) where it cannot run.
"""

from __future__ import annotations

import torch

KERNELS = ("auto", "torch", "cuda")
FLA_PACKAGE = "flash-linear-attention (fla)"  # the kernels of gla, retention, gated_deltanet


def check_kernel_choice(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"model.kernel={kernel!r}; allowed: {list(KERNELS)}")


def require_kernel(kernel: str, available: bool, package: str) -> None:
    """kernel=cuda is a promise: fail before anything is built where ``package`` did not import."""
    if kernel == "cuda" and not available:
        raise RuntimeError(f"model.kernel='cuda' but {package} does not import here (a CUDA machine with "
                           f"pip install '.[cuda]'); use model.kernel=auto or torch for the pure-PyTorch path")


def use_kernel(kernel: str, available: bool, package: str, x: torch.Tensor) -> bool:
    """Whether this call runs the kernel (``x``: the input, whose device decides for auto)."""
    if kernel == "torch":
        return False
    if kernel == "cuda":
        require_kernel(kernel, available, package)
        if not x.is_cuda:
            raise RuntimeError(f"model.kernel='cuda' but the input is on {x.device}")
        return True
    return available and x.is_cuda
