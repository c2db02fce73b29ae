"""Safetensors in and out, strictly: every tensor mapped, none left over, every shape checked.

Import builds the model on the meta device and compares every stored tensor's shape (read from the
safetensors headers) with it *before* anything is allocated, so a config.json that claims a far larger
model than its files hold is refused without touching memory. Then it allocates the model empty in its
target dtype and copies the stored tensors in one at a time (``safe_open``), so a bf16 model never
passes through a float32 copy and peak memory is the model plus one tensor. Sharded directories
(``model.safetensors.index.json``) and single files are read alike; a shard must lie inside the
directory. The directory is untrusted input: every read error names the file (and the tensor), and
weights that are not finite (NaN, inf) are refused, naming them, unless ``allow_nonfinite``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.hf.errors import HFFormatError
from models.hf.families import hf_name
from models.pos.positional import Positional
from models.registry import build_model
from models.strict_load import mismatch_report, nonfinite_report

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# stored by some older transformers versions; recomputed from the config, never weights
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


@contextlib.contextmanager
def open_safetensors(file: Path) -> Iterator[Any]:
    """``safe_open`` whose failure (truncated, a bogus header length, not safetensors) names the file."""
    try:
        handle = safe_open(str(file), framework="pt")
    except Exception as err:
        raise HFFormatError(f"{file} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    with handle as f:
        yield f


def read_tensor(f: Any, file: Path, name: str) -> torch.Tensor:
    try:
        return f.get_tensor(name)
    except Exception as err:
        raise HFFormatError(f"{file}: tensor {name!r} cannot be read (truncated or corrupt?): {err}") from None


def shard_path(path: Path, index: Path, name: str, file: Any) -> Path:
    """The shard ``file`` of tensor ``name``, which must be a relative path inside the model directory."""
    if not isinstance(file, str) or not file:
        raise HFFormatError(f"{index}: weight_map[{name!r}]={file!r}; allowed: a file name inside {path}")
    parts = PurePosixPath(file.replace(os.sep, "/")).parts
    if PurePosixPath(file).is_absolute() or os.path.isabs(file) or ".." in parts:
        raise HFFormatError(f"{index}: weight_map[{name!r}]={file!r} points outside the model directory {path}; "
                            "allowed: a shard file inside it")
    return path / file


def weight_files(path: Path) -> dict[str, Path]:
    """Every stored tensor name -> the safetensors file holding it."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise HFFormatError(f"{index} is not a shard index (JSON with a 'weight_map' object): "
                                f"{type(err).__name__}: {err}") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFFormatError(f"{index}: weight_map is {type(weight_map).__name__} {str(weight_map)[:80]!r}; "
                                "allowed: a non-empty object of tensor name -> shard file")
        files = {name: shard_path(path, index, name, file) for name, file in weight_map.items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise HFFormatError(f"{index} names shards that are not there: {absent}")
        return files
    single = path / SINGLE
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    hint = " (pytorch_model.bin: convert it to safetensors first)" if "pytorch_model.bin" in present else ""
    raise HFFormatError(f"hf:{path} has neither {SINGLE} nor {INDEX}; found {present}{hint}")


def _shapes_and_dtypes(files: dict[str, Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Header-only: (shape, safetensors dtype) of every stored tensor, no data read."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(set(files.values())):
        with open_safetensors(file) as f:
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
    with open_safetensors(files[name]) as f:
        code = f.get_slice(name).get_dtype()
    if code not in SAFETENSORS_DTYPES:
        raise HFFormatError(f"hf:{path}: {name} is stored as {code}; allowed: {sorted(SAFETENSORS_DTYPES)}")
    return SAFETENSORS_DTYPES[code]


def meta_model(cfg: Any) -> nn.Module:
    """The model of ``cfg`` on the meta device: shapes and dtypes, no memory, nothing random."""
    with torch.device("meta"):
        return build_model(cfg)


def materialize(model: nn.Module) -> nn.Module:
    """Allocate a meta-device model empty on the CPU in its dtypes (no float32 copy, nothing random).

    Non-persistent buffers (RoPE tables, ALiBi slopes) are recomputed.
    """
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


def empty_model(cfg: Any) -> nn.Module:
    """The model of ``cfg`` with uninitialised parameters in its dtype."""
    return materialize(meta_model(cfg))


class StoredWeights:
    """Where each of a model's tensors is stored in a Hugging Face directory, checked against the model.

    Built from the safetensors headers and the model's shapes only (a meta-device model will do):
    a missing, unexpected or mis-shaped tensor raises, naming it (transformers' name), before any
    memory is allocated for the model.
    """

    def __init__(self, model: nn.Module, path: Path) -> None:
        cfg = model.cfg
        own = model.state_dict()
        tied = bool(getattr(cfg, "tie_embeddings", False))
        self.path = path
        self.expected = {hf_name(cfg.family, n): n for n in own if not (tied and n == "lm_head.weight")}
        self.files = weight_files(path)
        stored = _shapes_and_dtypes(self.files)
        self.extra_head = tied and "lm_head.weight" in stored
        missing = sorted(set(self.expected) - set(stored))
        unexpected = sorted(n for n in set(stored) - set(self.expected)
                            if not n.endswith(IGNORED_SUFFIXES) and not (self.extra_head and n == "lm_head.weight"))
        shapes = sorted(f"{n}: {stored[n][0]} stored vs {tuple(own[self.expected[n]].shape)} in the model"
                        for n in set(self.expected) & set(stored)
                        if stored[n][0] != tuple(own[self.expected[n]].shape))
        report = mismatch_report(f"hf:{path}", missing, unexpected, shapes)
        if report:
            raise HFFormatError(report)

    def copy_into(self, model: nn.Module, allow_nonfinite: bool = False) -> None:
        """Copy the stored tensors into the (allocated) model, casting to each parameter's dtype.

        A tied head is the embedding; a stored ``lm_head.weight`` beside it must equal it. A tensor
        holding NaN or inf after the cast is refused, naming it, unless ``allow_nonfinite``.
        """
        own = model.state_dict()
        by_file: dict[Path, list[str]] = {}
        for name in self.expected:
            by_file.setdefault(self.files[name], []).append(name)
        nonfinite = []
        with torch.no_grad():
            for file, names in by_file.items():
                with open_safetensors(file) as f:
                    for name in names:
                        target = own[self.expected[name]]
                        target.copy_(read_tensor(f, file, name))  # one stored tensor alive at a time
                        if target.is_floating_point() and not torch.isfinite(target).all():
                            nonfinite.append(name)
            report = nonfinite_report(f"hf:{self.path}", nonfinite)
            if report and not allow_nonfinite:
                raise HFFormatError(report)
            if self.extra_head:
                self._check_head(own["embed_tokens.weight"])

    def _check_head(self, embedding: torch.Tensor) -> None:
        file = self.files["lm_head.weight"]
        with open_safetensors(file) as f:
            head = read_tensor(f, file, "lm_head.weight")
        if not torch.equal(head.to(embedding.dtype), embedding):
            raise HFFormatError(f"hf:{self.path}: tie_word_embeddings=true but the stored lm_head.weight differs "
                                "from the embedding; set tie_word_embeddings=false in config.json")


def check_weights(cfg: Any, path: str | Path) -> None:
    """Compare the directory's stored tensors with the model of ``cfg`` built on the meta device (no memory)."""
    StoredWeights(meta_model(cfg), Path(path))


def load_model(cfg: Any, path: str | Path, allow_nonfinite: bool = False) -> nn.Module:
    """Our model of ``cfg`` holding the weights of the Hugging Face directory ``path``.

    Shapes are compared on the meta-device model first; memory is allocated only when they all match.
    """
    model = meta_model(cfg)
    stored = StoredWeights(model, Path(path))
    stored.copy_into(materialize(model), allow_nonfinite)
    return model


def save_weights(model: nn.Module, out: Path, allow_nonfinite: bool = False) -> Path:
    """``out/model.safetensors`` under transformers' names (a tied head stored once, as the embedding);
    tensors holding NaN or inf are refused, naming them, unless ``allow_nonfinite``."""
    cfg = model.cfg
    tied = bool(getattr(cfg, "tie_embeddings", False))
    state = {hf_name(cfg.family, n): t.detach().contiguous().cpu()
             for n, t in model.state_dict().items() if not (tied and n == "lm_head.weight")}
    report = nonfinite_report(f"the model exported to {out}", sorted(
        n for n, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()))
    if report and not allow_nonfinite:
        raise HFFormatError(report)
    file = out / SINGLE
    save_file(state, str(file), metadata={"format": "pt"})
    return file
