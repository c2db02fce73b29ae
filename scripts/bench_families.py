"""Training throughput of every family, eager and compiled, against the same-width transformer, with MFU.

    python scripts/bench_train.py --families [--quick] [--json PATH] [--d-model 64 128] [--lengths 64 512]

(``bench_train.py --families`` runs this.) Per family (each with its preset's depth, conf/model/<family>.yaml,
at width ``d``), length ``L`` and mode (``eager``; ``compiled``: ``torch.compile`` of the whole model, inductor),
tokens/s of one fwd + bwd + AdamW step at ``--batch-tokens`` tokens (batch = tokens / L), the median of
``--steps`` steps after warm-up (compile time is measured apart, as the first call's extra time). Records:

- ``train/<family>/d<d>/L<L>/<mode>``: value = tokens/s, baseline = the transformer's tokens/s in the same mode
  (ratio > 1: faster than attention per training token);
- ``train_mfu/<family>/d<d>/L<L>/<mode>``: value = model FLOP/s = tokens/s x 6 N (+ attention's
  6 n_layers d T for attention layers; N = matmul parameters, the recurrent scans' own arithmetic is not
  counted), baseline = this machine's fp32 matmul peak, measured here (a large matmul with the same threads),
  ratio = MFU;
- ``compile_s/<family>/d<d>/L<L>``: seconds of the compiled model's first step beyond a timed step.

CPU timings are taken with one thread (``--threads``) on an otherwise idle core where possible; read ratios
(same run, interleaved per step), not absolute numbers, on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from omegaconf import OmegaConf

from models.families import FAMILIES
from models.registry import build_model
from pipeline.config.model_checks import build_model_config


def family_names() -> list[str]:
    return ["transformer", *sorted(f for f in FAMILIES.names() if f != "transformer" and not f.startswith("toy"))]


def build(family: str, d_model: int, vocab: int, max_len: int) -> torch.nn.Module:
    """The family at its preset (conf/model/<family>.yaml: depth, state, heads) and width ``d_model``."""
    from study import compose  # the same Hydra composition a run gets

    node = compose([f"model={family}", f"model.d_model={d_model}", f"vocab_size={vocab}"]).model
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    if "max_seq_len" in node:
        node.max_seq_len = max(int(node.max_seq_len), max_len)
    if "kernel" in node and not torch.cuda.is_available():
        node.kernel = "torch"
    if "n_heads" in node and d_model % int(node.n_heads):
        node.n_heads = max(1, d_model // 16)
        if "n_kv_heads" in node:
            node.n_kv_heads = node.n_heads
    return build_model(build_model_config(node))


def flops_per_token(model: torch.nn.Module, T: int) -> float:
    """6 x matmul parameters (all but the token embedding; a tied head counts) + 6 n_attn d_attn T."""
    embed = getattr(model, "embed_tokens", None)
    n = sum(p.numel() for p in model.parameters())
    if embed is not None:
        n -= embed.weight.numel()
        head = getattr(model, "lm_head", None)
        if head is not None and head.weight is embed.weight:
            n += embed.weight.numel()
    cfg = getattr(model, "cfg", None)
    mixers = getattr(cfg, "mixers", None)
    n_attn = (mixers.count("attention") if mixers else (cfg.n_layers if cfg.family == "transformer" else 0))
    d_attn = getattr(cfg, "n_heads", 0) * (getattr(cfg, "head_dim", None) or cfg.d_model // max(1, cfg.n_heads)) \
        if n_attn else 0
    return 6 * n + 6 * n_attn * d_attn * T


def matmul_peak(threads: int, size: int = 1024, repeats: int = 10) -> float:
    """This machine's fp32 matmul FLOP/s with ``threads`` threads: the best of ``repeats`` size^3 products."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * size**3 / best


def make_step(model: torch.nn.Module, x: torch.Tensor, vocab: int):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def run(families: list[str], widths: list[int], lengths: list[int], modes: list[str], batch_tokens: int,
        steps: int, vocab: int, threads: int, backend: str, save=lambda records: None) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    # every family's model compiles the same forward code (models/lm.py): one graph per model object, so the
    # default limit of 8 would silently leave the later families eager
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 1 << 16
    peak = matmul_peak(threads)
    print(f"fp32 matmul peak, {threads} thread(s): {peak / 1e9:.1f} GFLOP/s (measured)")
    print(f"{'family':<16}{'d':>5}{'L':>6}{'mode':>10}{'tokens/s':>11}{'vs attn':>9}{'MFU':>8}{'compile s':>11}")
    records: list[dict[str, Any]] = []
    for d in widths:
        for L in lengths:
            batch = max(1, batch_tokens // L)
            torch.manual_seed(0)
            x = torch.randint(0, vocab, (batch, L))
            rates: dict[tuple[str, str], float] = {}
            cells = []
            for family in families:
                torch.manual_seed(0)
                model = build(family, d, vocab, L).train()
                fns = {"eager": model}
                if "compiled" in modes:
                    fns["compiled"] = torch.compile(model, backend=backend)
                cell = {m: make_step(fns[m], x, vocab) for m in modes}
                first = {m: timed(s) for m, s in cell.items()}  # warm-up; the compiled one compiles here
                cells.append((family, model, cell, first))
            times = {(family, m): [] for family, *_ in cells for m in modes}
            for _ in range(steps):  # interleaved per step: a noisy stretch of a shared machine hits every family
                for family, _model, cell, _first in cells:
                    for m, s in cell.items():
                        times[(family, m)].append(timed(s))
            for family, _model, _cell, first in cells:
                for m in modes:
                    rates[(family, m)] = batch * L / statistics.median(times[(family, m)])
                    if m == "compiled":
                        records.append({"name": f"compile_s/{family}/d{d}/L{L}", "value": first[m] -
                                        statistics.median(times[(family, m)]), "unit": "s"})
            for family, model, _cell, _first in cells:
                per_token = flops_per_token(model, L)
                for m in modes:
                    rate, base = rates[(family, m)], rates[("transformer", m)]
                    tag = f"{family}/d{d}/L{L}/{m}"
                    records.append({"name": f"train/{tag}", "baseline": base, "value": rate, "ratio": rate / base,
                                    "unit": "tokens/s"})
                    records.append({"name": f"train_mfu/{tag}", "baseline": peak, "value": rate * per_token,
                                    "ratio": rate * per_token / peak, "unit": "FLOP/s"})
                    comp = next((r["value"] for r in records if r["name"] == f"compile_s/{family}/d{d}/L{L}"), None)
                    print(f"{family:<16}{d:>5}{L:>6}{m:>10}{rate:>11.0f}{rate / base:>9.2f}"
                          f"{rate * per_token / peak:>8.1%}{'' if comp is None or m == 'eager' else f'{comp:>11.1f}'}",
                          flush=True)
            save(records)
    return records
