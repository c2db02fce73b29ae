"""``trainer.compile``: compiled training is the eager training, every family; rows; resume; refusals.

The default suite compiles with ``aot_eager`` (dynamo's graph capture and AOT autograd's joint
forward/backward, run on eager kernels: what can break the maths of a compiled run short of code
generation); the ``slow`` tests use inductor, the backend a user gets (generated C++ on CPU).
"""

from __future__ import annotations

import copy
import dataclasses

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config

from models.families import FAMILIES
from models.registry import build_model, config_class
from pipeline.config.resolve import ConfigError, validate
from pipeline.run import train
from pipeline.train import fit
from pipeline.train.checkpoint import read_checkpoint
from pipeline.train.compile import compiled
from pipeline.train.module import answer_logits, head_split

FAMILY_NAMES = [f for f in FAMILIES.names() if not f.startswith("toy")]
KNOBS = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, window=5)  # each family takes its own
STEPS = 20


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = config_class(family)
    return build_model(cls(**{k: v for k, v in KNOBS.items() if k in {f.name for f in dataclasses.fields(cls)}}))


def losses(model: torch.nn.Module, backend: str | None, length: int = 24) -> list[float]:
    """STEPS AdamW steps on answer tokens (the module's loss path), eager or through ``compiled``."""
    fn = None if backend is None else compiled(model.hidden_states if head_split(model) else model, backend)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 64, (4, length), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, length // 2:] = ids[:, :length // 2]  # one batch of a copy task, learnt by heart: the loss must fall
    out = []
    for _ in range(STEPS):
        logits, targets = answer_logits(model, ids, labels, fn)
        loss = F.cross_entropy(logits.float(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def assert_same_training(family: str, backend: str, rtol: float) -> None:
    eager_model = tiny(family)
    compiled_model = copy.deepcopy(eager_model)
    eager, comp = losses(eager_model, None), losses(compiled_model, backend)
    assert eager[-1] < eager[0], f"{family}: the eager run did not learn, the comparison says nothing"
    torch.testing.assert_close(torch.tensor(comp), torch.tensor(eager), rtol=rtol, atol=1e-5)
    for (name, a), b in zip(eager_model.state_dict().items(), compiled_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=rtol * 10, atol=1e-4, msg=lambda m, n=name: f"{family} {n}: {m}")


# aot_eager runs gated_deltanet's backward graph with a view where the eager gradient is not contiguous
# (torch 2.13: the eager kernels' strides differ from the traced ones); inductor follows real strides
DEFAULT_BACKEND = {"gated_deltanet": ("inductor", 2e-4)}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_compiled_training_gives_the_eager_losses_for_every_family(family):
    torch._dynamo.reset()
    assert_same_training(family, *DEFAULT_BACKEND.get(family, ("aot_eager", 1e-5)))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_inductor_training_gives_the_eager_losses_for_every_family(family):
    torch._dynamo.reset()
    assert_same_training(family, "inductor", rtol=2e-4)  # generated kernels reassociate float32 sums


def test_compiled_lora_with_shifted_sparse_attention_gives_the_eager_losses():
    """LongLoRA's extend stage: peft's LoRA layers on a model training with S2-Attn, compiled."""
    from models.families.transformer import Transformer, TransformerConfig
    from models.lora import LoraPlusConfig, apply_lora
    from models.patterns import AttentionConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            attention=AttentionConfig(train="shifted_sparse"))
    eager_model = apply_lora(Transformer(cfg), LoraPlusConfig(enabled=True))
    compiled_model = copy.deepcopy(eager_model)
    eager, comp = losses(eager_model, None, length=32), losses(compiled_model, "aot_eager", length=32)
    assert eager[-1] < eager[0]
    torch.testing.assert_close(torch.tensor(comp), torch.tensor(eager), rtol=1e-5, atol=1e-5)


def test_a_fixed_training_shape_compiles_once_not_per_step():
    from pipeline.train.compile import compile_count

    torch._dynamo.reset()
    model = tiny("transformer")
    fn = compiled(model.hidden_states, "aot_eager")
    opt = torch.optim.AdamW(model.parameters())
    counts = []
    for step in range(6):
        ids = torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(step))  # new rows, same shape
        fn(ids).square().mean().backward()
        opt.step()
        counts.append(compile_count())
    assert counts[0] > 0 and counts[-1] == counts[0], counts  # forward + lazy backward at step 0, then none


RUN = [o for o in TINY if o != "trainer=smoke"] + [
    "trainer=cpu", "trainer.max_steps=20", "trainer.val_check_interval=10", "checkpoint_every=5",
    "+trainer.enable_progress_bar=false", "evaluate=false", "trainer.compile=true",
    "trainer.compile_backend=aot_eager"]


class StopAt(L.Callback):
    """Ends the fit after ``step`` steps, as a killed run would have (its last checkpoint is then written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_a_compiled_run_records_compile_time_and_resumes_exactly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(compose_config(RUN, run_dir=str(straight)))
    ckpt = read_checkpoint(straight / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 20
    probe = next(v for k, v in ckpt["callbacks"].items() if k.startswith("TrainCostProbe"))
    assert probe["compile_s"] > 0 and probe["time_count"] > 0  # compiled steps are timed apart from compiling

    resumed = tmp_path / "resumed"
    build = fit.build_trainer

    def stopping(*args, **kw):
        trainer = build(*args, **kw)
        trainer.callbacks.append(StopAt(7))
        return trainer

    monkeypatch.setattr(fit, "build_trainer", stopping)
    train(compose_config(RUN, run_dir=str(resumed)))
    assert read_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 7
    monkeypatch.setattr(fit, "build_trainer", build)
    rows = train(compose_config([o for o in RUN if o != "evaluate=false"], run_dir=str(resumed)))  # the same run
    again = read_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert again["global_step"] == 20
    for name, weight in ckpt["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][name], weight, rtol=0, atol=1e-6, msg=name)
    assert rows and all(r["compiled"] == "aot_eager" and r["compile_s"] > 0 and r["train_step_s"] for r in rows)


@pytest.mark.parametrize("extra", [["trainer.activation_checkpointing=true"], ["model=mamba"]])
def test_compiled_runs_compose_with_checkpointing_and_recurrent_families(tmp_path, extra):
    base = [o for o in RUN if not (extra == ["model=mamba"] and o.startswith("model.n_heads"))]
    train(compose_config(base + extra, run_dir=str(tmp_path)))
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 20


def test_eager_rows_say_not_compiled(tmp_path):
    rows = train(compose_config([o for o in TINY] + ["trainer.max_steps=3"], run_dir=str(tmp_path)))
    assert rows and all(r["compiled"] is None and r["compile_s"] is None for r in rows)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.compile=yes"], "trainer.compile='yes' must be true or false"),
    (["trainer.compile=true", "trainer.compile_backend=turbo"], "trainer.compile_backend='turbo' is not a"),
])
def test_bad_compile_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(TINY + overrides))


def test_inductor_on_cpu_without_a_cxx_compiler_is_a_config_error(monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        validate(compose_config(TINY + ["trainer.compile=true"]))
    validate(compose_config(TINY + ["trainer.compile=true", "trainer.compile_backend=aot_eager"]))


def test_compile_stays_out_of_the_run_identity():
    from pipeline.config.config_hash import config_hash

    assert config_hash(compose_config(TINY)) == config_hash(compose_config(TINY + ["trainer.compile=true"]))
