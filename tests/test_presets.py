"""Every experiment preset runs one step (and its base pretraining, when it has one): no preset can rot."""

import os

import pytest
from conftest import CONF_DIR, TINY, compose_config

from pipeline.run import train

PRESETS = sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, "experiment")) if p.endswith(".yaml"))
# Arms that presets sweep over with hydra.sweeper.params (exercised one by one here).
ARMS = {"longlora": ["variant=longlora", "variant=lora"], "kv_policies": ["kv=quest", "kv=duo"],
        "arch_compare": ["model=mamba", "model=hybrid"]}


SMOKE_EXTRA = {"copy_span": ["task.span=8"]}  # its points' spans need more than the tests' 32 tokens


def smoke(preset: str, extra: list[str]) -> list[str]:
    """The preset at scale=smoke (its base too), shrunk further to the tests' tiny model."""
    tiny = [o for o in TINY if not o.startswith("model.") and o != "trainer=smoke"]
    if "model=" not in " ".join(extra):
        tiny += [o for o in TINY if o.startswith("model.")]
    out = [f"experiment={preset}", *extra, "scale=smoke", *tiny, "eval.lengths=[32,64]", "task.train_len=32",
           *SMOKE_EXTRA.get(preset, [])]
    text = open(os.path.join(CONF_DIR, "experiment", f"{preset}.yaml")).read()
    if "\nbase:" in text:  # presets that pretrain their base model first
        # ++: presets on the full cache have no window (a cache node keeps only its policy's knobs)
        out += ["base_len=32", "model.attention.window=8", "model.attention.sink=2",
                "++cache.window=8", "++cache.sink=2"]
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
    from pipeline.config.resolve import validate

    needs = {"longbench": [f"eval.longbench.dir={os.path.join(os.path.dirname(__file__), 'fixtures', 'longbench')}"]}
    cfg = compose_config([f"eval={suite}", "task.train_len=128"] + needs.get(suite, []), run_dir=str(tmp_path))
    res = validate(cfg)
    assert res.eval_tasks and res.eval.lengths


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_every_preset_composes_and_validates_at_every_scale(preset, scale, tmp_path):
    import torch

    from pipeline.config.resolve import validate
    from pipeline.train.base_model import base_config

    cfg = compose_config([f"experiment={preset}", f"scale={scale}"], run_dir=str(tmp_path))
    here = scale != "gpu" or torch.cuda.is_available()  # the accelerator check is this machine's
    res = validate(cfg, training=here)
    assert cfg.scale_name == scale
    base = base_config(cfg)
    if base is not None:
        assert int(base.trainer.max_steps) == int(cfg.base_steps)
        validate(base, training=here)
        if scale == "gpu":  # lengths follow base_len: the study grows, not only the steps
            assert res.task.train_len >= 256 and max(res.eval.lengths) >= 4 * 256


@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_scale_never_trains_an_arm_fewer_steps_than_the_cpu_scale(preset, tmp_path):
    """scale=gpu keeps a recipe's steps: an architecture recipe (Mamba's 6000 steps of batch 16 on MQAR)
    cut to a flat count would leave that arm under-trained beside the others on a GPU."""
    steps = {scale: int(compose_config([f"experiment={preset}", f"scale={scale}"],
                                       run_dir=str(tmp_path / scale)).trainer.max_steps)
             for scale in ("cpu", "gpu")}
    assert steps["gpu"] >= steps["cpu"], steps


def test_gpu_scale_keeps_each_architectures_recipe_steps(tmp_path):
    def steps(model):
        cfg = compose_config(["experiment=recall_frontier", f"model={model}", "scale=gpu"], run_dir=str(tmp_path))
        return int(cfg.trainer.max_steps), int(cfg.data.batch_size)

    assert steps("mamba") == (6000, 16) and steps("transformer") == (2000, 64)


def _swept_rules() -> list[str]:
    """The rules the rope_extension preset's own command sweeps (its first comment lines)."""
    text = open(os.path.join(CONF_DIR, "experiment", "rope_extension.yaml")).read()
    return text.split("model.pos.rule=", 1)[1].split()[0].split(",")


@pytest.mark.parametrize("rule", _swept_rules())
def test_rope_extension_validates_under_every_rule_it_sweeps(rule, tmp_path):
    """Each job of the study's sweep validates at the preset's width (longrope: head_dim/2 factors)."""
    from pipeline.config.resolve import validate

    assert "longrope" in _swept_rules()
    validate(compose_config(["experiment=rope_extension", f"model.pos.rule={rule}"], run_dir=str(tmp_path)))


def test_longrope_lists_of_the_wrong_length_fail_validation(tmp_path):
    """At another width the lists no longer fit: the error names the field before any job trains."""
    from pipeline.config.resolve import ConfigError, validate

    cfg = compose_config(["experiment=rope_extension", "model.pos.rule=longrope", "model.d_model=64"],
                         run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.pos.short_factor=a list of length 16.*8 factors"):
        validate(cfg)


def test_base_checkpoint_is_keyed_by_its_config(tmp_path, monkeypatch):
    """A reduced base (other steps, other scale) lives in its own directory: never silently reused."""
    from pipeline.train.base_model import base_config

    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path))
    dirs = {}
    for name, extra in {"cpu": [], "fewer_steps": ["base_steps=100"], "smoke": ["scale=smoke"],
                        "other_arm": ["model.pos.rule=yarn"]}.items():
        cfg = compose_config(["experiment=rope_extension", *extra], run_dir=str(tmp_path / name))
        dirs[name] = base_config(cfg).run_dir
    assert dirs["cpu"] == dirs["other_arm"]  # arms of one study share their base
    assert len({dirs["cpu"], dirs["fewer_steps"], dirs["smoke"]}) == 3
    assert all("/rope_extension/base-L64-s0-" in d for d in dirs.values())


