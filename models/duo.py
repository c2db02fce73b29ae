"""DuoAttention gates: attach, train by distillation, deploy as retrieval/streaming head roles.

One gate alpha per layer and KV head, init 1.0, clamped to [0, 1]. Only the gates train: the
student is distilled against the frozen model's full attention on the final hidden states.

The training forward is DuoAttention's two-way forward (``llama_duo_attention_forward_two_way``):
the batch is run twice side by side, teacher half then student half, and in every layer, per head,
    teacher = Full(teacher q/k/v)                       (no grad)
    student = (1 - alpha) * Stream(student q/k/v) + alpha * Full(teacher q/k/v)
so the full branch always reads the teacher's states and alpha's gradient comes only through the
mix (pattern ``duo_two_way``). ``objective="same_states"`` keeps the earlier ablation: one pass,
alpha * Full + (1 - alpha) * Stream both on the student's own states (pattern ``duo``).
The ``duo_gates`` stage is then, per batch::

    h_full, h_mix = duo_hidden_pair(model, batch["input_ids"])
    loss = duo_distill_loss(h_full, h_mix, batch["labels"] != -100, model.duo_gates)
    ...  # AdamW(lr=0.02, weight_decay=0) on [model.duo_gates]; clamp_gates_(model.duo_gates) each step
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

OBJECTIVES = ("two_way", "same_states")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that read ``duo_gate``, in layer order."""
    mods = [m for m in model.modules() if hasattr(m, "duo_gate") and hasattr(m, "layer_idx")]
    return sorted(mods, key=lambda m: m.layer_idx)


def attach_duo_gates(model: nn.Module) -> nn.Parameter:
    """Freeze ``model``, give it ``model.duo_gates`` (n_layers, n_kv_heads) = 1, and return them.

    Each attention layer reads its row as ``duo_gate`` (Hkv,); the row is re-taken in a forward
    pre-hook, so every forward builds a fresh autograd view of the parameter.
    """
    layers = _attention_modules(model)
    if hasattr(model, "duo_gates"):
        raise ValueError("attach_duo_gates: the model already has duo_gates")
    if not layers:
        raise ValueError("attach_duo_gates: the model has no attention layer with a duo_gate slot")
    for p in model.parameters():
        p.requires_grad_(False)
    n_kv = layers[0].n_kv
    gates = nn.Parameter(torch.ones(len(layers), n_kv, device=next(model.parameters()).device))
    model.duo_gates = gates  # registered: in state_dict and model.parameters(), the only trainable one
    for attn in layers:
        object.__setattr__(attn, "_duo_gates", gates)  # unregistered reference; deepcopy keeps it paired
        attn.duo_gate = gates[attn.layer_idx]
        object.__setattr__(attn, "_duo_hook", attn.register_forward_pre_hook(_refresh_gate))
    return gates


def detach_duo_gates(model: nn.Module) -> torch.Tensor:
    """Undo ``attach_duo_gates``: drop the gates and hooks, unfreeze; returns the gates (detached)."""
    gates = model.duo_gates.detach().clone()
    for attn in _attention_modules(model):
        attn._duo_hook.remove()
        for name in ("_duo_hook", "_duo_gates"):
            object.__delattr__(attn, name)
        attn.duo_gate = None
    del model.duo_gates
    for p in model.parameters():
        p.requires_grad_(True)
    return gates


def _refresh_gate(module: nn.Module, _args: object) -> None:
    module.duo_gate = module._duo_gates[module.layer_idx]  # (Hkv,) a fresh view each forward


@torch.no_grad()
def clamp_gates_(gates: torch.Tensor) -> torch.Tensor:
    """In place to [0, 1] (DuoAttention clamps before every step)."""
    return gates.clamp_(0.0, 1.0)


@contextmanager
def attention_pattern(model: nn.Module, pattern: str) -> Iterator[None]:
    """Run ``model`` with ``pattern`` for training and evaluation alike, then restore."""
    cfg = model.cfg.attention
    saved = (cfg.train, cfg.eval)
    cfg.train = cfg.eval = pattern
    try:
        yield
    finally:
        cfg.train, cfg.eval = saved


