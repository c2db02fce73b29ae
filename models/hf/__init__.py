"""Weights exchange with Hugging Face directories (config.json + safetensors), with no transformers import.

    fields = model_fields_from(path)        # our ``model`` config fields, dtype = the stored one
    model = load_model(cfg, path)           # strict, tensor by tensor, in cfg.dtype
    save_pretrained(model, out)             # config.json + model.safetensors that transformers loads

Families: Llama (rope_scaling incl. llama3, tied embeddings, GQA), Mistral (sliding window), Qwen2
(q/k/v biases) as our transformer; transformers' MambaForCausalLM as our mamba, Mamba2ForCausalLM as our
mamba2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from models.hf.errors import HFFormatError
from models.hf.families import ARCHITECTURES, hf_config, model_fields
from models.hf.weights import load_model, save_weights, stored_dtype

__all__ = ["ARCHITECTURES", "HFFormatError", "load_model", "model_fields_from", "read_config", "save_pretrained"]


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        what = "is not a directory" if not path.is_dir() else "has no config.json"
        raise HFFormatError(f"init_from=hf:{path} {what}; expected a Hugging Face model directory "
                            "(config.json + safetensors)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise HFFormatError(f"{file} is not valid JSON: {err}") from None


def model_fields_from(path: str | Path) -> dict[str, Any]:
    """Our ``model`` config fields for the directory, ``dtype`` being the stored dtype."""
    path = Path(path)
    fields = model_fields(read_config(path), f"hf:{path}")
    fields["dtype"] = stored_dtype(path, fields["family"])
    return fields


def save_pretrained(model: nn.Module, out: str | Path) -> Path:
    """Write ``out/config.json`` and ``out/model.safetensors`` for ``model`` (LoRA merged first)."""
    out = Path(out)
    config = hf_config(model.cfg, str(next(model.parameters()).dtype).removeprefix("torch."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_weights(model, out)
    return out


