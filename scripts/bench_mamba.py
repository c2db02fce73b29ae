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

Records: {"name", "baseline", "value", "ratio", "unit"} with ratio = value / baseline; for
throughput the baseline is HF, for memory the baseline is the transformer. ``--threads`` defaults
to 1: on a shared machine, oversubscribed OpenMP threads make CPU timings meaningless.
Runtime is dominated by HF at T=2048 (one fwd+bwd takes minutes): ~5 min with --quick.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.families.mamba import MambaConfig, MambaLM  # noqa: E402
from models.families.transformer import Transformer, TransformerConfig  # noqa: E402
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


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, hf: bool) -> None:
    logits = model(input_ids=x).logits if hf else model(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()


def tokens_per_s(model: torch.nn.Module, x: torch.Tensor, hf: bool, steps: int, warmup: bool) -> float:
    model.train()
    if warmup:
        fwd_bwd(model, x, hf)
    best = 0.0
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fwd_bwd(model, x, hf)
        best = max(best, x.numel() / (time.perf_counter() - t0))
    return best


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
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
