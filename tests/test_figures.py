"""Figures and sweep collection: every figure kind renders from a synthetic results table, the NIAH
heatmap keeps its orientation, and collect.py reports missing jobs and failed rows without ever
dropping a row."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.results.rows import append_row, make_row

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS not in sys.path:  # scripts/ is not a package: its CLIs and figures/ import as top level
    sys.path.insert(0, SCRIPTS)

import collect  # noqa: E402
import plot  # noqa: E402
from figures import FIGURES, load_results, make_palette, render  # noqa: E402
from figures.heatmap import heatmap_figure, heatmap_pivot, train_line_x  # noqa: E402

LENGTHS = [128, 256, 512, 1024]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
IDS = dict(seed=0, n_examples=8, token_accuracy=0.5, tokens_per_s=1000.0, config_hash="abc")


BUDGET = {"sink_window(4+64)": 68, "sink_window(4+256)": 260, "quest(128)": 128}  # tokens kept


def _mem(length: int, cache: str) -> dict:
    """Bytes per sequence: full grows with length, budgeted policies stop at their budget."""
    tokens = length // 2 + 68 if cache.startswith("duo") else min(length, BUDGET.get(cache) or length)
    return dict(peak_mem_bytes=2**20 * length // 64 + 1024 * tokens, cache_bytes=1024 * tokens)


def _write_run(root: Path, name: str, rows: list[dict], metrics: bool = False, gates: bool = False) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- run_id={name}\n")
    for r in rows:
        append_row(run / "results.jsonl", make_row(**IDS, **r))
    if metrics:
        (run / "logs" / "version_0").mkdir(parents=True)
        pd.DataFrame({"step": [10, 20, 20, 30, 40, 40], "train/loss": [5.0, 3.0, None, 2.0, 1.0, None],
                      "val/loss": [None, None, 3.2, None, None, 1.4],
                      "val/exact_match": [None, None, 0.2, None, None, 0.7]}).to_csv(
            run / "logs" / "version_0" / "metrics.csv", index=False)
    if gates:
        torch.save(torch.rand(4, 2), run / "gates.pt")
    return run


def _niah_rows(model: str, pos: str, stage: str, train_len: int, scale: float, run_id: str,
               attention: str = "full", cache: str = "full", oom_at: int | None = None,
               extra: dict | None = None) -> list[dict]:
    rows = []
    for L in LENGTHS:
        for d in DEPTHS:
            base = dict(run_id=run_id, model=model, pos=pos, attention=attention, cache=cache, task="niah",
                        train_len=train_len, eval_len=L, depth=d, stage=stage, **(extra or {}))
            if L == oom_at:
                rows.append(dict(base, status="oom", error="OutOfMemoryError: CUDA out of memory"))
                continue
            if L == 512 and d == 0.75:
                continue  # a missing depth: the heatmap shows a blank cell
            acc = max(0.0, min(1.0, scale * (1.0 if L <= train_len else train_len / L) - 0.1 * d))
            rows.append(dict(base, accuracy=acc, status="ok", **_mem(L, cache)))
    return rows


def _slice_rows(run_id: str, model: str, task: str, knob: str, values: list,
                train_len: int = 128) -> list[dict]:
    drop = 0.3 if model == "mamba" else 0.15  # models differ, so their lines do not overlap
    rows = []
    for L in (256, 512):
        for i, v in enumerate(values):
            rows.append(dict(run_id=run_id, model=model, pos="rope" if model != "mamba" else None,
                             attention="full" if model != "mamba" else "mamba", cache="full", task=task,
                             train_len=train_len, eval_len=L, depth=None, stage="pretrain",
                             accuracy=max(0.0, 1.0 - drop * i * (L / 512)), status="ok",
                             **{f"slice_{knob}": v}, **_mem(L, "full")))
    return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake sweep covering every figure kind, with oom/error rows and a missing depth."""
    root = tmp_path_factory.mktemp("sweep")
    _write_run(root, "0", _niah_rows("transformer", "rope", "pretrain", 256, 1.0, "rope", oom_at=1024)
               + [dict(run_id="rope", model="transformer", pos="rope", attention="full", cache="full",
                       task="niah", train_len=256, eval_len=2048, depth=0.0, stage="pretrain",
                       status="error", error="RuntimeError: boom")], metrics=True)
    _write_run(root, "1", _niah_rows("transformer", "yarnx4", "pretrain", 256, 0.9, "yarn-zs"))
    longlora = dict(train_step_s=0.8, train_peak_mem_bytes=3 * 2**30, trainable_params=2_000_000)
    _write_run(root, "2", _niah_rows("transformer", "yarnx4", "extend", 1024, 0.95, "yarn-ft",
                                     attention="shifted_sparse->full", extra=longlora), metrics=True)
    _write_run(root, "3", _niah_rows("mamba", None, "pretrain", 256, 0.6, "mamba", attention="mamba",
                                     extra=dict(train_step_s=0.3, trainable_params=5_000_000)))
    for i, cache in enumerate(["sink_window(4+64)", "sink_window(4+256)", "duo(0.5)", "quest(128)"]):
        _write_run(root, f"eval{i}", _niah_rows("transformer", "rope", "pretrain", 256, 0.3 + 0.15 * i,
                                                f"rope-{cache}", cache=cache), gates=cache.startswith("duo"))
    _write_run(root, "4", _slice_rows("kv", "transformer", "kv_retrieval", "gold_index", [0, 10, 20, 30, 39])
               + _slice_rows("vt", "transformer", "variable_tracking", "hops", [1, 2, 3, 4])
               + _slice_rows("cf", "transformer", "conflict", "similarity", [0.0, 0.5, 0.9])
               + _slice_rows("mx", "hybrid", "mix", "family", ["copy", "niah", "mqar"]))
    _write_run(root, "5", _slice_rows("kvm", "mamba", "kv_retrieval", "gold_index", [0, 10, 20, 30, 39]))
    lm = [dict(run_id="lm", model="transformer", pos="rope", attention="full", cache=cache, task="lm", train_len=128,
               eval_len=512, corpus="default", bucket_start=s + 1, bucket_end=s + 64, position=s + 32.5,
               past_train_len=s >= 128, nll=1.0 + (s / 128 if cache == "full" else 0.0), status="ok")
          for cache in ("full", "sink_window(S=4,R=60)") for s in range(0, 512, 64)]
    sinks = [dict(run_id="lm", model="transformer", pos="rope", attention="full", cache="full", task="sinks",
                  train_len=128, eval_len=128, layer=i, head=j, sink_mass=0.1 * (i + j), uniform_mass=0.035,
                  status="ok") for i in range(2) for j in range(3)]
    _write_run(root, "6", lm + sinks)  # eval=lm and eval=sinks rows beside the grid's
    return root


