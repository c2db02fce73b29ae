"""LoRA+ as in LongLoRA: low-rank adapters on the attention projections, plus trainable embeddings
and norms; everything else (MLP, lm_head) frozen.

The adapters are ``peft`` LoRA layers injected in place (``inject_adapter_in_model``), not a
``PeftModel`` wrapper, so the model keeps its own class and API: ``forward(input_ids, cache=None)``,
``new_cache``, ``hidden_states``, ``.cfg``. Each target ``nn.Linear`` becomes a ``peft`` layer whose
state-dict keys are ``<name>.base_layer.weight``, ``<name>.lora_A.default.weight`` and
``<name>.lora_B.default.weight``; so load pretrained weights *before* ``apply_lora`` and resume a
LoRA checkpoint *after* it (same config, same keys). ``merge_lora`` folds the adapters into plain
``nn.Linear`` weights for evaluation and export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

PREFIX = "lora"  # where the config lives, for error messages


@dataclass
class LoraPlusConfig:
    """LongLoRA's LoRA+ defaults (r=8, alpha=16, no dropout, q/k/v/o; embeddings and norms trained)."""

    enabled: bool = False  # the extend stage turns it on
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling = alpha / r
    dropout: float = 0.0  # dropout on the adapter input
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # substrings of parameter names trained in full ("embed": embed_tokens, "norm": every RMSNorm)
    trainable: list[str] = field(default_factory=lambda: ["embed", "norm"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"{PREFIX}.r={self.r} must be an integer >= 1")
        if self.alpha <= 0:
            raise ValueError(f"{PREFIX}.alpha={self.alpha} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{PREFIX}.dropout={self.dropout} must be in [0, 1)")
        self.targets, self.trainable = list(self.targets), list(self.trainable)
        if not self.targets:
            raise ValueError(f"{PREFIX}.targets=[] must name at least one linear layer, "
                             "e.g. ['q_proj', 'v_proj']")
        for name in ("targets", "trainable"):
            bad = [x for x in getattr(self, name) if not isinstance(x, str) or not x]
            if bad:
                raise ValueError(f"{PREFIX}.{name} has {bad}; allowed: non-empty name strings")


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def apply_lora(model: nn.Module, cfg: LoraPlusConfig) -> nn.Module:
    """Inject adapters into ``cfg.targets`` in place, train them plus ``cfg.trainable``, freeze the rest.

    Returns the same model object (unchanged when ``cfg.enabled`` is false).
    """
    if not cfg.enabled:
        return model
    if has_lora(model):
        raise ValueError("apply_lora: the model already has LoRA adapters (apply once; merge_lora to remove)")
    linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in cfg.targets if t not in linear]
    if missing:
        raise ValueError(f"{PREFIX}.targets={cfg.targets}: {missing} are not linear layers of the model; "
                         f"allowed: {linear}")
    names = [n for n, _ in model.named_parameters()]
    unmatched = [t for t in cfg.trainable if not any(t in n for n in names)]
    if unmatched:
        raise ValueError(f"{PREFIX}.trainable={cfg.trainable}: {unmatched} match no parameter name; "
                         f"parameters: {names}")
    # LongLoRA keeps lm_head frozen; a head tied to a trainable embedding would silently train too.
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        shared = [n for n, p in model.named_parameters() if p is head.weight and n != "lm_head.weight"]
        if any(t in n for t in cfg.trainable for n in shared):
            raise ValueError(f"{PREFIX}.trainable={cfg.trainable} would train lm_head too: it shares its "
                             f"weight with {shared} (model.tie_embeddings=true); drop 'embed' or untie them")

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.targets), bias="none")
    model = inject_adapter_in_model(peft_cfg, model)  # B = 0 at init: outputs unchanged
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or any(t in name for t in cfg.trainable))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + alpha/r B A) and put the plain ``nn.Linear`` back.

    The result has the state-dict keys and trainability of a freshly built model.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # set by inject_adapter_in_model
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
