"""Export a checkpoint of this project as a Hugging Face directory that transformers loads.

    python scripts/export_hf.py ckpt=outputs/.../checkpoints/last.ckpt out=exported/my-model [dtype=bfloat16]
    python scripts/export_hf.py ckpt=... out=exported/my-model --overwrite   # replace the model in OUT

Writes OUT/config.json (architectures and rope_parameters of the model *after* extension: Llama,
Qwen2 when it has q/k/v biases, Mistral when it has a sliding window, Mamba) and OUT/model.safetensors;
LoRA adapters are merged first. transformers then gives the same logits:
``AutoModelForCausalLM.from_pretrained(OUT)``. When the run started from ``init_from=hf:PATH``, the
tokenizer and generation files of PATH are copied along. Needs no transformers itself.

OUT must be new or empty: an old model there (its shard index above all) would be loaded instead of,
or mixed with, the new one. ``--overwrite`` removes the old model's files first; either way the files
are written into a temporary directory beside OUT and moved in (models/hf/target.py). Weights that
are not finite are refused unless ``--allow-nonfinite``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.hf import HFFormatError, save_pretrained  # noqa: E402
from models.hf.target import check_target  # noqa: E402
from models.lm import DTYPES  # noqa: E402
from models.lora import LoraPlusConfig  # noqa: E402
from pipeline.config.resolve import ConfigError, build_model_config, to_dataclass  # noqa: E402
from pipeline.run import describe  # noqa: E402
from pipeline.train.checkpoint import CheckpointError, load_trained_model, read_checkpoint  # noqa: E402

FLAGS = {"--overwrite": "replace the model files of a non-empty out directory",
         "--allow-nonfinite": "export weights holding NaN or inf"}
ARGS = {"ckpt": "a checkpoint of train.py", "out": "the directory to write",
        "dtype": f"optional: cast to one of {sorted(DTYPES)} (default: as trained)"}
# files of the source directory that belong with the weights (nothing here reads them)
CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
           "generation_config.json")


def parse(argv: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for item in argv:
        if item in FLAGS:
            args[item[2:].replace("-", "_")] = True
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in ARGS:
            raise SystemExit(f"export_hf.py: bad argument {item!r}; allowed: " +
                             ", ".join([f"{k}=... ({v})" for k, v in ARGS.items()] +
                                       [f"{k} ({v})" for k, v in FLAGS.items()]))
        args[key] = value
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise SystemExit(f"export_hf.py: {key}=... is required ({ARGS[key]})")
    if args.get("dtype") and args["dtype"] not in DTYPES:
        raise SystemExit(f"export_hf.py: dtype={args['dtype']!r}; allowed: {sorted(DTYPES)}")
    return args


def export(ckpt: str, out: str, dtype: str | None = None, overwrite: bool = False,
           allow_nonfinite: bool = False) -> Path:
    check_target(out, overwrite)  # before any work (save_pretrained checks again)
    checkpoint = read_checkpoint(ckpt)
    config = checkpoint.get("config") or {}
    if "model" not in config:
        raise CheckpointError(f"ckpt={ckpt!r} carries no config; it was not written by train.py")
    model_cfg = build_model_config(config["model"])
    lora = to_dataclass(LoraPlusConfig, config.get("lora"), "lora")
    model, gates = load_trained_model(checkpoint, model_cfg, lora, source=f"ckpt={ckpt}",
                                      allow_nonfinite=allow_nonfinite)
    if dtype:
        model.to(DTYPES[dtype])
    source = str(config.get("init_from") or "")
    carry = [Path(source[3:]) / name for name in CARRIED if source.startswith("hf:")
             and (Path(source[3:]) / name).is_file()]
    path = save_pretrained(model.eval(), out, overwrite=overwrite, carry=carry, allow_nonfinite=allow_nonfinite)
    print(f"wrote {path}/config.json and model.safetensors ({model_cfg.family}, {describe(model_cfg)})")
    if gates is not None:
        print("note: the checkpoint's DuoAttention gates are not model weights and were not exported")
    return path


if __name__ == "__main__":
    try:
        export(**parse(sys.argv[1:]))
    except (CheckpointError, HFFormatError, ConfigError) as err:  # bad input: the message alone, naming it
        raise SystemExit(f"export_hf.py: {err}") from None