def test_heatmap_puts_depth_zero_on_top_and_lengths_ascending(sweep: Path) -> None:
    df = load_results([sweep])
    g = df[(df["run_id"] == "rope") & (df["task"] == "niah")]
    pivot = heatmap_pivot(g.sample(frac=1.0, random_state=0))  # row order must not matter
    assert list(pivot.index) == sorted(DEPTHS) and pivot.index[0] == 0.0
    assert list(pivot.columns) == sorted(pivot.columns) == LENGTHS + [2048]
    assert pd.isna(pivot.loc[0.75, 512])  # missing depth stays missing, not 0
    assert pd.isna(pivot.loc[0.0, 1024])  # an oom cell is no accuracy
    assert pivot.loc[0.0, 128] == pytest.approx(1.0)
    fig, shown = heatmap_figure(g)
    ax = fig.axes[0]
    top, bottom = ax.get_ylim()[1], ax.get_ylim()[0]
    assert top < bottom  # y axis runs downward: row 0 (depth 0) is drawn at the top
    assert ax.get_yticklabels()[0].get_text() == "0"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(L) for L in shown.columns]
    assert train_line_x(LENGTHS, 256) == 1.5  # between 256 and 512
    import matplotlib.pyplot as plt
    plt.close(fig)


@pytest.mark.parametrize("kind", FIGURES.names())  # every registered kind, test plugins (tests/plugins) included
def test_every_figure_kind_renders(kind: str, sweep: Path, tmp_path: Path) -> None:
    """The contract of a figure kind: from the synthetic sweep it draws without error and writes files."""
    df = load_results([sweep])
    done = render(df, tmp_path, [kind], dirs=[sweep], formats=["png"], dpi=60)  # low dpi: keep the test fast
    result = done[kind]
    assert not isinstance(result, str), f"{kind} skipped: {result}"
    assert result and all(path.exists() and path.stat().st_size > 0 for path in result), result
    if kind == "heatmap":
        assert len(result) == df[df["depth"].notna()].groupby(["label", "task"]).ngroups


