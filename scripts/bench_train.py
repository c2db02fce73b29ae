"""Training throughput: our transformer vs transformers' LlamaForCausalLM, same config, same run.

    python scripts/bench_train.py [--quick] [--json PATH]
    python scripts/bench_train.py --device cuda --dtype bfloat16 --d-model 1024 2048 --lengths 4096 32768 \
        --modes eager compiled --baseline eager            # the GPU check: tokens/s and MFU
    python scripts/bench_train.py --families [--quick]     # every family vs the transformer, eager + compiled, CPU MFU

``--families``: scripts/bench_families.py (every family at its preset depth, d_model 64 / 128, L 64 / 512, eager and
compiled, tokens/s vs the same-width transformer and MFU against this machine's measured fp32 matmul peak).

fwd + bwd + AdamW step tokens/s at T=512 and T=2048 (CPU unless --device cuda). The ratio is
ours / HF; both models get identical shapes, weights layout and SDPA attention. ``--baseline eager``
drops HF and compares ``--modes`` (``compiled``: ``torch.compile`` of our model) against our eager model.

MFU (model FLOPs utilisation) = model FLOP/s / the device's dense peak (bench_device.PEAK_BF16_FLOPS, or
``--peak-tflops``), with model FLOPs per token of a fwd + bwd step = 6 N + 6 n_layers d_attn T
(N: parameters in matmuls, i.e. all but the token embedding; d_attn = n_heads x head_dim; the second
term is causal attention's QK^T and AV, half of PaLM's non-causal 12 n_layers d_attn T; recompute and
the optimizer are not counted). Recorded as ``train_mfu/...`` with value = model FLOP/s, baseline =
peak, ratio = MFU; only where the peak is known (bf16 on a listed GPU, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_device import add_device_args, autocast, peak_flops, resolve, sync  # noqa: E402

from models.families.transformer import Transformer, TransformerConfig  # noqa: E402


def hf_llama(cfg: TransformerConfig) -> torch.nn.Module:
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.pos.base}, use_cache=False)
    hf_cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(hf_cfg)


def flops_per_token(model: Transformer, T: int) -> float:
    """6 N + 6 n_layers d_attn T (module docstring): fwd + bwd model FLOPs per trained token."""
    cfg = model.cfg
    matmul_params = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    if cfg.tie_embeddings:
        matmul_params += model.embed_tokens.weight.numel()  # the head still multiplies by it
    return 6 * matmul_params + 6 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T


def make_step(model: torch.nn.Module, hf: bool, x: torch.Tensor, vocab: int, amp=contextlib.nullcontext):
    """One fwd + bwd + AdamW step of ``model`` on ``x`` (full next-token loss, as any LM trains);
    ``amp``: the precision context factory (bench_device.autocast for mixed precision)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with amp():
            logits = model(input_ids=x).logits if hf else model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved_tokens_per_s(steps: dict, tokens: int, n: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Alternate one step of each model n times; tokens/s from each one's median step time.

    Interleaving per step and taking medians keeps a noisy shared machine from favouring whichever
    model happened to run during a quiet stretch.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def run_hf_comparison(cfg: TransformerConfig, lengths: list[int], batch_tokens: int, n: int,
                       device: torch.device, amp) -> list[dict]:
    """Ours vs transformers' Llama, eager, interleaved step by step (the CPU default)."""
    records = []
    for T in lengths:
        batch = max(1, batch_tokens // T)
        torch.manual_seed(0)
        x = torch.randint(0, cfg.vocab_size, (batch, T), device=device)
        steps = {"ours": make_step(Transformer(cfg).to(device).train(), False, x, cfg.vocab_size, amp),
                 "hf": make_step(hf_llama(cfg).to(device).train(), True, x, cfg.vocab_size, amp)}
        rate = interleaved_tokens_per_s(steps, batch * T, n=n, warmup=2, device=device)
        records.append({"name": f"train_tokens_per_s_T{T}", "baseline": rate["hf"], "value": rate["ours"],
                        "ratio": rate["ours"] / rate["hf"], "unit": "tokens/s"})
    print(f"{'bench':<28}{'HF Llama':>14}{'ours':>14}{'ratio':>8}")
    for r in records:
        print(f"{r['name']:<28}{r['baseline']:>14.0f}{r['value']:>14.0f}{r['ratio']:>8.2f}")
    return records


def run_modes(cfg: TransformerConfig, T: int, batch_tokens: int, modes: list[str], n: int, device: torch.device,
              amp, peak: float | None, compile_backend: str) -> list[dict]:
    """Our model eager vs ``torch.compile``d (same weights), interleaved; tokens/s and MFU per mode.

    A mode that fails (a compile error, out of memory) becomes an ``error`` record; the others stand.
    """
    batch = max(1, batch_tokens // T)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, T), device=device)
    model = Transformer(cfg).to(device).train()
    tag = f"d{cfg.d_model}_L{cfg.n_layers}/T{T}_B{batch}"
    fns = {"eager": lambda: model, "compiled": lambda: torch.compile(model, backend=compile_backend)}
    steps = {m: make_step(fns[m](), False, x, cfg.vocab_size, amp) for m in modes}
    try:
        rate = interleaved_tokens_per_s(steps, batch * T, n=n, warmup=2, device=device)
    except Exception as err:  # noqa: BLE001 - one failed cell is a record, not the end of the benchmark
        if device.type == "cuda":
            torch.cuda.empty_cache()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return [{"name": f"train_tokens_per_s/{tag}/{m}", "error": f"{type(err).__name__}: {first[:300]}"}
                for m in modes]
    per_token = flops_per_token(model, T)
    records = []
    for m in modes:
        base = rate.get("eager", rate[m])
        records.append({"name": f"train_tokens_per_s/{tag}/{m}", "baseline": base, "value": rate[m],
                        "ratio": rate[m] / base, "unit": "tokens/s"})
        if peak:
            achieved = rate[m] * per_token
            records.append({"name": f"train_mfu/{tag}/{m}", "baseline": peak, "value": achieved,
                            "ratio": achieved / peak, "unit": "FLOP/s"})
        mfu = f"{rate[m] * per_token / peak:7.1%}" if peak else "    n/a"
        print(f"{tag:<28}{m:>10}{rate[m]:>14.0f}{mfu:>9}", flush=True)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--json", help="write records here")
    add_device_args(ap, "cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int, nargs="+", default=[128], help="one or more widths")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=None, help="default 4 (HF comparison), else d_model / 128")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch-tokens", type=int, default=4096, help="tokens per step: batch = max(1, this / T)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 20, quick 5)")
    ap.add_argument("--baseline", choices=["hf", "eager"], default="hf",
                    help="hf: ours vs transformers' Llama; eager: --modes vs our eager model, with MFU")
    ap.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager"])
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: looked up)")
    ap.add_argument("--families", nargs="*", default=None,
                    help="every family (or these) vs the transformer on CPU, eager + compiled (bench_families.py)")
    ap.add_argument("--threads", type=int, default=1, help="--families: torch threads (1 on a shared machine)")
    args = ap.parse_args()
    if args.families is not None:
        return run_families(ap, args)
    device, dtype = resolve(ap, args)
    if args.baseline == "hf" and args.modes != ["eager"]:
        ap.error("--modes compiled needs --baseline eager (the HF comparison is eager against eager)")
    amp = lambda: autocast(device, dtype)  # noqa: E731
    n = args.steps or (5 if args.quick else 20)
    records: list[dict] = []

    def save() -> None:  # after every cell: a run stopped at a time limit keeps what it measured
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(records, f, indent=2)

    for d_model in args.d_model:
        heads = args.heads or (4 if args.baseline == "hf" else max(1, d_model // 128))
        cfg = TransformerConfig(vocab_size=args.vocab, d_model=d_model, n_layers=args.layers, n_heads=heads,
                                max_seq_len=max(4096, *args.lengths))
        if args.baseline == "hf":
            records += run_hf_comparison(cfg, args.lengths, args.batch_tokens, n, device, amp)
            continue
        peak = peak_flops(device, dtype, args.peak_tflops)
        print(f"{device} {args.dtype}: peak {peak / 1e12:.0f} TFLOP/s" if peak else
              f"{device} {args.dtype}: peak FLOP/s unknown (--peak-tflops): no MFU")
        print(f"{'cell':<28}{'mode':>10}{'tokens/s':>14}{'MFU':>9}")
        for T in args.lengths:
            records += run_modes(cfg, T, args.batch_tokens, args.modes, n, device, amp, peak, args.compile_backend)
            save()
    save()


def run_families(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import bench_families

    families = args.families or bench_families.family_names()
    unknown = sorted(set(families) - set(bench_families.family_names()))
    if unknown:
        ap.error(f"--families {unknown}: not families; allowed: {bench_families.family_names()}")
    families = ["transformer", *[f for f in families if f != "transformer"]]  # the baseline of every record
    widths = [64] if args.quick else (args.d_model if args.d_model != [128] else [64, 128])
    lengths = [64] if args.quick else (args.lengths if args.lengths != [512, 2048] else [64, 512])
    modes = ["eager", "compiled"] if args.modes == ["eager"] else args.modes
    if args.quick and not args.families:  # a short run: the transformer, one SSM, one linear attention
        families = families[:1] + [f for f in families[1:] if f in ("mamba", "gla")]

    def save(records: list[dict]) -> None:
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(records, f, indent=2)

    records = bench_families.run(families, widths, lengths, modes, args.batch_tokens, args.steps or (2 if args.quick
                                 else 10), args.vocab, args.threads, args.compile_backend, save)
    save(records)


if __name__ == "__main__":
    main()
