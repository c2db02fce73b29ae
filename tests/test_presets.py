"""Every experiment preset runs one step (and its base pretraining, when it has one): no preset can rot."""

import os

import pytest
from conftest import CONF_DIR, TINY, compose_config

from pipeline.run import train

PRESETS = sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, "experiment")) if p.endswith(".yaml"))
# Arms that presets sweep over with hydra.sweeper.params (exercised one by one here).
ARMS = {"longlora": ["+variant=longlora", "+variant=lora"], "kv_policies": ["+kv=quest", "+kv=duo"],
        "arch_compare": ["model=mamba", "model=hybrid"]}
SMOKE_BASE = ('base=["trainer.max_steps=2","cache.policy=full","stage=pretrain","fit=true",'
              '"lora.enabled=false","model.attention.train=full"]')


def smoke(preset: str, extra: list[str]) -> list[str]:
    text = open(os.path.join(CONF_DIR, "experiment", f"{preset}.yaml")).read()
    tiny = [o for o in TINY if not o.startswith("model.")] if "model=" in " ".join(extra) else TINY
    out = [f"experiment={preset}", *extra, *tiny, "eval.lengths=[32,64]", "task.train_len=32", "trainer.max_steps=2"]
    if "\nbase:" in text:  # presets that pretrain their base model first
        out += ["base_len=32", SMOKE_BASE, "model.attention.window=8", "model.attention.sink=2", "cache.window=8",
                "cache.sink=2"]
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_one_step(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path / "studies"))
    for arm in ARMS.get(preset, [None]):
        overrides = smoke(preset, [arm] if arm else [])
        rows = train(compose_config(overrides, run_dir=str(tmp_path / f"run-{arm}")))
        assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]


@pytest.mark.parametrize("suite", sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, "eval"))))
def test_named_evaluation_suites_validate(suite, tmp_path):
    from pipeline.config import validate

    needs = {"longbench": [f"eval.longbench.dir={os.path.join(os.path.dirname(__file__), 'fixtures', 'longbench')}"]}
    cfg = compose_config([f"eval={suite}", "task.train_len=128"] + needs.get(suite, []), run_dir=str(tmp_path))
    res = validate(cfg)
    assert res.eval_tasks and res.eval.lengths
