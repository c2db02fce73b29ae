"""scripts/arch_compare.py: a point whose arm never fitted its training data is flagged unfitted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import arch_compare  # noqa: E402


def _run(root: Path, model: str, d: int, acc: float, state: int, train: list[tuple[int, float, float]]) -> None:
    run = root / f"arch-{model}-mqar-d{d}"
    (run / "logs" / "version_0").mkdir(parents=True)
    row = dict(run_id=run.name, model=model, task="mqar", train_len=64, eval_len=64, depth=None, n_examples=32,
               accuracy=acc, cache_bytes=state, n_params=1000, status="ok")
    (run / "results.jsonl").write_text(json.dumps(row) + "\n")
    lines = ["epoch,step,train/exact_match,train/loss,train/token_accuracy,val/exact_match,val/loss,val/token_accuracy"]
    lines += [f"0,{step},{em},{loss},{em},,," for step, em, loss in train]
    lines.append(f"0,{train[-1][0]},,,,{acc},0.1,{acc}")  # a validation row: not a training row
    (run / "logs" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_unfitted_arm_is_flagged_with_its_training_loss(tmp_path) -> None:
    _run(tmp_path, "transformer", 64, 1.0, 65536, [(s, 1.0, 0.01) for s in (924, 949, 974, 999)])
    # the last 4 training rows average 0.2 exact match, loss 3.0: it never fitted
    _run(tmp_path, "mamba", 64, 0.05, 30720, [(24, 0.0, 5.5), (474, 0.1, 3.2), (499, 0.3, 2.8), (524, 0.0, 3.5),
                                              (549, 0.4, 2.5)])
    pts = arch_compare.main([str(tmp_path), "--out", str(tmp_path / "fig.png")]).set_index("model")
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert not pts.loc["transformer", "unfitted"] and pts.loc["mamba", "unfitted"]
    assert pts.loc["mamba", "steps"] == 550
    assert abs(pts.loc["mamba", "train_loss"] - 3.0) < 1e-9 and abs(pts.loc["mamba", "train_em"] - 0.2) < 1e-9
    # a looser threshold keeps it as an architecture result
    pts = arch_compare.main([str(tmp_path), "--out", str(tmp_path / "fig.png"), "--fit-threshold", "0.1"])
    assert not pts["unfitted"].any()


def test_a_state_sweep_is_one_line_per_width_and_a_width_sweep_one_line_per_model() -> None:
    import pandas as pd

    pts = pd.DataFrame(dict(
        task=["mqar"] * 5 + ["copy"],
        model=["mamba", "mamba", "mamba", "transformer", "transformer", "mamba"],
        d_model=[64, 64, 32, 32, 64, 64],
        d_state=[4, 16, 16, None, None, 16],
    ))
    # mamba sweeps d_state on mqar: d=64's state sizes are one line, d=32 another (no zigzag across knobs);
    # the transformer's widths are one line; on copy mamba has one state size, so one line
    assert list(arch_compare.series(pts)) == ["mamba d=64", "mamba d=64", "mamba d=32", "transformer",
                                              "transformer", "mamba"]


def test_every_mixer_family_is_an_arm_of_the_sweep() -> None:
    """A family of one mixer (mamba, gated_deltanet, ...) joins experiment=arch_compare: the sweep names every one."""
    from omegaconf import OmegaConf

    from models.families import FAMILIES
    from models.mixers import MIXERS

    conf = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "arch_compare.yaml"
    arms = set(str(OmegaConf.load(conf).hydra.sweeper.params.model).split(","))
    families = {f for f in FAMILIES.names() if f in MIXERS.names() and not f.startswith("toy")} | {"transformer"}
    assert families <= arms, f"add {sorted(families - arms)} to {conf.name}'s model sweep"
    assert all((conf.parents[1] / "model" / f"{arm}.yaml").exists() for arm in arms)


def test_series_look_different_and_lines_skip_unfitted_points(tmp_path) -> None:
    """Three mamba series are three distinguishable legend entries (colour and dash, the same in every panel),
    and a line joins only fitted points."""
    import pandas as pd

    pts = pd.DataFrame(dict(
        task=["mqar", "mqar", "mqar", "mqar", "niah"], model=["mamba"] * 5, d_model=[64, 64, 64, 32, 64],
        d_state=[4, 16, 64, 16, 16], state_bytes=[12288, 30720, 104448, 15360, 30720],
        accuracy=[0.86, 1.0, 0.53, 0.0, 0.01], unfitted=[False, False, True, True, True], eval_len=[64] * 5))
    pts["series"] = arch_compare.series(pts)
    styles = arch_compare.series_styles(pts)
    assert set(styles) == {"mamba", "mamba d=64", "mamba d=32"} and len(set(styles.values())) == 3
    arch_compare.plot(pts, tmp_path / "fig.png")
    import matplotlib.pyplot as plt

    fig = plt.gcf()
    mqar = fig.axes[0] if fig.axes[0].get_title().startswith("mqar") else fig.axes[1]
    joined = [ln for ln in mqar.get_lines() if ln.get_linestyle() not in ("None", "none") and len(ln.get_xdata()) > 1
              and ln.get_label().startswith("mamba")]  # not the chance floor
    assert [list(ln.get_xdata()) for ln in joined] == [[12288, 30720]]  # d_state 64 (unfitted) not joined
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"mamba", "mamba d=64", "mamba d=32"} <= set(legend)


def test_the_figure_redraws_from_a_points_file(tmp_path) -> None:
    """--save-points writes what --points reads back: the committed docs/results/arch_compare/points.jsonl draws the
    doc's figure without the run directories, and the round trip keeps every point and its unfitted flag."""
    committed = Path(__file__).resolve().parents[1] / "docs" / "results" / "arch_compare" / "points.jsonl"
    pts = arch_compare.main(["--points", str(committed), "--out", str(tmp_path / "a.png"),
                             "--save-points", str(tmp_path / "again.jsonl")])
    assert (tmp_path / "a.png").exists() and len(pts) == 15 and pts["unfitted"].sum() == 5
    again = arch_compare.main(["--points", str(tmp_path / "again.jsonl"), "--out", str(tmp_path / "b.png")])
    cols = ["run_id", "accuracy", "unfitted"]
    assert again[cols].values.tolist() == pts[cols].values.tolist()
    with pytest.raises(SystemExit):
        arch_compare.main(["--out", str(tmp_path / "c.png")])  # neither runs nor points
