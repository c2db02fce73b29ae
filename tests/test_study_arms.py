"""Every arm of a study evaluates the same thing: task config, lengths, depths, examples, protocol.

A study (``conf/experiment/<name>.yaml``) compares arms (its sweep's ``kv`` / ``variant`` / model
options, or the rules its header documents); a number in its table is a difference between arms
only if every arm is scored on the same held-out task. Each arm is composed as the multirun would
compose it and resolved (``pipeline.config.resolve.validate``); the evaluated tasks are compared in the form
the test split generates (``for_split("test")``), so an arm that trains on other data is fine, an
arm that is scored on another task (issue 26: the kv_policies duo arm set ``eval.tasks=[niah]``,
the distractor haystack, while the other arms were scored on the passkey task) fails here.
A sweep axis ``task`` or ``point`` (a grid point: length and load together, conf/point/) splits a study
into one comparison per value; ``seed`` is not an arm (seeds of one arm evaluate the same task).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from pipeline.config.resolve import validate

CONF = Path(__file__).resolve().parent.parent / "conf"
STUDIES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
OPTION_GROUPS = {"kv": "kv", "variant": "variant"}  # every option of these groups is an arm
DOCUMENTED = {  # studies whose arms are given on the command line (the header's multirun command)
    "rope_extension": {"model.pos.rule": ["rope", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope"]},
}


SPLITS = ("task", "point")  # sweep axes whose values are separate comparisons


def study_axes(study: str) -> tuple[dict[str, list[str]], list[list[str]]]:
    """(arm axes -> values, the study's comparisons: one override list per task x point)."""
    node = OmegaConf.load(CONF / "experiment" / f"{study}.yaml")
    params = OmegaConf.to_container(OmegaConf.select(node, "hydra.sweeper.params") or OmegaConf.create({}))
    axes = {k: [str(x).strip() for x in str(v).split(",")] for k, v in params.items()}
    for key, group in OPTION_GROUPS.items():
        if key in axes:  # every option of the group, not only those the sweep lists
            axes[key] = sorted({*axes[key], *(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "base")})
    axes.update(DOCUMENTED.get(study, {}))
    axes.pop("seed", None)
    splits = [[f"{k}={v}" for v in axes.pop(k)] for k in SPLITS if k in axes]
    return axes, [list(c) for c in itertools.product(*splits)]


def arms(study: str) -> list[tuple[str, list[str]]]:
    axes, comparisons = study_axes(study)
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] or [{}]
    return [(" ".join(split), [*split, *(f"{k}={v}" for k, v in combo.items())])
            for split in comparisons for combo in combos]


def evaluated(study: str, task: str, arm: list[str], tmp_path) -> tuple:
    overrides = [f"experiment={study}", *arm]
    res = validate(compose_config(overrides, run_dir=str(tmp_path)))
    ev = res.eval
    tasks = tuple(repr(t.for_split("test")) for t in res.eval_tasks)
    return tasks, tuple(ev.lengths), tuple(ev.depths), ev.n_examples, ev.protocol, ev.decode_tail, ev.kind


def test_every_study_has_arms() -> None:
    assert "kv_policies" in STUDIES and "longlora" in STUDIES
    assert len(arms("kv_policies")) >= 4 and {a[1][0] for a in arms("kv_policies")} >= {"kv=duo", "kv=full"}
    assert {a[0] for a in arms("recall_frontier")} >= {"point=mqar_L64", "point=mqar_L512"}


@pytest.mark.parametrize("study", STUDIES)
def test_all_arms_of_a_study_evaluate_the_same_task_and_grid(study: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path / "studies"))
    by_task: dict[str, dict[str, tuple]] = {}
    for task, arm in arms(study):
        by_task.setdefault(task, {})[" ".join(arm) or "(the study)"] = evaluated(study, task, arm, tmp_path)
    for task, results in by_task.items():
        ref_name, ref = next(iter(results.items()))
        for name, got in results.items():
            assert got == ref, (f"{study} (task={task}): arm {name!r} evaluates {got}, "
                                f"arm {ref_name!r} evaluates {ref}")
