"""The longest context each training method can train in a fixed memory budget (LongLoRA Fig. 1 style).

For every method, the longest length T (a multiple of ``--step``) whose forward + backward + AdamW
step, batch ``--batch``, fits in ``--mem-gb``, found by search on the *measured* peak: the CUDA
allocator's peak on GPU, ``pipeline.train.memory``'s live-storage tracker on CPU (weights + everything
allocated in the step: activations, gradients, optimizer states). The search grows T from
``--step`` (doubling, or to just past the budget as extrapolated from the last two probes) until the
peak exceeds the budget, then narrows the bracket [fits, does not fit] to one ``--step``, probing
where a line through the bracket's measured peaks crosses the budget (memory is near-linear in T)
and bisecting when that does not halve the bracket. Every probe is a real, measured training step.

    python scripts/bench_context.py [--mem-gb 0.05] [--d-model 128 --layers 4 --heads 4 --vocab 256]
        [--methods full_ft lora ...] [--quick] [--json PATH] [--plot PATH] [--device cpu|cuda]
        [--dtype float32|bfloat16]   # bfloat16: autocast mixed precision, as trainer.precision=bf16-mixed

Runtime: the longest probe's attention costs ~ T^2, and T grows with the budget, so CPU time grows
with the budget squared: the defaults (0.05 GiB, d_model 128, 4 layers) take ~5 min on one CPU
core, ``--quick`` ~30 s; budgets of GiBs are for ``--device cuda`` (e.g. --mem-gb 16 --d-model 1024).

Methods (``+ckpt``: each also with per-block activation checkpointing):
  full_ft   transformer, full attention, every weight trained
  lora      transformer, full attention, LoRA (r=8, alpha=16) on q/k/v/o only
  longlora  transformer, S2-Attn in training, LoRA+ (LoRA plus trainable embeddings and norms)
  mamba     Mamba (torch scan on CPU), every weight trained
  hybrid    Mamba/attention hybrid ("MA" repeated to --layers), every weight trained

Records: {"name", "baseline", "value", "ratio", "unit"}. ``context/max_train_len/<method>``: value =
the method's longest length, baseline = full_ft's, ratio = value / baseline (``capped`` when even
``--max-len`` fits). ``context/peak_bytes/<method>/T<T>``: value = measured peak, baseline = the budget.
``--plot`` writes the figure: longest length per method, and peak memory vs length per method.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.families.hybrid import Hybrid, HybridConfig  # noqa: E402
from models.families.mamba import MambaConfig, MambaLM  # noqa: E402
from models.families.transformer import Transformer, TransformerConfig  # noqa: E402
from models.lora import LoraPlusConfig, apply_lora  # noqa: E402
from models.patterns import AttentionConfig  # noqa: E402
from pipeline.train.memory import measure_peak  # noqa: E402

BASE_METHODS = ("full_ft", "lora", "longlora", "mamba", "hybrid")
METHODS = tuple(m + suffix for m in BASE_METHODS for suffix in ("", "+ckpt"))


@dataclass
class Size:
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    vocab: int = 256
    lora_r: int = 8
    max_len: int = 65536


def build(method: str, size: Size) -> torch.nn.Module:
    """A freshly initialised model set up for ``method`` (trainable weights, patterns, checkpointing)."""
    base, ckpt = method.removesuffix("+ckpt"), method.endswith("+ckpt")
    if base == "mamba":
        model = MambaLM(MambaConfig(vocab_size=size.vocab, d_model=size.d_model, n_layers=size.layers,
                                    max_seq_len=size.max_len))
    elif base == "hybrid":
        schedule = ("MA" * size.layers)[: size.layers]
        model = Hybrid(HybridConfig(vocab_size=size.vocab, d_model=size.d_model, layers=schedule,
                                    n_heads=size.heads, max_seq_len=size.max_len))
    else:
        attention = AttentionConfig(train="shifted_sparse" if base == "longlora" else "full", eval="full")
        model = Transformer(TransformerConfig(vocab_size=size.vocab, d_model=size.d_model, n_layers=size.layers,
                                              n_heads=size.heads, max_seq_len=size.max_len, attention=attention))
        if base in ("lora", "longlora"):  # plain LoRA trains the adapters only; LoRA+ also embeddings, norms
            apply_lora(model, LoraPlusConfig(enabled=True, r=size.lora_r, alpha=2 * size.lora_r,
                                             trainable=["embed", "norm"] if base == "longlora" else []))
    model.set_activation_checkpointing(ckpt)
    return model.train()


def train_step(model: torch.nn.Module, x: torch.Tensor, amp=contextlib.nullcontext) -> None:
    """Next-token loss on every position, backward, one AdamW step (its states allocated here);
    ``amp``: the precision context factory (autocast for mixed precision)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with amp():
        logits = model(x)  # (B, T, V)
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()).backward()
    del logits
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(model: torch.nn.Module, T: int, *, batch: int, vocab: int, device: torch.device,
            amp=contextlib.nullcontext) -> int:
    """Peak bytes of one training step at length T: weights + everything the step allocates."""
    x = torch.randint(0, vocab, (batch, T), device=device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        with measure_peak(model, device) as reading:
            train_step(model, x, amp)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        return 2**62  # the device itself ran out: certainly over budget
    return reading.peak_bytes


@dataclass
class Search:
    longest: int = 0  # longest measured length that fits (0: not even --step)
    capped: bool = False  # --max-len fits: the true reach is longer
    peaks: dict[int, int] = field(default_factory=dict)  # T -> measured peak bytes
    seconds: float = 0.0


def longest_fit(peak_at: Callable[[int], int], budget: int, step: int, max_len: int) -> Search:
    """Longest multiple of ``step`` (<= max_len) whose measured peak is <= budget.

    Grows T from ``step``: doubling, or (from the second fitting probe on) to just past where the
    line through the last two probes crosses the budget, whichever is shorter, so the first probe
    over budget rarely overshoots by much (a long probe is the costly one). Then narrows the bracket.
    """
    out = Search()
    start = time.perf_counter()

    def probe(T: int) -> int:
        out.peaks[T] = peak_at(T)
        return out.peaks[T]

    def crossing(a: int, b: int) -> float:
        """Where the line through the measured peaks at a and b reaches the budget (inf if flat)."""
        slope = (out.peaks[b] - out.peaks[a]) / (b - a)
        return a + (budget - out.peaks[a]) / slope if slope > 0 else float("inf")

    lo, hi, T, fitting = 0, None, step, []
    top = max_len // step * step
    while T <= top:
        if probe(T) > budget:
            hi = T
            break
        lo = T
        fitting.append(T)
        nxt = 2 * T
        if len(fitting) >= 2:  # aim a little past the predicted crossing
            past = crossing(fitting[-2], T) * 1.02
            if past < nxt:
                nxt = max(T + step, -(-int(past) // step) * step)
        if T == top:
            break
        T = min(nxt, top)
    if hi is None:
        out.longest, out.capped = lo, lo > 0
    elif lo:
        halved = True
        while hi - lo > step:
            mid = (lo + hi) // 2 // step * step
            if halved:  # the line through the bracket's peaks crosses the budget here
                mid = int(crossing(lo, hi)) // step * step
            T = min(max(mid, lo + step), hi - step)
            width = hi - lo
            if probe(T) <= budget:
                lo = T
            else:
                hi = T
            halved = hi - lo <= width // 2
        out.longest = lo
    out.seconds = time.perf_counter() - start
    return out


def run(methods: list[str], size: Size, budget: int, step: int, batch: int, device: torch.device,
        dtype: torch.dtype = torch.float32, after_each: Callable[[dict], None] | None = None) -> dict[str, Search]:
    """Each method's search in turn; ``after_each(results so far)`` after every method."""
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    results = {}
    for method in methods:
        torch.manual_seed(0)
        model = build(method, size).to(device)
        results[method] = longest_fit(functools.partial(measure, model, batch=batch, vocab=size.vocab,
                                                        device=device, amp=amp), budget, step, size.max_len)
        r = results[method]
        print(f"{method:<16}{r.longest:>9}{'+' if r.capped else ' '}{len(r.peaks):>7}{r.seconds:>9.1f}", flush=True)
        del model
        if after_each:
            after_each(results)
    return results


def records(results: dict[str, Search], budget: int) -> list[dict]:
    out = []
    base = results.get("full_ft")
    for method, r in results.items():
        ref = base.longest if base else r.longest
        out.append({"name": f"context/max_train_len/{method}", "baseline": float(ref), "value": float(r.longest),
                    "ratio": r.longest / ref if ref else float("nan"), "unit": "tokens", "capped": r.capped})
    for method, r in results.items():
        for T, peak in sorted(r.peaks.items()):
            out.append({"name": f"context/peak_bytes/{method}/T{T}", "baseline": float(budget),
                        "value": float(min(peak, 2**53)), "ratio": peak / budget, "unit": "bytes"})
    return out


def plot(results: dict[str, Search], budget: int, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_len, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i) for i, m in enumerate(BASE_METHODS)}
    names = list(results)
    ax_len.bar(range(len(names)), [results[m].longest for m in names],
               color=[color[m.removesuffix("+ckpt")] for m in names],
               hatch=None, edgecolor="black", linewidth=0.5)
    for i, m in enumerate(names):
        if m.endswith("+ckpt"):
            ax_len.patches[i].set_hatch("//")
        label = f"{results[m].longest}{'+' if results[m].capped else ''}"
        ax_len.text(i, results[m].longest, label, ha="center", va="bottom", fontsize=7)
    ax_len.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax_len.set_ylabel("longest trainable length (tokens)")
    ax_len.set_title(f"in {budget / 2**30:.2f} GiB (hatched: activation checkpointing)")
    for m in names:
        pts = sorted(results[m].peaks.items())
        pts = [(T, p) for T, p in pts if p < 2**60]
        ax_mem.plot([T for T, _ in pts], [p / 2**30 for _, p in pts], marker="o", markersize=3,
                    color=color[m.removesuffix("+ckpt")], linestyle="--" if m.endswith("+ckpt") else "-", label=m)
    ax_mem.axhline(budget / 2**30, color="gray", linewidth=1)
    ax_mem.set_xscale("log", base=2)
    ax_mem.set_yscale("log")
    ax_mem.set_xlabel("training length T (tokens)")
    ax_mem.set_ylabel("peak memory of one step (GiB)")
    ax_mem.set_title("peak vs length (dashed: checkpointing; grey: budget)")
    ax_mem.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # figures/ need not exist yet
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mem-gb", type=float, default=None, help="budget in GiB (default 0.05; --quick 0.01)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"subset of {list(METHODS)}")
    ap.add_argument("--d-model", type=int, default=None, help="default 128 (--quick 32)")
    ap.add_argument("--layers", type=int, default=None, help="default 4 (--quick 2)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--step", type=int, default=64, help="length granularity (a multiple of 8)")
    ap.add_argument("--max-len", type=int, default=65536, help="stop searching here (reported as capped)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: autocast mixed precision (fp32 weights and optimizer states)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a small model and budget (a smoke run)")
    ap.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    ap.add_argument("--plot", metavar="PATH", help="write the figure here (png/pdf)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods {unknown} unknown; allowed: {list(METHODS)}")
    mem_gb = args.mem_gb if args.mem_gb is not None else (0.01 if args.quick else 0.05)
    step = args.step
    size = Size(d_model=args.d_model or (32 if args.quick else 128), layers=args.layers or (2 if args.quick else 4),
                heads=args.heads, vocab=args.vocab, lora_r=args.lora_r, max_len=args.max_len)
    for name, value in (("--mem-gb", mem_gb), ("--step", step), ("--batch", args.batch), ("--max-len", size.max_len)):
        if value <= 0:
            ap.error(f"{name}={value} must be > 0")
    if step % 8:  # S2-Attn's group (T/4) must be even: T a multiple of 8
        ap.error(f"--step={step} must be a multiple of 8")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    budget = int(mem_gb * 2**30)
    title = (f"{device.type} {args.dtype}: d_model={size.d_model}, {size.layers} layers, {size.heads} heads, "
             f"vocab {size.vocab}, batch {args.batch}, budget {mem_gb:g} GiB, step {step}")
    print(title)
    print(f"{'method':<16}{'longest':>10}{'probes':>7}{'seconds':>9}")
    def save(results: dict[str, Search]) -> list[dict]:
        recs = records(results, budget)
        if args.json:  # after every method: a run stopped at a time limit keeps the methods it finished
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(recs, f, indent=1)
        return recs

    results = run(args.methods, size, budget, step, args.batch, device, getattr(torch, args.dtype), save)
    recs = save(results)
    if "full_ft" in results:
        print("\nlongest vs full_ft; +ckpt vs the same method without:")
        for method, r in results.items():
            plain = results.get(method.removesuffix("+ckpt")) if method.endswith("+ckpt") else None
            gain = f"  ckpt x{r.longest / plain.longest:.2f}" if plain and plain.longest else ""
            full = results["full_ft"].longest
            print(f"  {method:<16}{r.longest / full if full else float('nan'):>6.2f}x{gain}")
    if args.json:
        print(f"wrote {len(recs)} records to {args.json}")
    if args.plot:
        plot(results, budget, title, args.plot)
        print(f"wrote {args.plot}")
    return recs


if __name__ == "__main__":
    main()
