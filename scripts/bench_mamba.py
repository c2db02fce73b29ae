"""Mamba on CPU: our chunked torch scan vs transformers' MambaForCausalLM, and memory vs length.

    python scripts/bench_mamba.py [--quick] [--json PATH] [--threads N]

1. fwd + bwd tokens/s of models.families.mamba.MambaLM (kernel=torch) and transformers' MambaForCausalLM
   with the same config and the same weights (2 layers, d_model 128 by default), at T=512 and
   T=2048, in this process. Without mamba_ssm, transformers runs its token-by-token loop.
2. Peak bytes of one fwd + bwd and of one no-grad forward (pipeline.memory's tensor-allocation
   tracker: live tensor storages allocated inside the region) and decode-cache bytes after a
   prefill of T tokens, for Mamba vs
   models.families.transformer.Transformer of the same width and depth, per length. The torch scan holds
   (B, chunk, d_inner, d_state) at a time, never (B, T, d_inner, d_state): its fwd+bwd peak should
   stay near the transformer's and grow linearly in T (``--chunk-size`` sets model.chunk_size).

``--baseline torch`` (the GPU check) replaces both with the kernel comparison: fwd + bwd tokens/s and
peak bytes of kernel=cuda (mamba_ssm + causal_conv1d) vs kernel=torch (our chunked scan), same
weights, on ``--device`` in ``--dtype`` (bfloat16: autocast), at ``--lengths``. Where the kernels do not
import, only the torch scan is measured (``mamba_torch_scan/...`` records, baseline null) and the
records say why.

    python scripts/bench_mamba.py --device cuda --dtype bfloat16 --baseline torch --d-model 1024 --layers 4 \
        --batch 4 --lengths 2048 8192

Records: {"name", "baseline", "value", "ratio", "unit"} with ratio = value / baseline; for
throughput the baseline is HF, for memory the baseline is the transformer. ``--threads`` defaults
to 1: on a shared machine, oversubscribed OpenMP threads make CPU timings meaningless.
Runtime is dominated by HF at T=2048 (one fwd+bwd takes minutes): ~5 min with --quick.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_device import add_device_args, autocast, resolve, sync  # noqa: E402

from models.families.mamba import MambaConfig, MambaLM  # noqa: E402
from models.families.transformer import Transformer, TransformerConfig  # noqa: E402
from models.mixers.mamba import KERNELS_AVAILABLE  # noqa: E402
from pipeline.memory import measure_peak  # noqa: E402


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


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, hf: bool, amp=contextlib.nullcontext) -> None:
    with amp():
        logits = model(input_ids=x).logits if hf else model(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()


def tokens_per_s(model: torch.nn.Module, x: torch.Tensor, hf: bool, steps: int, warmup: bool,
                 amp=contextlib.nullcontext) -> float:
    model.train()
    if warmup:
        fwd_bwd(model, x, hf, amp)
    best = 0.0
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        sync(x.device)
        t0 = time.perf_counter()
        fwd_bwd(model, x, hf, amp)
        sync(x.device)
        best = max(best, x.numel() / (time.perf_counter() - t0))
    return best


def kernels_vs_torch(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """kernel=cuda vs kernel=torch (our scan), same weights: fwd + bwd tokens/s and peak bytes per length."""
    amp = lambda: autocast(device, dtype)  # noqa: E731
    make = lambda kernel: MambaLM(MambaConfig(d_model=args.d_model, n_layers=args.layers, kernel=kernel,  # noqa: E731
                                              max_seq_len=max(args.lengths), chunk_size=args.chunk_size))
    scan = make("torch").to(device)
    fast = None
    if KERNELS_AVAILABLE and device.type == "cuda":
        fast = make("cuda").to(device)
        fast.load_state_dict(scan.state_dict())
    why = None if fast is not None else (
        "mamba_ssm / causal_conv1d do not import" if not KERNELS_AVAILABLE else f"kernels need CUDA, not {device}")
    records = []
    for T in args.lengths:
        x = torch.randint(0, scan.cfg.vocab_size, (args.batch, T), device=device)
        steps = 2 if args.quick else 5
        rate = {"torch": tokens_per_s(scan, x, False, steps, True, amp)}
        peak = {}
        for name, model in (("torch", scan), ("cuda", fast)):
            if model is None:
                continue
            if name == "cuda":
                rate[name] = tokens_per_s(model, x, False, steps, True, amp)
            model.zero_grad(set_to_none=True)
            gc.collect()
            with measure_peak(None, device) as reading:
                fwd_bwd(model, x, False, amp)
            model.zero_grad(set_to_none=True)
            peak[name] = reading.region_peak_bytes
        if fast is None:
            records += [{"name": f"mamba_torch_scan/fwd_bwd_tokens_per_s/T{T}", "baseline": None,
                         "value": rate["torch"], "ratio": None, "unit": "tokens/s", "note": why},
                        {"name": f"mamba_torch_scan/fwd_bwd_peak_bytes/T{T}", "baseline": None,
                         "value": float(peak["torch"]), "ratio": None, "unit": "bytes", "note": why}]
            continue
        records += [{"name": f"mamba_kernel_vs_torch/fwd_bwd_tokens_per_s/T{T}", "baseline": rate["torch"],
                     "value": rate["cuda"], "ratio": rate["cuda"] / rate["torch"], "unit": "tokens/s"},
                    {"name": f"mamba_kernel_vs_torch/fwd_bwd_peak_bytes/T{T}", "baseline": float(peak["torch"]),
                     "value": float(peak["cuda"]), "ratio": peak["cuda"] / max(peak["torch"], 1), "unit": "bytes"}]
    print(f"{device} {dtype}, batch {args.batch}, d_model {args.d_model}, {args.layers} layers"
          + (f"; kernels not measured: {why}" if why else ""))
    for r in records:
        base = "-" if r["baseline"] is None else f"{r['baseline']:.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['name']:<52}{base:>14}{r['value']:>14.0f}{ratio:>8}  {r['unit']} (torch scan)")
    return records


def peak_fwd_bwd_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.zero_grad(set_to_none=True)
    gc.collect()
    with measure_peak(None, "cpu") as reading:
        fwd_bwd(model, x, hf=False)
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


def cache_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    cache = model.new_cache(x.shape[0])
    with torch.no_grad():
        model(x, cache)
    return cache.nbytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one timed step, two memory lengths")
    ap.add_argument("--json", help="write records here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=None, help="model.chunk_size (default: the scan's)")
    ap.add_argument("--baseline", choices=["hf", "torch"], default="hf",
                    help="hf: our scan vs transformers' Mamba, CPU memory vs length; torch: kernels vs our scan")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192], help="T for --baseline torch")
    add_device_args(ap)
    args = ap.parse_args()
    device, dtype = resolve(ap, args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.baseline == "torch":
        records = kernels_vs_torch(args, device, dtype)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(records, f, indent=2)
        return
    if device.type != "cpu" or dtype != torch.float32:
        ap.error("--baseline hf runs on CPU in float32 (its memory tracker is the CPU one); use --baseline torch")
    ours = MambaLM(MambaConfig(d_model=args.d_model, n_layers=args.layers, kernel="torch", max_seq_len=8192,
                               chunk_size=args.chunk_size))
    hf = hf_mamba(ours)
    records = []
    for T in (512, 2048):
        x = torch.randint(0, ours.cfg.vocab_size, (args.batch, T))
        value = tokens_per_s(ours, x, False, steps=2 if args.quick else 5, warmup=True)
        # HF's token loop has nothing to warm up, and its backward grows ~quadratically (each
        # per-token slice's gradient is a full-size tensor): one step is minutes at T=2048
        baseline = tokens_per_s(hf, x, True, steps=1 if args.quick or T > 512 else 2, warmup=False)
        records.append({"name": f"mamba_fwd_bwd_tokens_per_s/T{T}", "baseline": baseline, "value": value,
                        "ratio": value / baseline, "unit": "tokens/s"})
    del hf
    tcfg = TransformerConfig(d_model=args.d_model, n_layers=args.layers, n_heads=4, max_seq_len=8192)
    transformer = Transformer(tcfg)
    for T in ((512, 2048) if args.quick else (512, 1024, 2048, 4096)):
        x = torch.randint(0, tcfg.vocab_size, (args.batch, T))
        for name, fn in (("fwd_bwd_peak_bytes", peak_fwd_bwd_bytes), ("fwd_peak_bytes", peak_fwd_bytes),
                         ("cache_bytes", cache_bytes)):
            value, baseline = fn(ours, x), fn(transformer, x)
            records.append({"name": f"mamba_vs_transformer/{name}/T{T}", "baseline": float(baseline),
                            "value": float(value), "ratio": value / baseline, "unit": "bytes"})
    print(f"{'bench':<46}{'baseline':>14}{'ours':>14}{'ratio':>8}  unit (baseline)")
    for r in records:
        base = "HF Mamba" if r["unit"] == "tokens/s" else "transformer"
        print(f"{r['name']:<46}{r['baseline']:>14.0f}{r['value']:>14.0f}{r['ratio']:>8.3f}"
              f"  {r['unit']} ({base})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
