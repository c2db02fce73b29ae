"""The contract every registered training stage meets, parametrized over the registry (plugins included).

A new stage (one module in pipeline/train/stages/, or a plugin module) is tested here with no edit: its
config validates to it, a stage that starts from a checkpoint refuses to run without one, and it fits
a tiny model for one step, checkpoints it and evaluates it into rows that name the stage.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from pipeline.config.resolve import ConfigError, validate
from pipeline.config.stage import STAGES
from pipeline.run import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    train(compose_config(TINY + ["evaluate=false"], run_dir=str(run)))
    return run / "checkpoints" / "last.ckpt"


def overrides(name: str, pretrained) -> list[str]:
    start = [f"init_from={pretrained}"] if STAGES.get(name).needs_init else []
    return TINY + [f"stage={name}", "trainer.max_steps=1", "eval.lengths=[32]", "eval.depths=[0.5]", *start]


@pytest.mark.parametrize("name", STAGES.names())
def test_the_stage_validates_and_owns_its_section(name, pretrained, tmp_path):
    res = validate(compose_config(overrides(name, pretrained), run_dir=str(tmp_path)))
    stage = STAGES.get(name)
    assert res.stage.name == name and isinstance(res.stage, stage)
    assert (res.stage_config is None) == (stage.section_class is None)
    if stage.needs_init:
        cfg = compose_config([o for o in overrides(name, pretrained) if not o.startswith("init_from=")],
                             run_dir=str(tmp_path))
        with pytest.raises(ConfigError, match=f"stage='{name}' needs init_from"):
            validate(cfg)


@pytest.mark.parametrize("name", STAGES.names())
def test_the_stage_fits_one_step_and_evaluates(name, pretrained, tmp_path):
    rows = train(compose_config(overrides(name, pretrained), run_dir=str(tmp_path)))
    assert rows and all(r["status"] == "ok" and r["stage"] == name for r in rows), rows[0]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1 and ckpt["config"]["stage"] == name
    assert 0 < rows[0]["trainable_params"] <= rows[0]["n_params"]
