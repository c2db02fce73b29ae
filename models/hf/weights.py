"""Safetensors in and out, strictly: every tensor mapped, none left over, every shape checked.

Import builds the model on the meta device, allocates it empty in its target dtype, then copies
the stored tensors in one at a time (``safe_open``), so a bf16 model never passes through a
float32 copy and peak memory is the model plus one tensor. Sharded directories
(``model.safetensors.index.json``) and single files are read alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.hf.errors import HFFormatError
from models.hf.families import hf_name
from models.strict_load import mismatch_report
from models.positional import Positional
from models.registry import build_model

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# stored by some older transformers versions; recomputed from the config, never weights
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def weight_files(path: Path) -> dict[str, Path]:
    """Every stored tensor name -> the safetensors file holding it."""
    index = path / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: path / file for name, file in weight_map.items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise HFFormatError(f"{index} names shards that are not there: {absent}")
        return files
    single = path / SINGLE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    hint = " (pytorch_model.bin: convert it to safetensors first)" if "pytorch_model.bin" in present else ""
    raise HFFormatError(f"hf:{path} has neither {SINGLE} nor {INDEX}; found {present}{hint}")


def _shapes_and_dtypes(files: dict[str, Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Header-only: (shape, safetensors dtype) of every stored tensor, no data read."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                s = f.get_slice(name)
                out[name] = (tuple(s.get_shape()), s.get_dtype())
    return out


def stored_dtype(path: Path, family: str) -> str:
    """The dtype the embedding is stored in (our name for it): the model's dtype when model.dtype is unset."""
    files = weight_files(path)
    name = hf_name(family, "embed_tokens.weight")
    if name not in files:
        raise HFFormatError(f"hf:{path} has no tensor {name!r} (the token embedding)")
    with safe_open(str(files[name]), framework="pt") as f:
        code = f.get_slice(name).get_dtype()
    if code not in SAFETENSORS_DTYPES:
        raise HFFormatError(f"hf:{path}: {name} is stored as {code}; allowed: {sorted(SAFETENSORS_DTYPES)}")
    return SAFETENSORS_DTYPES[code]


def empty_model(cfg: Any) -> nn.Module:
    """The model of ``cfg`` with uninitialised parameters in its dtype (nothing random, no float32 copy).

    Built on the meta device; non-persistent buffers (RoPE tables, ALiBi slopes) are recomputed.
    """
    with torch.device("meta"):
        model = build_model(cfg)
    # to_empty may replace Parameter objects: remember which names share one (a tied head) and re-tie
    first: dict[int, str] = {}
    shared = [(name, first.setdefault(id(p), name)) for name, p in model.named_parameters(remove_duplicate=False)]
    model.to_empty(device="cpu")
    for name, owner in shared:
        if name != owner:
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, model.get_parameter(owner))
    persistent = set(model.state_dict())
    for prefix, module in model.named_modules():
        for name, _ in module.named_buffers(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if full not in persistent and not isinstance(module, Positional):
                raise HFFormatError(f"cannot rebuild non-persistent buffer {full!r} after a meta-device build")
        if isinstance(module, Positional):
            fresh = Positional(module.cfg, module.head_dim, module.n_heads)
            module.inv_freq, module.slopes, module._memo = fresh.inv_freq, fresh.slopes, None
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    """Copy the directory's tensors into ``model`` (our names), casting to each parameter's dtype.

    Strict: a missing, unexpected or mis-shaped tensor raises, naming it (transformers' name).
    A tied head is the embedding; a stored ``lm_head.weight`` beside it must equal it.
    """
    cfg = model.cfg
    own = model.state_dict()
    tied = bool(getattr(cfg, "tie_embeddings", False))
    expected = {hf_name(cfg.family, n): n for n in own if not (tied and n == "lm_head.weight")}
    files = weight_files(path)
    stored = _shapes_and_dtypes(files)
    extra_head = tied and "lm_head.weight" in stored
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(n for n in set(stored) - set(expected)
                        if not n.endswith(IGNORED_SUFFIXES) and not (extra_head and n == "lm_head.weight"))
    shapes = sorted(f"{n}: {stored[n][0]} stored vs {tuple(own[expected[n]].shape)} in the model"
                    for n in set(expected) & set(stored) if stored[n][0] != tuple(own[expected[n]].shape))
    report = mismatch_report(f"hf:{path}", missing, unexpected, shapes)
    if report:
        raise HFFormatError(report)
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    with torch.no_grad():
        for file, names in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name in names:
                    own[expected[name]].copy_(f.get_tensor(name))  # one stored tensor alive at a time
        if extra_head:
            with safe_open(str(files["lm_head.weight"]), framework="pt") as f:
                head = f.get_tensor("lm_head.weight")
            if not torch.equal(head.to(own["embed_tokens.weight"].dtype), own["embed_tokens.weight"]):
                raise HFFormatError(f"hf:{path}: tie_word_embeddings=true but the stored lm_head.weight differs "
                                    "from the embedding; set tie_word_embeddings=false in config.json")


def load_model(cfg: Any, path: str | Path) -> nn.Module:
    """Our model of ``cfg`` holding the weights of the Hugging Face directory ``path``."""
    model = empty_model(cfg)
    load_weights(model, Path(path))
    return model


def save_weights(model: nn.Module, out: Path) -> Path:
    """``out/model.safetensors`` under transformers' names (a tied head stored once, as the embedding)."""
    cfg = model.cfg
    tied = bool(getattr(cfg, "tie_embeddings", False))
    state = {hf_name(cfg.family, n): t.detach().contiguous().cpu()
             for n, t in model.state_dict().items() if not (tied and n == "lm_head.weight")}
    file = out / SINGLE
    save_file(state, str(file), metadata={"format": "pt"})
    return file
