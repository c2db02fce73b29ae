"""A floor beside every number: evaluation rows carry the best prompt-only baseline of their cell,
computed on the very examples the row scored; the summary table and the heatmap show it.

The floor is checked against an independent computation (every baseline re-run on the regenerated
held-out examples of the cell), the summary against a hand average, and the heatmap's mark against
the Wilson interval of the floor.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from models.caches import CacheConfig
from pipeline.config.eval_config import EvalConfig
from pipeline.evaluation.evaluate import CellResult, evaluate_grid
from pipeline.results.summary import summary_table
from tasks.baselines import baselines_for, fitted_prior, hide_answers, score
from tasks.dataset import generate
from tasks.registry import TASKS
from tasks.vocab import Vocab

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

V = Vocab(256)


def first_record_runner(model, arrays, policy, batch_size, decode, teacher_forced, device, *args):
    """A 'model' that answers with the first record's value: a positional prior, nothing more."""
    task = TASKS.get("kv_retrieval")()
    preds = baselines_for(task)["first_value"](task, V, hide_answers(arrays.tokens, arrays.answer_mask),
                                                arrays.answer_mask, fitted_prior(task, V))
    return CellResult(preds, None, 0, 0, 1.0, None)


def test_rows_carry_the_paired_floor_of_their_cell() -> None:
    import torch

    task = TASKS.get("kv_retrieval")()
    ev = EvalConfig(lengths=[64], depths=[0.0, 0.5, 0.75], n_examples=48, batch_size=48, decode=False)
    rows = evaluate_grid(torch.nn.Linear(1, 1), [task], V, ev, CacheConfig(), 0, {"run_id": "x"}, None,
                         cell_runner=first_record_runner)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 3
    for r in rows:  # independent: regenerate the cell's examples and run every baseline
        arrays = generate(task, V, "test", 48, 64, 0, r["depth"])
        hidden = hide_answers(arrays.tokens, arrays.answer_mask)
        accs = {n: score(arrays, fn(task, V, hidden, arrays.answer_mask, fitted_prior(task, V)))[0]
                for n, fn in baselines_for(task).items()}
        chance = task.cell_floor(V, 64, r["depth"])["accuracy"]
        assert r["chance_floor"] == chance and r["floor"] == max(max(accs.values()), chance)
        assert r["floor"] == chance if r["floor_baseline"] == "chance" else accs[r["floor_baseline"]] == r["floor"]
    at = {r["depth"]: r for r in rows}
    assert at[0.0]["accuracy"] == 1.0 == at[0.0]["floor"]  # the positional prior passes the end cell ...
    assert at[0.0]["chance_floor"] == 1.0  # ... which the task states
    # an inner cell: every positional guess misses the pinned gold record, a blind guess gets 1/8
    assert at[0.75]["floor"] == 1 / 8 == at[0.75]["chance_floor"] and at[0.75]["floor_baseline"] == "chance"


def test_summary_reports_mean_floor_beside_accuracy() -> None:
    rows = [dict(run_id="a", model="transformer", pos="rope", train_len=64, task="niah", eval_len=64, depth=d,
                 n_examples=n, accuracy=a,
                 floor=f, status="ok") for d, n, a, f in [(0.0, 10, 1.0, 1.0), (0.5, 30, 0.5, 0.1)]]
    table = summary_table(rows)
    cols = [c.header for c in table.columns]
    i, j = cols.index("accuracy"), cols.index("floor")
    assert j == i + 1
    cells = [list(c._cells) for c in table.columns]
    assert cells[i][0] == f"{(10 * 1.0 + 30 * 0.5) / 40:.3f}" and cells[j][0] == f"{(10 * 1.0 + 30 * 0.1) / 40:.3f}"


def test_heatmap_marks_cells_within_the_floor_interval() -> None:
    from figures.heatmap import at_floor_cells, heatmap_figure, heatmap_pivot

    rows = pd.DataFrame([dict(task="kv_retrieval", eval_len=L, depth=d, n_examples=64, status="ok", train_len=64,
                              accuracy=acc, floor=floor)
                         for L, d, acc, floor in [(64, 0.0, 1.0, 1.0), (64, 0.5, 0.9, 0.12), (128, 0.0, 0.2, 0.14),
                                                  (128, 0.5, 0.3, 0.14)]])
    pivot = heatmap_pivot(rows)
    marked = at_floor_cells(rows, pivot)
    # (depth 0, L 64): 1.0 vs floor 1.0; (depth 0, L 128): 0.2 inside 0.14's interval; 0.3 is above it
    assert marked == {(0, 0), (0, 1)}
    fig, _ = heatmap_figure(rows)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "~f 1.00" in texts and "0.90" in texts and "0.30" in texts
    assert np.isclose(pivot.iat[1, 1], 0.3)


def test_sweep_summary_reports_mean_floor_beside_accuracy() -> None:
    import collect

    rows = pd.DataFrame([dict(label="a", model="transformer", stage="pretrain", task="niah", run_id="r", eval_len=64,
                              train_len=64,
                              depth=d, n_examples=n, accuracy=a, floor=f, status="ok", peak_mem_bytes=0,
                              cache_bytes=0) for d, n, a, f in [(0.0, 10, 1.0, 1.0), (0.5, 30, 0.5, 0.1)]])
    table = collect.summary_table(rows)
    cols = [c.header for c in table.columns]
    cells = [list(c._cells) for c in table.columns]
    assert cols.index("floor") == cols.index("acc") + 1
    assert cells[cols.index("floor")][0] == f"{(10 * 1.0 + 30 * 0.1) / 40:.3f}"
