"""Training throughput: our transformer vs transformers' LlamaForCausalLM, same config, same run.

    python scripts/bench_train.py [--quick] [--json PATH]

fwd + bwd + AdamW step tokens/s at T=512 and T=2048 (CPU unless --device cuda). The ratio is
ours / HF; both models get identical shapes, weights layout and SDPA attention.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.transformer import Transformer, TransformerConfig  # noqa: E402


def hf_llama(cfg: TransformerConfig) -> torch.nn.Module:
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.pos.base}, use_cache=False)
    hf_cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(hf_cfg)


def tokens_per_s(model: torch.nn.Module, hf: bool, batch: int, T: int, vocab: int, steps: int,
                 device: str) -> float:
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, T), device=device)

    def step() -> None:
        logits = model(input_ids=x).logits if hf else model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * T * steps / (time.perf_counter() - t0)


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
        steps = 3 if args.quick else 10
        torch.manual_seed(0)
        ours, ref = Transformer(cfg), hf_llama(cfg)
        rounds = [(tokens_per_s(ours, False, batch, T, cfg.vocab_size, steps, args.device),
                   tokens_per_s(ref, True, batch, T, cfg.vocab_size, steps, args.device)) for _ in range(3)]
        value, baseline = max(r[0] for r in rounds), max(r[1] for r in rounds)  # best of interleaved rounds
        records.append({"name": f"train_tokens_per_s_T{T}", "baseline": baseline, "value": value,
                        "ratio": value / baseline, "unit": "tokens/s"})
    print(f"{'bench':<28}{'HF Llama':>14}{'ours':>14}{'ratio':>8}")
    for r in records:
        print(f"{r['name']:<28}{r['baseline']:>14.0f}{r['value']:>14.0f}{r['ratio']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
