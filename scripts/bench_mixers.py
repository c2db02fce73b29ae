"""Every constant-state mixer vs the same-width transformer on CPU: train step, decode step, memory vs length.

    python scripts/bench_mixers.py [--quick] [--json PATH] [--threads N] [--mixers a,b] [--hf-mamba]

The mixers are the model families named after a registered mixer other than attention (mamba,
gated_deltanet, sliding_window, and any family added later), each built with --d-model, --layers and
``--kernel`` (auto: what training runs, the fused C kernels on CPU; torch: the PyTorch reference paths). Per
length T, against the transformer of the same width and depth (the baseline of every record):
1. train step: tokens/s of fwd + bwd + AdamW step at batch --batch (best of a few steps, after a warm-up);
2. decode step: tokens/s of one-token steps through the cache after a no-grad prefill of T tokens;
3. peak bytes of one fwd + bwd and of one no-grad forward (pipeline.train.memory's tensor-allocation tracker:
   live tensor storages allocated inside the region), and decode-cache bytes after a prefill of T tokens:
   constant in T for every mixer here, linear for the transformer's KV cache.
``--delta-rule`` instead times the gated delta rule's two pure-PyTorch forms (models/delta_rule.py: token loop
and chunked WY form at 16/32/64-token chunks, fwd+bwd ms per T), the measurement behind its per-length choice.
``--hf-mamba`` adds the earlier Mamba check: our chunked scan's fwd+bwd tokens/s vs transformers'
MambaForCausalLM with the same weights (its token loop on CPU: minutes per step at T=2048).
``--kernels`` (the GPU check) instead compares, per family with a ``kernel`` knob, its CUDA kernel
(mamba-ssm / causal-conv1d, flash-linear-attention) with our PyTorch path, same weights, on ``--device`` in
``--dtype`` (bfloat16: autocast): fwd + bwd tokens/s and peak bytes per length (baseline: the torch path).
Where a family's kernel does not run here, only its torch path is measured (``<family>_torch/...``
records, baseline null, ``note`` says why):

    python scripts/bench_mixers.py --kernels --device cuda --dtype bfloat16 --d-model 1024 --layers 4 \
        --batch 4 --lengths 2048,8192 --mixers mamba,gated_deltanet

Records: {"name", "baseline", "value", "ratio", "unit"} with ratio = value / baseline. ``--threads``
defaults to 1: on a shared machine, oversubscribed OpenMP threads make CPU timings meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_device import add_device_args, autocast, resolve, sync  # noqa: E402

from models.families import FAMILIES  # noqa: E402
from models.families.mamba import MambaLM  # noqa: E402
from models.mixers import MIXERS  # noqa: E402
from models.registry import build_model, config_class  # noqa: E402
from pipeline.train.memory import measure_peak  # noqa: E402


def mixer_families() -> list[str]:
    """Families made of one registered mixer that is not attention: the constant-state ones."""
    return [f for f in FAMILIES.names() if f in MIXERS.names() and f != "attention"]


def build(family: str, d_model: int, layers: int, chunk_size: int | None, kernel: str = "torch") -> torch.nn.Module:
    cls = config_class(family)
    fields = {f.name for f in dataclasses.fields(cls)}
    knobs = dict(d_model=d_model, n_layers=layers, max_seq_len=1 << 16, kernel=kernel, chunk_size=chunk_size)
    return build_model(cls(**{k: v for k, v in knobs.items() if k in fields and (v is not None or k != "chunk_size")}))


def hf_mamba(model: MambaLM) -> torch.nn.Module:
    """transformers' MambaForCausalLM with our config and a copy of our weights."""
    import transformers

    cfg = model.cfg
    hf_cfg = transformers.MambaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers, layer_norm_epsilon=cfg.norm_eps, expand=cfg.expand,
        conv_kernel=cfg.d_conv, time_step_rank=cfg.dt_rank, use_bias=cfg.bias, use_conv_bias=cfg.conv_bias,
        tie_word_embeddings=cfg.tie_embeddings,
        residual_in_fp32=True, use_cache=False, use_mambapy=False)
    hf = transformers.MambaForCausalLM(hf_cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        name = "norm_f.weight" if name == "norm.weight" else name.replace("embed_tokens.", "embeddings.")
        state[name if name == "lm_head.weight" else f"backbone.{name}"] = tensor
    hf.load_state_dict(state, strict=True)
    return hf


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, hf: bool = False) -> None:
    logits = model(input_ids=x).logits if hf else model(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()


def best_rate(fn, tokens: int, steps: int, warmup: bool = True) -> float:
    """Tokens/s of the fastest of ``steps`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    best = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def train_rate(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd(model, x)
        opt.step()

    return best_rate(step, x.numel(), steps)


@torch.no_grad()
def decode_rate(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    """One-token steps after a prefill of x (B, T); each step continues a clone of the prefilled cache."""
    model.eval()
    cache = model.new_cache(x.shape[0])
    model(x, cache)
    token = x[:, -1:]
    state = cache.clone()

    def step() -> None:
        model(token, state)

    rate = best_rate(step, x.shape[0], steps)
    model.train()
    return rate


def peak_fwd_bwd_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.train()
    model.zero_grad(set_to_none=True)
    gc.collect()
    with measure_peak(None, "cpu") as reading:
        fwd_bwd(model, x)
    model.zero_grad(set_to_none=True)
    return reading.region_peak_bytes


def peak_fwd_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Inference (prefill without a cache): nothing is kept for a backward."""
    model.eval()
    gc.collect()
    with torch.no_grad(), measure_peak(None, "cpu") as reading:
        model(x)
    model.train()
    return reading.region_peak_bytes


@torch.no_grad()
def cache_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    cache = model.new_cache(x.shape[0])
    model(x, cache)
    model.train()
    return cache.nbytes()


def record(name: str, value: float, baseline: float, unit: str) -> dict:
    return {"name": name, "baseline": float(baseline), "value": float(value), "ratio": value / baseline, "unit": unit}


def hf_records(d_model: int, layers: int, batch: int, quick: bool, chunk_size: int | None) -> list[dict]:
    ours = build("mamba", d_model, layers, chunk_size)
    hf = hf_mamba(ours)
    out = []
    for T in (512, 2048):
        x = torch.randint(0, ours.cfg.vocab_size, (batch, T))
        value = best_rate(partial(fwd_bwd, ours, x), x.numel(), 2 if quick else 5)
        # HF's token loop has nothing to warm up, and its backward grows ~quadratically: one step is minutes at T=2048
        baseline = best_rate(partial(fwd_bwd, hf, x, hf=True), x.numel(), 1 if quick or T > 512 else 2, warmup=False)
        out.append(record(f"mamba_vs_hf/fwd_bwd_tokens_per_s/T{T}", value, baseline, "tokens/s"))
    return out


def kernel_records(family: str, args, device: torch.device, dtype: torch.dtype, lengths: list[int],
                   steps: int) -> list[dict]:
    """The family's kernel=cuda vs kernel=torch (same weights): fwd+bwd tokens/s and peak bytes per length."""
    amp = lambda: autocast(device, dtype)  # noqa: E731
    torch.manual_seed(0)
    scan = build(family, args.d_model, args.layers, args.chunk_size).to(device)
    fast, why = None, None
    if "kernel" not in {f.name for f in dataclasses.fields(scan.cfg)}:
        why = f"{family} has no kernel knob"
    elif device.type != "cuda":
        why = f"kernels need CUDA, not {device}"
    else:
        try:
            fast = build(family, args.d_model, args.layers, args.chunk_size, kernel="cuda").to(device)
            fast.load_state_dict(scan.state_dict())
        except RuntimeError as err:  # its package does not import here: say so, measure the torch path
            why = str(err).splitlines()[0]

    def step(model, x) -> None:
        model.zero_grad(set_to_none=True)
        with amp():
            logits = model(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()).backward()
        sync(device)

    out = []
    for T in lengths:
        x = torch.randint(0, scan.cfg.vocab_size, (args.batch, T), device=device)
        rate, peak = {}, {}
        for name, model in (("torch", scan), ("cuda", fast)):
            if model is None:
                continue
            model.train()
            rate[name] = best_rate(partial(step, model, x), x.numel(), steps)
            gc.collect()
            with measure_peak(None, device) as reading:
                step(model, x)
            peak[name] = reading.region_peak_bytes
            model.zero_grad(set_to_none=True)
        if fast is None:
            out += [{"name": f"{family}_torch/fwd_bwd_tokens_per_s/T{T}", "baseline": None, "value": rate["torch"],
                     "ratio": None, "unit": "tokens/s", "note": why},
                    {"name": f"{family}_torch/fwd_bwd_peak_bytes/T{T}", "baseline": None,
                     "value": float(peak["torch"]), "ratio": None, "unit": "bytes", "note": why}]
            continue
        out += [record(f"{family}_kernel_vs_torch/fwd_bwd_tokens_per_s/T{T}", rate["cuda"], rate["torch"], "tokens/s"),
                record(f"{family}_kernel_vs_torch/fwd_bwd_peak_bytes/T{T}", peak["cuda"], max(peak["torch"], 1),
                       "bytes")]
    return out


def delta_rule_records(batch: int, lengths: list[int], steps: int) -> list[dict]:
    """fwd+bwd ms of the chunked form per chunk size vs the token loop (the baseline), H=4, K=16, V=32."""
    from models.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

    out = []
    for T in lengths:
        q, k = torch.randn(batch, T, 4, 16), torch.nn.functional.normalize(torch.randn(batch, T, 4, 16), dim=-1)
        inputs = (q, k, torch.randn(batch, T, 4, 32), -0.1 * torch.rand(batch, T, 4), torch.rand(batch, T, 4))

        loop = 1e3 / best_rate(partial(_delta_rule_step, recurrent_gated_delta_rule, inputs), 1, steps)
        for chunk in (16, 32, 64):
            run = partial(_delta_rule_step, chunk_gated_delta_rule, inputs, chunk_size=chunk)
            out.append(record(f"delta_rule/chunk{chunk}_vs_loop_fwd_bwd_ms/T{T}", 1e3 / best_rate(run, 1, steps),
                              loop, "ms"))
    return out


def _delta_rule_step(fn, inputs: tuple, **kw) -> None:
    o, S = fn(*(t.detach().requires_grad_() for t in inputs), **kw)
    (o.sum() + S.sum()).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two lengths, fewer timed steps")
    ap.add_argument("--json", help="write records here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lengths", help="comma-separated T (default 512,1024,2048,4096; --quick 512,2048)")
    ap.add_argument("--mixers", help=f"comma-separated families (default: all of {mixer_families()})")
    ap.add_argument("--kernel", choices=["auto", "torch"], default="auto",
                    help="model.kernel of the families: auto (fused C on CPU, as training) or torch (PyTorch paths)")
    ap.add_argument("--chunk-size", type=int, default=None, help="model.chunk_size where a family has it")
    ap.add_argument("--hf-mamba", action="store_true", help="also our Mamba scan vs transformers' Mamba (slow)")
    ap.add_argument("--delta-rule", action="store_true", help="only the gated delta rule: token loop vs chunks")
    ap.add_argument("--kernels", action="store_true", help="only each family's CUDA kernel vs its torch path")
    add_device_args(ap)
    args = ap.parse_args()
    device, dtype = resolve(ap, args)
    if not args.kernels and (device.type != "cpu" or dtype != torch.float32):
        ap.error("--device / --dtype apply to --kernels (the other modes use the CPU memory tracker, in float32)")
    torch.set_num_threads(args.threads)
    families = args.mixers.split(",") if args.mixers else mixer_families()
    for f in families:
        if f not in mixer_families():
            ap.error(f"--mixers: {f!r} is not a constant-state mixer family; allowed: {mixer_families()}")
    lengths = [int(t) for t in args.lengths.split(",")] if args.lengths else (
        [512, 2048] if args.quick else [512, 1024, 2048, 4096])
    steps = 2 if args.quick else 4
    torch.manual_seed(0)
    if args.delta_rule:
        report(delta_rule_records(args.batch, lengths, steps), args.json)
        return
    if args.kernels:
        records = []
        for f in families:  # the JSON after each family: a run stopped at a time limit keeps what it measured
            records += kernel_records(f, args, device, dtype, lengths, steps)
            report(records, args.json, quiet=True)
        report(records, args.json)
        return
    transformer = build("transformer", args.d_model, args.layers, None)
    models = {f: build(f, args.d_model, args.layers, args.chunk_size, kernel=args.kernel) for f in families}
    records = hf_records(args.d_model, args.layers, args.batch, args.quick, args.chunk_size) if args.hf_mamba else []
    for T in lengths:
        x = torch.randint(0, transformer.cfg.vocab_size, (args.batch, T))
        base = {"train_step_tokens_per_s": train_rate(transformer, x, steps),
                "decode_step_tokens_per_s": decode_rate(transformer, x, 4 * steps),
                "fwd_bwd_peak_bytes": peak_fwd_bwd_bytes(transformer, x),
                "fwd_peak_bytes": peak_fwd_bytes(transformer, x), "cache_bytes": cache_bytes(transformer, x)}
        for f, model in models.items():
            ours = {"train_step_tokens_per_s": train_rate(model, x, steps),
                    "decode_step_tokens_per_s": decode_rate(model, x, 4 * steps),
                    "fwd_bwd_peak_bytes": peak_fwd_bwd_bytes(model, x),
                    "fwd_peak_bytes": peak_fwd_bytes(model, x), "cache_bytes": cache_bytes(model, x)}
            for name, value in ours.items():
                unit = "tokens/s" if name.endswith("per_s") else "bytes"
                records.append(record(f"{f}_vs_transformer/{name}/T{T}", value, base[name], unit))
    report(records, args.json)


def report(records: list[dict], path: str | None, quiet: bool = False) -> None:
    if not quiet:
        print(f"{'bench':<60}{'baseline':>14}{'ours':>14}{'ratio':>8}  unit (baseline)")
    bases = {"mamba_vs_hf": "HF Mamba", "delta_rule": "token loop"}
    for r in [] if quiet else records:
        first = r["name"].split("/")[0]
        base_name = "torch path" if first.endswith(("_kernel_vs_torch", "_torch")) else bases.get(first, "transformer")
        base = "-" if r["baseline"] is None else f"{r['baseline']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['name']:<60}{base:>14}{r['value']:>14.1f}{ratio:>8}  {r['unit']} ({base_name})"
              + (f"  [{r['note']}]" if r.get("note") else ""))
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
