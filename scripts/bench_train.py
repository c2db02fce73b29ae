"""Training throughput: our transformer vs transformers' LlamaForCausalLM, same config, same run.

    python scripts/bench_train.py [--quick] [--json PATH]

fwd + bwd + AdamW step tokens/s at T=512 and T=2048 (CPU unless --device cuda). The ratio is
ours / HF; both models get identical shapes, weights layout and SDPA attention.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def make_step(model: torch.nn.Module, hf: bool, x: torch.Tensor, vocab: int):
    """One fwd + bwd + AdamW step of ``model`` on ``x`` (full next-token loss, as any LM trains)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(input_ids=x).logits if hf else model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved_tokens_per_s(steps: dict, tokens: int, n: int, warmup: int, device: str) -> dict[str, float]:
    """Alternate one step of each model n times; tokens/s from each one's median step time.

    Interleaving per step and taking medians keeps a noisy shared machine from favouring whichever
    model happened to run during a quiet stretch.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--json", help="write records here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    cfg = TransformerConfig(vocab_size=512, d_model=args.d_model, n_layers=args.layers, n_heads=4, max_seq_len=4096)
    records = []
    for T in (512, 2048):
        batch = max(1, 4096 // T)
        torch.manual_seed(0)
        x = torch.randint(0, cfg.vocab_size, (batch, T), device=args.device)
        steps = {"ours": make_step(Transformer(cfg).to(args.device).train(), False, x, cfg.vocab_size),
                 "hf": make_step(hf_llama(cfg).to(args.device).train(), True, x, cfg.vocab_size)}
        rate = interleaved_tokens_per_s(steps, batch * T, n=5 if args.quick else 20, warmup=2, device=args.device)
        records.append({"name": f"train_tokens_per_s_T{T}", "baseline": rate["hf"], "value": rate["ours"],
                        "ratio": rate["ours"] / rate["hf"], "unit": "tokens/s"})
    print(f"{'bench':<28}{'HF Llama':>14}{'ours':>14}{'ratio':>8}")
    for r in records:
        print(f"{r['name']:<28}{r['baseline']:>14.0f}{r['value']:>14.0f}{r['ratio']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
