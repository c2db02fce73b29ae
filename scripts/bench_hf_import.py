"""Importing a bf16 Hugging Face directory: peak memory and time of ``init_from=hf:PATH`` vs a naive load.

    python scripts/bench_hf_import.py [--quick] [--json PATH]

transformers saves a random Llama in bf16 (d_model 1024, 12 layers, vocab 32000: ~0.2B parameters;
--quick: d_model 512, 4 layers). Each path then runs in a fresh process, which reports its peak
anonymous memory growth (RssAnon sampled every 0.5 ms; the mmap'd file is page cache) and seconds:
- ours: models.hf.load_model (meta-device build, empty bf16 allocation, tensors copied one at a time);
- baseline: the naive path -- build the model in float32 (random init), read the whole file with
  safetensors.torch.load_file, load_state_dict, then cast to bf16.
Records {"name", "baseline", "value", "ratio", "unit"}, ratio = ours / naive; the model's own bf16
bytes are printed for scale (ours should stay close to 1x of them, the naive path near 3x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, {root!r})
import torch
from models.hf import load_model, model_fields_from
from models.registry import build_model
from pipeline.config.resolve import build_model_config

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

path, mode = sys.argv[1], sys.argv[2]
fields = model_fields_from(path)
cfg = build_model_config(fields)
before, peak, done = rss("RssAnon"), [0], threading.Event()

def poll():  # anonymous memory only: mmap'd safetensors pages are page cache, not a copy
    while not done.is_set():
        peak[0] = max(peak[0], rss("RssAnon"))
        time.sleep(0.0005)

threading.Thread(target=poll, daemon=True).start()
start = time.perf_counter()
if mode == "ours":
    model = load_model(cfg, path)
else:
    from safetensors.torch import load_file
    cfg.dtype = None
    model = build_model(cfg)
    stored = load_file(path + "/model.safetensors")
    state = {{k[len("model."):] if k.startswith("model.") else k: v for k, v in stored.items()}}
    model.load_state_dict(state, strict=True)
    del state, stored
    model = model.to(torch.bfloat16)
seconds = time.perf_counter() - start
time.sleep(0.01)
done.set()
size = sum(p.numel() * p.element_size() for p in {{id(p): p for p in model.parameters()}}.values())
print(json.dumps({{"peak": peak[0] - before, "seconds": seconds, "bytes": size}}))
"""


def save_llama(path: str, quick: bool) -> None:
    import torch
    import transformers

    d, layers = (512, 4) if quick else (1024, 12)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=d, intermediate_size=int(d * 8 / 3) // 64 * 64,
                                   num_hidden_layers=layers, num_attention_heads=d // 64, num_key_value_heads=d // 256,
                                   tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)


def measure(path: str, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), path, mode], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        save_llama(tmp, args.quick)
        ours, naive = measure(tmp, "ours"), measure(tmp, "naive")
    gib = 2**30
    print(f"model (bf16): {ours['bytes'] / gib:.3f} GiB")
    records = [
        {"name": "import peak anon memory", "baseline": naive["peak"], "value": ours["peak"],
         "ratio": ours["peak"] / naive["peak"], "unit": "bytes"},
        {"name": "import seconds", "baseline": naive["seconds"], "value": ours["seconds"],
         "ratio": ours["seconds"] / naive["seconds"], "unit": "s"},
    ]
    for r in records:
        print(f"{r['name']:>24}: naive {r['baseline'] / (gib if r['unit'] == 'bytes' else 1):.3f}  "
              f"ours {r['value'] / (gib if r['unit'] == 'bytes' else 1):.3f}  ratio {r['ratio']:.2f}")
    print(f"ours peak / model bytes: {ours['peak'] / ours['bytes']:.2f}x; naive: {naive['peak'] / ours['bytes']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
