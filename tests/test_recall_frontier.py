"""scripts/recall_frontier.py: seeds pooled per point with Wilson intervals, unfitted arms flagged, figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(Path(ROOT) / "scripts"))

import recall_frontier  # noqa: E402


def row(model: str, d: int, L: int, pairs: int, seed: int, acc: float, train_em: float, state: int) -> dict:
    return {"run_id": f"frontier-{model}-d{d}-n0-mqar_L{L}-s{seed}", "model": model, "task": "mqar",
            "train_len": L, "eval_len": L, "seed": seed, "n_examples": 100, "accuracy": acc ** pairs,
            "token_accuracy": acc, "cache_bytes": state, "n_params": 1000 * d, "status": "ok",
            "model_d_model": d, "slice_num_kv_pairs": pairs, "train_em": train_em}


@pytest.fixture
def rows(tmp_path) -> Path:
    out = []
    for L, pairs in ((64, 4), (128, 8)):
        for d in (64, 128):
            for seed, acc in ((0, 1.0), (1, 0.9)):
                out.append(row("transformer", d, L, pairs, seed, acc, 1.0, 4 * d * L))
                out.append(row("mamba", d, L, pairs, seed, acc / 4 if L == 128 else acc, 0.2 if L == 128 else 1.0,
                               30 * d * 16))
    path = tmp_path / "rows"
    path.mkdir()
    (path / "frontier.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def test_points_pool_seeds_per_query_and_flag_unfitted_arms(rows):
    df = recall_frontier.load_results([rows])
    pts = recall_frontier.frontier_points(df, "token_accuracy").set_index(["model", "d_model", "eval_len"])
    p = pts.loc[("transformer", 64, 128)]
    assert p["token_accuracy"] == pytest.approx(0.95) and p["trials"] == 2 * 100 * 8 and p["seeds"] == 2
    assert p["lo"] < 0.95 < p["hi"] and not p["unfitted"]
    assert pts.loc[("mamba", 64, 128), "unfitted"] and not pts.loc[("mamba", 64, 64), "unfitted"]
    exact = recall_frontier.frontier_points(df, "accuracy").set_index(["model", "d_model", "eval_len"])
    assert exact.loc[("transformer", 64, 128), "trials"] == 200  # exact match: one trial per example


def test_figures_are_written(rows, tmp_path):
    out = tmp_path / "fig" / "recall_frontier.png"
    recall_frontier.main([str(rows), "--out", str(out)])
    assert out.exists() and (out.parent / "recall_vs_pairs.png").exists()


def test_chance_floor_of_mqar_per_query_follows_the_pairs():
    assert recall_frontier.chance("mqar", 64, 4, "token_accuracy") == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_frontier_tables_show_every_seed_and_the_paired_difference_from_attention(rows):
    import frontier_tables
    from figures.stats import difference

    df = recall_frontier.load_results([rows])
    text = frontier_tables.main([str(rows)])
    d64 = next(t for t in text.split("\n\n") if t.startswith("| mixer (d=64) |"))
    mamba = next(line for line in d64.splitlines() if line.startswith("| Mamba |"))
    cells = [c.strip() for c in mamba.strip("|").split("|")]
    assert cells[4] == "0.000 (0.200, unfitted), 0.000 (0.200, unfitted)"  # L=128: acc (1/4)^8, train EM 0.2
    a = df[(df.model == "mamba") & (df.model_d_model == 64) & (df.eval_len == 128)]
    b = df[(df.model == "transformer") & (df.model_d_model == 64) & (df.eval_len == 128)]
    r = difference(a, b, cell=("seed", "task", "eval_len"))
    assert cells[5].startswith(f"{r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}; seeds")
    assert "| attention | 16.4 KB / 32.8 KB | 1.000 (1.000), 0.656 (1.000) |" in d64  # 0.9^4 exact at L=64
