"""Activation checkpointing: the same training, less memory, switched on by config only.

Specification: for every family (and LoRA+, S2-Attn, LoRA dropout), a few AdamW steps with
per-block recompute give the gradients and weights of the same steps without it (float64); the
recompute lowers the measured fwd+bwd peak; ``trainer.activation_checkpointing`` reaches the model
through train.py and never the Lightning Trainer; a bad value fails validation, naming the field.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config

import models.lm as lm
from models.families.hybrid import Hybrid, HybridConfig
from models.families.mamba import MambaConfig, MambaLM
from models.families.transformer import Transformer, TransformerConfig
from models.lora import LoraPlusConfig, apply_lora
from models.patterns import AttentionConfig
from pipeline.config.resolve import ConfigError, trainer_kwargs, validate
from pipeline.train.memory import measure_peak

F64 = torch.float64


def build(method: str, chunk_size: int | None = 8, n_layers: int = 2) -> torch.nn.Module:
    """A tiny model of a training method; the small scan chunk makes the Mamba state cross chunks."""
    if method == "mamba":
        return MambaLM(MambaConfig(vocab_size=64, d_model=32, n_layers=n_layers, chunk_size=chunk_size))
    if method == "hybrid":
        return Hybrid(HybridConfig(vocab_size=64, d_model=32, layers="MA" * (n_layers // 2), n_heads=4,
                                   chunk_size=chunk_size))
    attention = AttentionConfig(train="shifted_sparse" if method == "longlora" else "full")
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=n_layers, n_heads=4,
                                          attention=attention))
    if method in ("lora", "longlora"):
        apply_lora(model, LoraPlusConfig(enabled=True, r=4, dropout=0.1 if method == "lora" else 0.0,
                                         trainable=["embed", "norm"] if method == "longlora" else []))
    return model


def train_steps(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """AdamW steps on next-token loss; returns each step's gradients."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    grads = []
    model.train()
    for i, x in enumerate(batches):
        torch.manual_seed(100 + i)  # the same dropout masks in both runs
        logits = model(x)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("method", ["full", "lora", "longlora", "mamba", "hybrid"])
def test_checkpointed_steps_equal_plain_steps(method):
    plain = build(method).to(F64)
    ckpt = copy.deepcopy(plain)
    ckpt.set_activation_checkpointing(True)
    batches = [torch.randint(0, 64, (2, 32)) for _ in range(3)]
    calls = []
    real = lm.checkpoint
    lm.checkpoint = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        g_ckpt = train_steps(ckpt, batches)
    finally:
        lm.checkpoint = real
    g_plain = train_steps(plain, batches)
    assert len(calls) == 3 * len(plain.layers)  # every block of every step went through the recompute
    for step, (a, b) in enumerate(zip(g_ckpt, g_plain)):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12, msg=f"{method}: step {step} gradient")
    for pa, pb in zip(ckpt.parameters(), plain.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["full", "longlora", "mamba", "hybrid"])
def test_checkpointing_lowers_the_training_peak(method):
    model = build(method, chunk_size=None, n_layers=4)  # saved: 4 blocks' activations vs 4 inputs + 1 block
    x = torch.randint(0, 64, (1, 512))

    def peak(on: bool) -> int:
        model.set_activation_checkpointing(on)
        with measure_peak(None, "cpu") as reading:
            model(x).logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        return reading.region_peak_bytes

    plain, ckpt = peak(False), peak(True)
    assert ckpt < 0.75 * plain, (method, plain, ckpt)


def test_no_checkpointing_without_grad_or_with_a_cache(monkeypatch):
    model = build("hybrid").eval()
    model.set_activation_checkpointing(True)
    monkeypatch.setattr(lm, "checkpoint", lambda *a, **k: pytest.fail("checkpointed an inference forward"))
    x = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        model(x)
    model(x, model.new_cache(1))


def test_trainer_key_reaches_the_model_not_the_trainer(tmp_path, monkeypatch):
    from pipeline.run import train

    calls = []
    real = lm.checkpoint
    monkeypatch.setattr(lm, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = compose_config(TINY + ["evaluate=false", "trainer.activation_checkpointing=true"], run_dir=str(tmp_path))
    assert "activation_checkpointing" not in trainer_kwargs(cfg.trainer)
    assert validate(cfg).activation_checkpointing
    train(cfg)
    assert calls  # the training step recomputed its blocks


@pytest.mark.parametrize("override,match", [
    ("trainer.activation_checkpointing=yes", "trainer.activation_checkpointing='yes'"),
    ("trainer.activation_checkpointing=1", "trainer.activation_checkpointing=1"),
])
def test_bad_value_names_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose_config(TINY + [override]))


def test_duo_gates_stage_refuses_checkpointing(tmp_path):
    cfg = compose_config(TINY + ["stage=duo_gates", f"init_from={tmp_path}/x.ckpt",
                                 "trainer.activation_checkpointing=true"])
    with pytest.raises(ConfigError, match="trainer.activation_checkpointing=true with stage=duo_gates"):
        validate(cfg)


@pytest.mark.slow  # ~70 s: two spawned gloo processes
def test_ddp_with_checkpointing_follows_one_plain_process(tmp_path):
    """2 gloo processes recomputing every block: the loss trajectory of 1 process without recompute."""
    from test_distributed import losses

    from pipeline.run import train

    common = [o for o in TINY if not o.startswith(("trainer=", "logger="))] + [
        "logger=csv", "data.shuffle=false", "data.batch_size=8", "evaluate=false", "trainer.max_steps=4",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=4", "+trainer.limit_val_batches=1",
        "+trainer.enable_progress_bar=false"]
    train(compose_config(common + ["trainer=cpu"], run_dir=str(tmp_path / "one")))
    train(compose_config(common + ["trainer=ddp", "trainer.activation_checkpointing=true"],
                         run_dir=str(tmp_path / "two")))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)


@pytest.mark.gpu
def test_fsdp_with_checkpointing_follows_plain_training(tmp_path):
    """FSDP (one GPU) recomputing every block: the loss trajectory of the same run without recompute."""
    from test_distributed import losses

    from pipeline.run import train

    common = [o for o in TINY if not o.startswith(("trainer=", "logger="))] + [
        "logger=csv", "data.shuffle=false", "data.batch_size=8", "evaluate=false", "trainer=fsdp",
        "trainer.devices=1", "trainer.precision=32-true", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=4", "+trainer.limit_val_batches=1", "+trainer.enable_progress_bar=false"]
    train(compose_config(common, run_dir=str(tmp_path / "plain")))
    train(compose_config(common + ["trainer.activation_checkpointing=true"], run_dir=str(tmp_path / "ckpt")))
    plain, ckpt = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert len(plain) == len(ckpt) == 4
    assert ckpt == pytest.approx(plain, rel=1e-4, abs=1e-5)
