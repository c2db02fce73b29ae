"""Export a checkpoint of this project as a Hugging Face directory that transformers loads.

    python scripts/export_hf.py ckpt=outputs/.../checkpoints/last.ckpt out=exported/my-model [dtype=bfloat16]

Writes OUT/config.json (architectures and rope_parameters of the model *after* extension: Llama,
Qwen2 when it has q/k/v biases, Mistral when it has a sliding window, Mamba) and OUT/model.safetensors;
LoRA adapters are merged first. transformers then gives the same logits:
``AutoModelForCausalLM.from_pretrained(OUT)``. When the run started from ``init_from=hf:PATH``, the
tokenizer and generation files of PATH are copied along. Needs no transformers itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.hf import save_pretrained  # noqa: E402
from models.lm import DTYPES  # noqa: E402
from models.lora import LoraPlusConfig  # noqa: E402
from pipeline.checkpoint import load_trained_model, read_checkpoint  # noqa: E402
from pipeline.config import build_model_config, to_dataclass  # noqa: E402
from pipeline.run import describe  # noqa: E402

ARGS = {"ckpt": "a checkpoint of train.py", "out": "the directory to write",
        "dtype": f"optional: cast to one of {sorted(DTYPES)} (default: as trained)"}
# files of the source directory that belong with the weights (nothing here reads them)
CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
           "generation_config.json")


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ARGS:
            raise SystemExit(f"export_hf.py: bad argument {item!r}; allowed: " +
                             ", ".join(f"{k}=... ({v})" for k, v in ARGS.items()))
        args[key] = value
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise SystemExit(f"export_hf.py: {key}=... is required ({ARGS[key]})")
    if args.get("dtype") and args["dtype"] not in DTYPES:
        raise SystemExit(f"export_hf.py: dtype={args['dtype']!r}; allowed: {sorted(DTYPES)}")
    return args


def export(ckpt: str, out: str, dtype: str | None = None) -> Path:
    checkpoint = read_checkpoint(ckpt)
    config = checkpoint.get("config") or {}
    if "model" not in config:
        raise SystemExit(f"ckpt={ckpt!r} carries no config; it was not written by train.py")
    model_cfg = build_model_config(config["model"])
    lora = to_dataclass(LoraPlusConfig, config.get("lora"), "lora")
    model, gates = load_trained_model(checkpoint, model_cfg, lora, source=f"ckpt={ckpt}")
    if dtype:
        model.to(DTYPES[dtype])
    path = save_pretrained(model.eval(), out)
    source = str(config.get("init_from") or "")
    if source.startswith("hf:"):
        for name in CARRIED:
            if (Path(source[3:]) / name).is_file():
                shutil.copy2(Path(source[3:]) / name, path / name)
    print(f"wrote {path}/config.json and model.safetensors ({model_cfg.family}, {describe(model_cfg)})")
    if gates is not None:
        print("note: the checkpoint's DuoAttention gates are not model weights and were not exported")
    return path


if __name__ == "__main__":
    export(**parse(sys.argv[1:]))