def test_study_stops_when_its_base_did_not_learn(tmp_path, monkeypatch):
    from pipeline.train.base_model import BaseNotLearned

    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path / "studies"))
    overrides = smoke("kv_policies", ["kv=full"]) + ["base_min_accuracy=0.9"]
    with pytest.raises(BaseNotLearned, match=r"below base_min_accuracy=0.9.*base_steps"):
        train(compose_config(overrides, run_dir=str(tmp_path / "run")))
    # the base (and its extension, kv_policies' base_extend) was trained once and is kept; the floor at 0
    # lets the same study go on with it
    assert len(list((tmp_path / "studies").glob("*/base-L32-s0-????????/checkpoints/last.ckpt"))) == 1
    assert len(list((tmp_path / "studies").glob("*/base-L32-s0-ext-*/checkpoints/last.ckpt"))) == 1
    rows = train(compose_config(overrides[:-1], run_dir=str(tmp_path / "run2")))
    assert rows and all(r["status"] == "ok" for r in rows)


def test_kv_policy_needs_attention_layers_and_is_scoped_on_a_hybrid(tmp_path):
    from pipeline.config.resolve import ConfigError, validate

    with pytest.raises(ConfigError, match=r"cache.policy='quest' on model.family='mamba'.*allowed: cache=full"):
        validate(compose_config(["model=mamba", "cache=quest"], run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"model.layers='MM'"):
        validate(compose_config(["model=hybrid", "model.layers=MM", "cache=sink_window"], run_dir=str(tmp_path)))
    overrides = [o for o in TINY if o != "model.n_layers=2"] + ["model=hybrid", "model.layers=MA", "cache=sink_window",
                                                                 "cache.window=8", "cache.sink=2"]
    rows = train(compose_config(overrides, run_dir=str(tmp_path / "h")))
    assert rows and all(r["status"] == "ok" and r["cache"].endswith("[attn layers 1/2]") for r in rows), rows[0]


@pytest.mark.parametrize("task", ["niah", "multikey", "mqar", "kv_retrieval", "variable_tracking",
                                  "frequent_tokens", "counting", "copy", "conflict", "mix"])
@pytest.mark.parametrize("model", ["transformer", "mamba", "hybrid"])
def test_every_task_and_family_validates_on_default_eval_lengths(task, model, tmp_path):
    from pipeline.config.resolve import validate

    res = validate(compose_config([f"task={task}", f"model={model}"], run_dir=str(tmp_path)))
    assert res.eval.lengths == [res.task.train_len * k for k in (1, 2, 4, 8)]


def preset_arms(preset: str) -> list[list[str]]:
    """Every job a preset's sweep runs (the product of its ``hydra.sweeper.params``; every option of a
    study-arm group, kv or variant, whether swept by default or not; every rule rope_extension sweeps)."""
    import itertools

    from omegaconf import OmegaConf

    node = OmegaConf.load(os.path.join(CONF_DIR, "experiment", f"{preset}.yaml"))
    params = dict(OmegaConf.select(node, "hydra.sweeper.params") or {})
    for group in ("kv", "variant"):
        if group in params:
            params[group] = ",".join(sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, group))
                                            if p.endswith(".yaml")))
    if preset == "rope_extension":
        params["model.pos.rule"] = ",".join(_swept_rules())
    keys = sorted(params)
    options = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*options)]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_arm_of_every_preset_is_smoke_sized_under_scale_smoke(preset, tmp_path):
    """scale=smoke wins over presets, recipes and study arms alike (conf/kv/duo.yaml's 300 gate steps
    included): each job and its base resolve to a handful of steps, rows and examples at short lengths."""
    from pipeline.config.resolve import validate
    from pipeline.train.base_model import base_config

    arms = preset_arms(preset)
    assert arms and (preset not in ARMS or len(arms) >= len(ARMS[preset]))
    for arm in arms:
        cfg = compose_config([f"experiment={preset}", *arm, "scale=smoke"], run_dir=str(tmp_path))
        res = validate(cfg)
        base = base_config(cfg)
        jobs = [("job", cfg, res)] + ([("base", base, validate(base))] if base is not None else [])
        for name, job, r in jobs:
            where = f"{preset} {' '.join(arm)} ({name})"
            assert int(job.trainer.max_steps) <= 4, where
            assert r.data.n_train <= 64 and r.data.n_val <= 8 and r.data.batch_size <= 8, where
            assert r.eval.n_examples <= 4 and len(r.eval.depths) == 1, where
            # a study's grid point may train at 512 (conf/point/mqar_L512.yaml); smoke still evaluates <= 2x it
            assert len(r.eval.lengths) <= 2 and max(r.eval.lengths) <= 2 * r.task.train_len, where
            assert r.task.train_len <= 512, where


@pytest.mark.parametrize("group, typo", [("cache", "qeust"), ("kv", "qeust")])
def test_a_mistyped_option_lists_only_real_options(group, typo, tmp_path):
    """The files that policies and arms share live below their group, so Hydra's 'Available options' lists
    only what a user can choose (no internal ``base``)."""
    from models.caches import CACHE_POLICIES

    extra = ["experiment=kv_policies"] if group == "kv" else []
    with pytest.raises(Exception, match=r"Available options") as err:
        compose_config(extra + [f"{group}={typo}"], run_dir=str(tmp_path))
    options = str(err.value).split(f"Available options in '{group}':")[1].split("Config search path")[0]
    listed = [line.strip() for line in options.splitlines() if line.strip()]
    assert "base" not in listed and {"full", "sink_window", "quest", "duo"} <= set(listed), listed
    assert set(listed) <= set(CACHE_POLICIES.names()), listed  # every option is a policy (an arm per policy)
