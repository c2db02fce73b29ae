"""scripts/bench_train.py --families: every family eager and compiled vs the transformer, MFU vs a measured peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(Path(ROOT) / "scripts"))

import bench_families  # noqa: E402


def test_records_name_family_width_length_and_mode_in_process():
    records = {r["name"]: r for r in bench_families.run(["transformer", "gla"], [32], [16], ["eager"], 64, 1, 64, 1,
                                                          "inductor")}
    assert records["train/transformer/d32/L16/eager"]["ratio"] == 1.0
    gla = records["train/gla/d32/L16/eager"]
    assert gla["value"] > 0 and gla["ratio"] == pytest.approx(gla["value"] / gla["baseline"])
    assert 0 < records["train_mfu/gla/d32/L16/eager"]["ratio"] < 1


@pytest.mark.slow
def test_records_name_family_width_length_and_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench_train.py", "--families", "gla", "--quick", "--steps", "1",
                           "--compile-backend", "aot_eager", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["name"]: r for r in json.loads(out.read_text())}
    for family in ("transformer", "gla"):
        for mode in ("eager", "compiled"):
            r = records[f"train/{family}/d64/L64/{mode}"]
            assert r["value"] > 0 and r["ratio"] == pytest.approx(r["value"] / r["baseline"])
            mfu = records[f"train_mfu/{family}/d64/L64/{mode}"]
            assert 0 < mfu["ratio"] < 1 and mfu["baseline"] > 1e9  # a measured fp32 peak, GFLOP/s and up
    assert records["train/transformer/d64/L64/eager"]["ratio"] == 1.0
    assert "compile_s/gla/d64/L64" in records


def test_model_flops_count_matmul_parameters_and_causal_attention():
    model = bench_families.build("transformer", 64, 256, 64)
    cfg = model.cfg
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n)
    if cfg.tie_embeddings:
        matmul += model.embed_tokens.weight.numel()
    norms = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 1)
    expected = 6 * (matmul + norms) + 6 * cfg.n_layers * cfg.n_heads * (cfg.d_model // cfg.n_heads) * 64
    assert bench_families.flops_per_token(model, 64) == expected
    mamba = bench_families.build("mamba", 64, 256, 64)
    assert bench_families.flops_per_token(mamba, 64) == bench_families.flops_per_token(mamba, 4096)  # no attention
