"""Decode throughput and memory per KV-cache policy and context length (tiny model, CPU by default).

For each policy (full, sink_window, duo with 50% retrieval heads, quest) and context length:
prefill the prompt densely, then decode N tokens one at a time. Reports decode tokens/s, the
measured peak memory of the decode loop (``pipeline.train.memory.measure_peak``: parameters + tensors
allocated inside the loop), the cache's reported bytes and its
analytic closed form. The model's fixed cost is the parameter bytes plus a per-step activation
constant measured, per policy, at the shortest length; the check is whether measured peak is
within 10% of fixed cost + analytic cache bytes. Caches that keep every token (full, duo's
retrieval heads, quest) are preallocated for the known length (``ModelCache.reserve``), so no
step copies the whole cache.

    python scripts/bench_decode.py --quick --json results/bench_decode.json
    python scripts/bench_decode.py --lengths 1024,32768 --policies quest   # Quest's memory at 32k
    python scripts/bench_decode.py --device cuda --dtype bfloat16 --d-model 1024 --layers 8 \
        --lengths 32768,131072             # the GPU check: a bf16 model and KV cache, CUDA allocator peaks

On CUDA every timed loop ends with a synchronize (decode is asynchronous), and peaks are the
allocator's (everything live on the device: weights, both caches' tensors, the step's activations).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_device import add_device_args, resolve, sync  # noqa: E402

from models.caches import CacheConfig  # noqa: E402
from models.duo import deploy_gates, save_gates  # noqa: E402
from models.families.transformer import Transformer, TransformerConfig  # noqa: E402
from pipeline.train.memory import measure_peak, module_bytes  # noqa: E402

SINK, WINDOW, BUDGET, PAGE = 4, 256, 512, 16


def policies(gates_path: str) -> dict[str, CacheConfig]:
    return {
        "full": CacheConfig(policy="full"),
        "sink_window": CacheConfig(policy="sink_window", sink=SINK, window=WINDOW),
        "duo": CacheConfig(policy="duo", gates_path=gates_path, sparsity=0.5, sink=SINK, window=WINDOW),
        # dense_layers=2 (the reference) is capped at n_layers - 1: this 2-layer model keeps layer 0 dense
        "quest": CacheConfig(policy="quest", budget=BUDGET, page_size=PAGE),
    }


def analytic_cache_bytes(name: str, cfg: TransformerConfig, n: int, batch: int, retrieval: int,
                         elem: int = 4) -> int:
    """Closed-form bytes held after n tokens of ``elem``-byte elements (4: fp32); ``retrieval``: duo
    retrieval heads, all layers."""
    per_token_head = 2 * batch * cfg.head_dim * elem  # K and V of one token in one KV head
    heads = cfg.n_layers * cfg.n_kv_heads
    if name == "full":
        return heads * n * per_token_head
    if name == "sink_window":
        return heads * min(n, SINK + WINDOW) * per_token_head
    if name == "duo":
        return (retrieval * n + (heads - retrieval) * min(n, SINK + WINDOW)) * per_token_head
    if name == "quest":
        sparse_heads = (cfg.n_layers - 1) * cfg.n_kv_heads
        return heads * n * per_token_head + sparse_heads * math.ceil(n / PAGE) * per_token_head
    raise ValueError(name)


def run_one(model: Transformer, policy: CacheConfig, prompt: torch.Tensor, steps: int,
            repeats: int) -> dict:
    with torch.no_grad():
        cache = model.new_cache(prompt.shape[0], policy)
        cache.reserve(prompt.shape[1] + steps)  # the full cache preallocates: no per-step copy
        nxt = model(prompt, cache)[:, -1:].argmax(-1)  # the prompt's logits are not kept
        seconds = float("inf")
        for _ in range(repeats):  # throughput on a copy, untracked; best of ``repeats``
            timed, tok = cache.clone(), nxt
            sync(prompt.device)
            start = time.perf_counter()
            for _ in range(steps):
                tok = model(tok, timed)[:, -1:].argmax(-1)
            sync(prompt.device)
            seconds = min(seconds, time.perf_counter() - start)
            del timed
        tok = nxt
        with measure_peak(model, prompt.device) as reading:  # memory, same tokens on the other copy
            for _ in range(steps):
                tok = model(tok, cache)[:, -1:].argmax(-1)
    return {"tok_s": steps * prompt.shape[0] / seconds, "peak": reading.peak_bytes,
            "cache": cache.nbytes(), "seen": cache.seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="lengths 1k..4k, fewer decode steps")
    ap.add_argument("--json", default=None, help="write [{name, baseline, value, ratio, unit}] here")
    ap.add_argument("--steps", type=int, default=None, help="decode steps (default 64, quick 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed decode loops per cell (best kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared CPU)")
    ap.add_argument("--lengths", default=None, help="comma-separated context lengths (overrides --quick's)")
    ap.add_argument("--policies", default=None,
                    help="comma-separated subset of full,sink_window,duo,quest (full always runs: the baseline)")
    add_device_args(ap)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    args = ap.parse_args()
    device, dtype = resolve(ap, args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lengths = [1024, 2048, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    if args.lengths:
        lengths = sorted(int(x) for x in args.lengths.split(","))
    steps = args.steps or (32 if args.quick else 64)
    cfg = TransformerConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                            n_kv_heads=args.kv_heads or args.heads, max_seq_len=max(lengths) + steps)
    model = Transformer(cfg).to(device, dtype).eval()  # bf16: weights and KV cache (inference)
    elem = torch.tensor([], dtype=dtype).element_size()
    params = module_bytes(model)
    gates = torch.rand(cfg.n_layers, cfg.n_kv_heads)
    roles = deploy_gates(gates, sparsity=0.5)  # as the duo cache will deploy them
    retrieval = int(roles.sum())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gates.pt")
        save_gates(gates, path)
        pols = policies(path)
        if args.policies:
            wanted = {"full", *args.policies.split(",")}
            unknown = wanted - set(pols)
            if unknown:
                raise SystemExit(f"--policies: unknown {sorted(unknown)}; allowed: {sorted(pols)}")
            pols = {k: v for k, v in pols.items() if k in wanted}
        with torch.no_grad():  # warm-up: first calls pay for allocator and kernel set-up
            for pol in pols.values():
                run_one(model, pol, torch.randint(0, cfg.vocab_size, (1, 300), device=device), 8, 1)
        rows, failed = [], []
        for L in lengths:
            prompt = torch.randint(0, cfg.vocab_size, (1, L), device=device)
            for name, pol in pols.items():
                try:
                    r = run_one(model, pol, prompt, steps, args.repeats)
                except Exception as err:  # noqa: BLE001 - a cell that fails (out of memory, ...) is a record
                    failed.append({"name": f"decode_tok_s/{name}/L={L}", "error": f"{type(err).__name__}: {err}"[:300]})
                    print(f"  {name:12s} L={L:6d} {type(err).__name__}: {str(err)[:200]}", flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                r.update(name=name, L=L, analytic=analytic_cache_bytes(name, cfg, L + steps, 1, retrieval, elem))
                rows.append(r)
                print(f"  {name:12s} L={L:6d} {r['tok_s']:8.1f} tok/s", flush=True)

    # per-step activation constant, measured at the shortest length
    act = {r["name"]: r["peak"] - params - r["analytic"] for r in rows if r["L"] == lengths[0]}
    full_tok = {r["L"]: r["tok_s"] for r in rows if r["name"] == "full"}
    rows = [r for r in rows if r["name"] in act and r["L"] in full_tok]  # comparable cells only
    records = list(failed)
    print(f"\n{device} {args.dtype}; params {params} B; decode {steps} tokens, batch 1, threads {args.threads}; "
          f"sink+window {SINK}+{WINDOW}, quest budget {BUDGET} page {PAGE}, duo 50% retrieval heads")
    print(f"{'policy':12s} {'L':>6s} {'tok/s':>8s} {'x full':>7s} {'cache B':>11s} {'analytic B':>11s} "
          f"{'peak B':>11s} {'fixed+cache':>11s} {'err':>7s} {'<=10%':>6s}")
    for r in rows:
        predicted = params + act[r["name"]] + r["analytic"]
        err = r["peak"] / predicted - 1
        print(f"{r['name']:12s} {r['L']:6d} {r['tok_s']:8.1f} {r['tok_s'] / full_tok[r['L']]:7.2f} "
              f"{r['cache']:11d} {r['analytic']:11d} {r['peak']:11d} {predicted:11d} {err:+7.1%} "
              f"{'yes' if abs(err) <= 0.10 else 'NO':>6s}")
        tag = f"{r['name']}/L={r['L']}"
        records += [
            {"name": f"decode_tok_s/{tag}", "baseline": full_tok[r["L"]], "value": r["tok_s"],
             "ratio": r["tok_s"] / full_tok[r["L"]], "unit": "tok/s"},
            {"name": f"cache_bytes/{tag}", "baseline": r["analytic"], "value": r["cache"],
             "ratio": r["cache"] / r["analytic"], "unit": "bytes"},
            {"name": f"peak_decode_bytes/{tag}", "baseline": predicted, "value": r["peak"],
             "ratio": r["peak"] / predicted, "unit": "bytes"},
        ]
    print()
    ends = lambda name: [r for r in rows if r["name"] == name and r["L"] in (lengths[0], lengths[-1])]
    full_first, full_last = ends("full") if len(ends("full")) == 2 else (None, None)
    for name in pols:
        if len(ends(name)) != 2 or len(ends("full")) != 2:
            continue  # a failed end point: no growth to report
        first, last = ends(name)
        growth = last["peak"] / first["peak"]
        slope = (last["cache"] - first["cache"]) / (full_last["cache"] - full_first["cache"])
        flat = "flat" if growth < 1.10 else "grows"
        print(f"{name:12s} peak {first['peak']} -> {last['peak']} B from {lengths[0]} to {lengths[-1]} "
              f"tokens: x{growth:.2f} ({flat}); cache bytes per token = {slope:.3f} x full's")
        records.append({"name": f"peak_growth/{name}", "baseline": first["peak"], "value": last["peak"],
                        "ratio": growth, "unit": "bytes"})
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