def test_kinds_without_data_are_skipped_with_a_reason(sweep: Path, tmp_path: Path) -> None:
    df = load_results([sweep / "1"])
    kinds = ["heatmap", "lost_in_middle", "hops", "cost", "curves", "gates"]
    done = render(df, tmp_path, kinds, dirs=[sweep / "1"], formats=["png"], dpi=60)
    for kind in kinds[1:]:
        assert isinstance(done[kind], str), kind
    assert not isinstance(done["heatmap"], str)


def test_palette_is_fixed_by_family_order(sweep: Path) -> None:
    df = load_results([sweep])
    pal = make_palette(df)
    families = [pal.family[lb] for lb in pal.order]
    assert families == sorted(families, key=["transformer", "hybrid", "mamba"].index)
    assert make_palette(df.sample(frac=1.0, random_state=1)).order == pal.order  # independent of row order
    # a stage split is styled, not a new label: zero-shot and extended yarn are different labels by attention
    assert len(set(pal.order)) == len(pal.order)


def test_collect_reports_missing_and_failed_and_keeps_every_row(sweep: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "multirun"
    rows_a = _niah_rows("transformer", "rope", "pretrain", 256, 1.0, "a", oom_at=1024)
    _write_run(root, "0", rows_a)
    _write_run(root, "1", [])  # a job that crashed before writing any row
    (root / "1" / "train.log").write_text("starting\nValueError: model.pos.rule='bogus'\n")
    rows_b = _niah_rows("mamba", None, "pretrain", 256, 0.5, "b", attention="mamba")
    _write_run(root, "2", rows_b)
    with open(root / "2" / "results.jsonl", "a") as f:
        f.write('{"run_id": "b", "model": "mam')  # torn last line: a crash mid-write
    rep = collect.main([str(root), "--out", str(tmp_path / "out" / "sweep")])
    text = capsys.readouterr().out
    assert [p.name for p in rep.missing] == ["1"]
    assert "missing: 1 job" in text and "bogus" in text
    n_oom = sum(r["status"] == "oom" for r in rows_a)
    assert len(rep.failed) == n_oom > 0 and "failed: " in text and "OutOfMemoryError" in text
    assert len(rep.bad_lines) == 1 and rep.bad_lines[0]["last"] and "torn last line" in text
    assert len(rep.table) == len(rows_a) + len(rows_b)  # every written row, failed ones included
    back = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert len(back) == len(pd.read_csv(tmp_path / "out" / "sweep.csv")) == len(rep.table)
    assert set(back["status"]) == {"ok", "oom"}
    assert "sweep summary" in text
    # the collected table loads back for plot.py with the same rows and labels
    again = load_results([tmp_path / "out" / "sweep.parquet"])
    assert len(again) == len(back) and set(again["label"]) == set(rep.table["label"])


def test_plot_cli_on_a_collected_table(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rep = collect.collect(sweep, tmp_path / "all")
    done = plot.main([str(rep.paths[0]), "--out", str(tmp_path / "figs"), "--kind", "pareto", "gates",
                      "--dpi", "60"])
    assert set(done) == {"pareto", "gates"}
    assert all(not isinstance(v, str) and v for v in done.values())  # gates found via the table's run_dir
    for suffix in ("png", "pdf"):
        assert (tmp_path / "figs" / f"pareto_niah.{suffix}").stat().st_size > 0
    assert "pareto" in capsys.readouterr().out


def test_wilson_interval_matches_closed_form_values() -> None:
    from figures.stats import wilson

    # Brown, Cai & DasGupta (2001) / textbook values: 0 of 10 -> [0, 0.2775]; 50 of 100 -> [0.4038, 0.5962]
    assert wilson(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(0.5, 100) == pytest.approx((0.40383, 0.59617), abs=1e-4)
    lo, hi = wilson(0.9, 64)
    assert lo < 0.9 < hi and hi - lo < wilson(0.9, 16)[1] - wilson(0.9, 16)[0]  # narrower with more n


def test_plot_survives_eval_rows_without_finetuned_and_leaves_no_partial_figures(sweep: Path, tmp_path: Path) -> None:
    """An eval.py run dir (rows without `finetuned`) next to train.py rows (finetuned=True/False)."""
    root = tmp_path / "outputs"
    _write_run(root, "train", _niah_rows("transformer", "rope", "extend", 256, 1.0, "t", extra={"finetuned": True}))
    _write_run(root, "zs", _niah_rows("transformer", "rope", "zero_shot", 256, 0.5, "t", extra={"finetuned": False}))
    _write_run(root, "eval", _niah_rows("transformer", "rope", "pretrain", 256, 0.4, "e", cache="quest(32)"))
    done = plot.main([str(root), "--out", str(tmp_path / "figs"), "--kind", "accuracy", "memory", "--format", "png",
                      "--dpi", "50"])
    assert all(not isinstance(v, str) for v in done.values()), done

    def broken(ctx):  # writes one figure, then fails
        import matplotlib.pyplot as plt
        from figures.style import save
        save(plt.figure(), ctx.out, "half_done")
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(FIGURES._entries, "broken", broken)
        out = tmp_path / "figs2"
        done = render(load_results([root]), out, ["broken", "accuracy"], formats=["png"], dpi=50)
    assert done["broken"].startswith("failed: RuntimeError: boom")
    assert not (out / "half_done.png").exists() and (out / "accuracy_vs_length_niah.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch folder left


def test_line_styles_legends_and_intervals_mean_what_they_say(tmp_path: Path, monkeypatch) -> None:
    import figures.lines as lines
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    # kv_policies-like: fit=false arms (finetuned=False) and a duo arm (finetuned=True): no style legend
    rows = (_niah_rows("transformer", "rope", "pretrain", 256, 1.0, "f", extra={"finetuned": False})
            + _niah_rows("transformer", "rope", "pretrain", 256, 1.0, "q", cache="quest(32)",
                         extra={"finetuned": False})
            + _niah_rows("transformer", "rope", "duo_gates", 256, 0.8, "d", cache="duo(0.5)",
                         extra={"finetuned": True}))
    _write_run(tmp_path / "kv", "0", rows)
    df = load_results([tmp_path / "kv"])
    lines.plot_accuracy_vs_length(df, tmp_path / "f1", make_palette(df))
    ax = figs[-1].axes[0]
    legend = [t.get_text() for t in figs[-1].legends[0].get_texts()]
    assert "zero-shot" not in legend and "fine-tuned" not in legend
    drawn = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(LENGTHS) and ln.get_linestyle() != "None"]
    assert len(drawn) == 3 and all(ln.get_linestyle() == "-" for ln in drawn)  # caps are "None" lines
    # full and quest coincide: their points are nudged apart, not drawn on top of each other
    xs = [tuple(ln.get_xdata()) for ln in drawn]
    assert len(set(xs)) == 3
    assert "n=32-40 per point" in ax.get_title()  # 8 examples x 5 depths (4 at L=512)
    assert any(t.get_text() == "train L=256" for t in ax.texts)
    # rope_extension-like: one label evaluated zero-shot and fine-tuned -> dashed + style legend
    _write_run(tmp_path / "rope", "0", _niah_rows("transformer", "yarn", "zero_shot", 256, 0.5, "y",
                                                 extra={"finetuned": False})
               + _niah_rows("transformer", "yarn", "extend", 256, 1.0, "y", extra={"finetuned": True}))
    df = load_results([tmp_path / "rope"])
    lines.plot_accuracy_vs_length(df, tmp_path / "f2", make_palette(df))
    legend = [t.get_text() for t in figs[-1].legends[0].get_texts()]
    assert "zero-shot" in legend and "fine-tuned" in legend
    drawn = [ln for ln in figs[-1].axes[0].get_lines() if len(ln.get_xdata()) == len(LENGTHS)]
    assert {ln.get_linestyle() for ln in drawn} - {"None"} == {"-", "--"}


def test_identical_memory_lines_are_drawn_once_and_named_together(tmp_path: Path, monkeypatch) -> None:
    import figures.lines as lines
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    rows = []
    for rule in ("rope", "linear", "ntk"):
        rows += _niah_rows("transformer", rule, "extend", 256, 1.0, rule)
    _write_run(tmp_path / "m", "0", rows)
    df = load_results([tmp_path / "m"])
    lines.plot_memory_vs_length(df, tmp_path / "f", make_palette(df))
    ax = figs[-1].axes[0]
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(LENGTHS)]) == 1  # three labels, one line
    legend = [t.get_text() for t in figs[-1].legends[0].get_texts()]
    assert len(legend) == 1 and "(= linear, ntk)" in legend[0]
    labelled = [t for t in ax.get_yticklabels() if t.get_text()]
    assert len(labelled) >= 2  # 1-2-5 ticks: more than one label on a log axis


def test_pareto_colours_by_label_when_one_policy_and_no_unused_legend_entries(tmp_path: Path, monkeypatch) -> None:
    import figures.pareto as pareto
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    rows = []
    for i, rule in enumerate(("rope", "linear", "yarn")):
        rows += _niah_rows("transformer", rule, "extend", 256, 0.5 + 0.2 * i, rule)
    _write_run(tmp_path / "p", "0", rows)
    df = load_results([tmp_path / "p"])
    pareto.plot_pareto(df, tmp_path / "f", make_palette(df))
    legend = [t.get_text() for t in figs[-1].legends[0].get_texts()]
    assert "transformer" not in legend and "Pareto front" not in legend  # one family; one-point front
    assert legend == ["rope", "linear", "yarn"]  # only what differs between the points drawn together


def test_loss_curve_is_not_clipped(tmp_path: Path, monkeypatch) -> None:
    from figures.curves import plot_training_curves, read_metrics
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    run = _write_run(tmp_path, "r", [], metrics=True)  # losses 5.0 ... 1.0
    m = read_metrics([run / "logs" / "version_0" / "metrics.csv"])
    plot_training_curves(m, {}, tmp_path / "f", make_palette(pd.DataFrame()))
    assert figs[-1].axes[0].get_ylim()[1] >= 5.0


def test_unrelated_runs_under_one_label_are_kept_apart(tmp_path: Path) -> None:
    small = _niah_rows("transformer", "rope", "pretrain", 256, 1.0, "a", extra={"arm_hash": "aaa", "n_params": 1e5})
    seed1 = _niah_rows("transformer", "rope", "pretrain", 256, 0.9, "a1", extra={"arm_hash": "aaa", "n_params": 1e5})
    big = _niah_rows("transformer", "rope", "pretrain", 256, 0.2, "b", extra={"arm_hash": "bbb", "n_params": 2e5})
    _write_run(tmp_path, "0", small)
    _write_run(tmp_path, "1", seed1)
    _write_run(tmp_path, "2", big)
    df = load_results([tmp_path])
    assert df.groupby("label")["run_id"].nunique().to_dict() == {
        "transformer/rope/full/full (100k params)": 2, "transformer/rope/full/full (200k params)": 1}


def test_intervals_at_zero_and_one_never_give_negative_error_bars() -> None:
    from figures.stats import accuracy_with_interval

    df = pd.DataFrame({"label": ["a"] * 3, "eval_len": [64, 128, 256], "status": "ok",
                       "accuracy": [1.0, 0.0, 0.99 + 0.01], "n_examples": [32, 32, 29]})
    g = accuracy_with_interval(df, ["label", "eval_len"])
    assert ((g["accuracy"] - g["lo"]) >= 0).all() and ((g["hi"] - g["accuracy"]) >= 0).all()


def test_legends_name_only_what_differs_and_file_names_stay_short(tmp_path: Path, monkeypatch) -> None:
    """eval=lm rows beside the grid's (other columns: corpus, lm_mode, ...) no longer lengthen the grid's
    legend; a label too long for a file name is cut and hashed."""
    import figures.lines as lines
    from figures.style import MAX_SLUG, slug
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    rows = (_niah_rows("transformer", "rope", "pretrain", 256, 1.0, "r")
            + _niah_rows("transformer", "yarnx4", "pretrain", 256, 0.8, "y"))
    rows += [dict(run_id="r", model="transformer", pos="rope", attention="full", cache="full", task="lm",
                  train_len=256, eval_len=512, corpus="default", lm_mode="stream", bucket_start=1, bucket_end=64,
                  position=32.5, nll=1.0, status="ok")]
    _write_run(tmp_path / "m", "0", rows)
    df = load_results([tmp_path / "m"])
    assert any("corpus=" in lb for lb in df["label"])  # the table-wide labels tell the lm rows apart ...
    lines.plot_accuracy_vs_length(df, tmp_path / "f", make_palette(df))
    legend = [t.get_text() for t in figs[-1].legends[0].get_texts()]
    assert legend == ["rope", "yarnx4"], legend  # ... a figure of the grid rows names the rules only
    long = slug("transformer/rope/full/" + "sink_window(S=4,R=60)" * 10)
    assert len(long) <= MAX_SLUG and long != slug("transformer/rope/full/" + "sink_window(S=4,R=61)" * 10)


def test_pareto_ignores_rows_without_accuracy(tmp_path: Path) -> None:
    """eval=lm rows carry cache bytes but no accuracy: they are no Pareto points (axis limits were NaN)."""
    import figures.pareto as pareto

    lm = [dict(run_id="lm", model="transformer", pos="rope", attention="full", cache=cache, task="niah",
               train_len=128, eval_len=512, corpus="default", bucket_start=1, bucket_end=64, position=32.5,
               nll=1.0, cache_bytes=4096 * (i + 1), status="ok") for i, cache in enumerate(("full", "sink_window"))]
    _write_run(tmp_path / "p", "0", lm + _niah_rows("transformer", "rope", "pretrain", 256, 1.0, "r")
               + _niah_rows("transformer", "rope", "pretrain", 256, 0.5, "q", cache="quest(128)"))
    df = load_results([tmp_path / "p"])
    paths = pareto.plot_pareto(df, tmp_path / "f", make_palette(df))
    assert [p.name for p in paths if p.suffix == ".png"] == ["pareto_niah.png"]


def test_nll_figure_one_model_one_panel_whichever_script_and_imported_models_unlabelled(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """train.py's eval=lm rows (finetuned, stage) and eval.py's on the same checkpoint (same arm_hash) share
    one axes; an imported model's panel claims no training length."""
    from figures.lm_positions import plot_nll_by_position
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))

    def lm(cache: str, **extra) -> list[dict]:
        return [dict(dict(run_id="x", model="transformer", pos="rope", attention="full", cache=cache, task="lm",
                          train_len=128, eval_len=512, corpus="default", lm_mode="stream", bucket_start=s + 1,
                          bucket_end=s + 64, position=s + 32.5, past_train_len=s >= 128, nll=1.0 + s / 512,
                          status="ok"), **extra) for s in range(0, 512, 64)]
    _write_run(tmp_path / "r", "train", lm("full", stage="pretrain", finetuned=False, arm_hash="aaa"))
    _write_run(tmp_path / "r", "eval", lm("sink_window(S=4,R=60)", stage="pretrain", arm_hash="aaa"))
    df = load_results([tmp_path / "r"])
    paths = plot_nll_by_position(df, tmp_path / "f", make_palette(df))
    assert len([p for p in paths if p.suffix == ".png"]) == 1
    ax = figs[-1].axes[0]
    assert len(ax.get_lines()) == 3 and "trained at L=128" in ax.get_title()  # 2 policies + the training line
    _write_run(tmp_path / "h", "hf", lm("full", imported_from="hf:hf/tiny-llama", train_len=None))
    df = load_results([tmp_path / "h"])
    plot_nll_by_position(df, tmp_path / "g", make_palette(df))
    ax = figs[-1].axes[0]
    assert "imported hf/tiny-llama" in ax.get_title() and "trained" not in ax.get_title()
    assert not any("training length" in t.get_text() for t in ax.texts)


def test_pareto_draws_the_policies_of_each_model_on_their_own_axes(tmp_path: Path) -> None:
    """Two trained models, each under two policies: one Pareto figure per model, never a mix of both."""
    import figures.pareto as pareto

    rows = []
    for train_len in (256, 512):
        for cache in ("full", "quest(128)"):
            rows += _niah_rows("transformer", "rope", "pretrain", train_len, 0.9, f"m{train_len}-{cache}", cache=cache)
    _write_run(tmp_path / "p", "0", rows)
    df = load_results([tmp_path / "p"])
    paths = pareto.plot_pareto(df, tmp_path / "f", make_palette(df))
    assert sorted(p.name for p in paths if p.suffix == ".png") == ["pareto_niah_256.png", "pareto_niah_512.png"]