def duo_hidden_pair(model: nn.Module, input_ids: torch.Tensor,
                    objective: str = "two_way") -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states (B, T, d) of the full-attention teacher (no grad) and the gated student."""
    if objective not in OBJECTIVES:
        raise ValueError(f"duo.objective={objective!r}; allowed: {list(OBJECTIVES)}")
    if objective == "two_way":
        B = input_ids.shape[0]
        with attention_pattern(model, "duo_two_way"):
            h = model.hidden_states(torch.cat((input_ids, input_ids)))  # (2B, T, d): teacher; student
        return h[:B].detach(), h[B:]
    with torch.no_grad(), attention_pattern(model, "full"):
        h_full = model.hidden_states(input_ids)
    with attention_pattern(model, "duo"):
        h_mix = model.hidden_states(input_ids)
    return h_full, h_mix


def duo_distill_loss(h_full: torch.Tensor, h_mix: torch.Tensor, mask: torch.Tensor, gates: torch.Tensor,
                     lam: float = 0.05, n_supervised: float | None = None) -> torch.Tensor:
    """sum over supervised tokens of mean_d (h_full - h_mix)^2 / count + lam * mean|alpha|.

    h_* (B, T, d); mask (B, T) bool, True where supervised. ``n_supervised`` overrides the local
    count (DuoAttention divides by the global count across data-parallel ranks).
    """
    per_token = (h_full.detach() - h_mix).pow(2).mean(dim=-1)  # (B, T)
    count = mask.sum().clamp(min=1) if n_supervised is None else n_supervised
    distill = (per_token * mask).sum() / count
    return distill + lam * gates.abs().mean()


def deploy_gates(gates: torch.Tensor, sparsity: float | None = None,
                 threshold: float | None = None, seed: int = 0) -> torch.Tensor:
    """Gates (n_layers, n_kv_heads) -> bool, True = retrieval head (full KV).

    ``sparsity`` s (DuoAttention's ``sparsify_attention_heads``): one global cut over all layers x
    heads, retrieval iff alpha >= the s-quantile; s = 1 makes every head streaming, s = 0 none.
    Ties are broken at random, as the reference does, by adding uniform [0, 1e-6) noise drawn from
    a generator seeded with ``seed`` (so a deployment is reproducible).
    ``threshold``: retrieval iff alpha >= threshold (no noise). Exactly one must be given.
    """
    if (sparsity is None) == (threshold is None):
        raise ValueError(f"deploy_gates needs exactly one of sparsity, threshold; got {sparsity}, "
                         f"{threshold}")
    alpha = gates.detach().double().clamp(0.0, 1.0).cpu()
    if threshold is not None:
        return alpha >= threshold
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1]")
    if sparsity >= 1.0:
        return torch.zeros_like(alpha, dtype=torch.bool)
    if sparsity <= 0.0:
        return torch.ones_like(alpha, dtype=torch.bool)
    noisy = alpha + 1e-6 * torch.rand(alpha.shape, generator=torch.Generator().manual_seed(seed), dtype=alpha.dtype)
    return noisy >= torch.quantile(noisy.flatten(), sparsity)


def save_gates(gates: torch.Tensor, path: str) -> None:
    """torch.save the clamped gates (n_layers, n_kv_heads) as a plain CPU float tensor, atomically:
    through a temp file beside ``path``, fsync'd, then renamed, so a reader never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(gates.detach().float().clamp(0.0, 1.0).cpu(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_gates(path: str) -> torch.Tensor:
    """The (n_layers, n_kv_heads) gates saved by ``save_gates``, clamped to [0, 1]; any failure names the file."""
    try:
        gates = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torn, not a torch file, or a pickle weights_only refuses (never executed)
        raise ValueError(f"gates file {str(path)!r} cannot be read (truncated or not a gates.pt?): "
                         f"{str(err).splitlines()[0][:300] if str(err) else type(err).__name__}") from None
    if not isinstance(gates, torch.Tensor) or gates.dim() != 2:
        raise ValueError(f"{path!r} must hold a (n_layers, n_kv_heads) tensor, got {type(gates).__name__}")
    if not gates.is_floating_point() or not torch.isfinite(gates).all():
        raise ValueError(f"gates file {str(path)!r} holds non-finite (NaN or inf) or non-float gates; allowed: "
                         f"finite floats (save_gates writes them)")
    return gates.float().clamp(0.0, 1.0)
