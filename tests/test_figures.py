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

from pipeline.rows import append_row, make_row

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS not in sys.path:  # scripts/ is not a package: its CLIs and figures/ import as top level
    sys.path.insert(0, SCRIPTS)

import collect  # noqa: E402
import plot  # noqa: E402
from figures import KINDS, load_results, make_palette, render  # noqa: E402
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


def test_every_figure_kind_renders(sweep: Path, tmp_path: Path) -> None:
    df = load_results([sweep])
    done = render(df, tmp_path, dirs=[sweep], formats=["png"], dpi=60)  # low dpi: keep the test fast
    assert set(done) == set(KINDS)
    for kind, result in done.items():
        assert not isinstance(result, str), f"{kind} skipped: {result}"
        assert result, kind
        for path in result:
            assert path.exists() and path.stat().st_size > 0, path
    assert len(done["heatmap"]) == df[df["depth"].notna()].groupby(["label", "task"]).ngroups


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
