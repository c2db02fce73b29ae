"""scripts/gpu_check.sh: without CUDA it stops at once; its dry run exercises every step on CPU and writes
each step's JSON and the summary; a failing, slow or over-budget step is recorded and the rest still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_device  # noqa: E402
import gpu_check  # noqa: E402

BENCH_STEPS = [s.name for s in gpu_check.STEPS if s.name.startswith("bench_")]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_without_cuda_it_exits_at_once_with_the_reason(tmp_path):
    out = tmp_path / "check"
    start = time.perf_counter()
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out)], capture_output=True,
                          text=True, timeout=120, env=env() | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == gpu_check.NO_CUDA, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists(), "nothing is written before the check can run"
    assert time.perf_counter() - start < 60  # "at once": the time to import torch, nothing runs


def test_dry_run_writes_every_steps_json_and_the_summary(tmp_path):
    """The whole pipeline on CPU at tiny sizes (the README's command with --dry-run)."""
    out = tmp_path / "check"
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    steps = {s.name: json.loads((out / f"{s.name}.json").read_text()) for s in gpu_check.STEPS}
    for name, record in steps.items():
        assert record["status"] in ("ok", "dry-run"), (name, record.get("error"))
        assert record["seconds"] >= 0 and record["budget_s"] > 0
    # install: commands recorded and printed with the README's build flags, never run
    install = steps["install"]
    assert install["packages"] and all(p["status"] == "dry-run" for p in install["packages"])
    assert all("MAMBA_FORCE_BUILD=TRUE" in c and "--no-build-isolation" in c for c in install["commands"])
    assert {p["package"] for p in install["packages"]} == set(gpu_check.cuda_extra())
    assert "on a GPU: MAMBA_FORCE_BUILD=TRUE" in proc.stdout
    # tests: run on CPU, counted from the junit XML; the GPU command runs them on cuda
    contracts = steps["tests_contracts"]
    assert contracts["tests"]["passed"] > 20 and not contracts["tests"]["failing"]
    assert "--device cuda" in contracts["gpu_commands"][0] and "--device cpu" in contracts["commands"][0]
    assert "-m gpu" in steps["tests_gpu"]["commands"][0] and steps["tests_gpu"]["tests"]["tests"] >= 1
    # benchmarks: records written by each script; the GPU commands ask for CUDA (bf16 where it applies)
    for name in BENCH_STEPS:
        records = steps[name]["records"]
        assert records and all("error" not in r and {"name", "value", "unit"} <= set(r) for r in records), name
        assert json.loads((out / f"{name}.records.json").read_text()) == records
        assert "--device cuda" in steps[name]["gpu_commands"][0], name
        assert (out / "logs" / f"{name}.log").exists()
    for name in ("bench_train", "bench_decode", "bench_mixers", "bench_context"):
        assert "--dtype bfloat16" in steps[name]["gpu_commands"][0], name
    assert any(r["name"].startswith("train_mfu/") for r in steps["bench_train"]["records"])
    assert {r["name"].split("/")[-1] for r in steps["bench_train"]["records"]} == {"eager", "compiled"}
    assert "--lengths 8192 16384 32768 65536" in steps["bench_attention"]["gpu_commands"][0]
    assert "--lengths 32768,65536,131072" in steps["bench_decode"]["gpu_commands"][0]
    summary = (out / "summary.md").read_text()
    for s in gpu_check.STEPS:
        assert f"| {s.name} | " in summary
    assert "## bench_train" in summary and "MFU" in summary
    assert [r["step"] for r in json.loads((out / "summary.json").read_text())] == [s.name for s in gpu_check.STEPS]


def fake_steps(calls: list[str]):
    def ok(run, allowed, record):
        calls.append(record["step"])
        return record | {"status": "ok", "records": [{"name": "x", "baseline": 1.0, "value": 2.0, "ratio": 2.0,
                                                       "unit": "u"}]}

    def broken(run, allowed, record):
        calls.append(record["step"])
        raise RuntimeError("kernel build exploded")

    def slow(run, allowed, record):
        calls.append(record["step"])
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        return gpu_check.execute(run, record["step"], record, 1.0, argv, lambda: {"ok": True}, argv)

    return (gpu_check.Step("first", (5, 5), ok), gpu_check.Step("broken", (5, 5), broken),
            gpu_check.Step("slow", (5, 5), slow), gpu_check.Step("last", (5, 5), ok))


def test_a_failing_or_slow_step_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gpu_check, "STEPS", fake_steps(calls))
    start = time.perf_counter()
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert time.perf_counter() - start < 30, "the slow step is stopped at its limit"
    assert code == 1 and calls == ["first", "broken", "slow", "last"]
    record = lambda name: json.loads((tmp_path / f"{name}.json").read_text())  # noqa: E731
    assert record("broken")["status"] == "failed" and "kernel build exploded" in record("broken")["error"]
    assert record("slow")["status"] == "timeout" and record("slow")["returncode"] is None
    assert record("last")["status"] == "ok"
    summary = (tmp_path / "summary.md").read_text()
    assert "| broken | failed |" in summary and "| slow | timeout |" in summary and "| x | 1 | 2 | 2 | u |" in summary


def test_steps_past_the_whole_run_limit_are_skipped(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gpu_check, "STEPS", fake_steps(calls)[:1] * 1 + fake_steps(calls)[3:])
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget-s", "2"])
    assert calls == [] and code == 0
    assert json.loads((tmp_path / "first.json").read_text())["status"] == "skipped"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the grandchild's state from /proc")
def test_run_command_stops_the_whole_process_group_at_its_limit(tmp_path):
    child = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    res = gpu_check.run_command([sys.executable, "-c", script], 3, tmp_path / "log")
    assert res.returncode is None and res.seconds < 30
    time.sleep(0.5)
    status = Path(f"/proc/{child.read_text()}/status")  # the grandchild went with it (gone, or a zombie)
    assert not status.exists() or "\nState:\tZ" in status.read_text()


PYPROJECT = """[project]
name = "x"
[project.optional-dependencies]
cuda = [{}]
"""


@pytest.mark.parametrize("extra,order", [
    ('"mamba-ssm>=2.2", "causal-conv1d>=1.4"', ["causal-conv1d>=1.4", "mamba-ssm>=2.2"]),
    ('"flash-linear-attention>=0.2", "mamba-ssm>=2.2", "causal-conv1d>=1.4"',
     ["causal-conv1d>=1.4", "mamba-ssm>=2.2", "flash-linear-attention>=0.2"]),
])
def test_install_takes_whatever_the_cuda_extra_lists_in_build_order(extra, order):
    assert gpu_check.cuda_extra(PYPROJECT.format(extra)) == order


def test_junit_counts_and_failing_tests(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">tb'
                   '</failure></testcase><testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                   '<testcase classname="tests.test_b" name="test_ok2"/></testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failures"], counts["skipped"]) == (2, 1, 1)
    assert counts["failing"] == ["tests.test_a::test_bad: assert 1 == 2"]


def test_mfu_flops_per_token_is_the_stated_closed_form():
    import bench_train

    from models.families.transformer import Transformer, TransformerConfig

    d, L, V, T, hidden = 64, 3, 100, 256, 176
    model = Transformer(TransformerConfig(vocab_size=V, d_model=d, n_layers=L, n_heads=4, mlp_hidden=hidden))
    # per block: q, k, v, o (d x d each, MHA, no biases), SwiGLU's three d x hidden, two RMSNorm weights;
    # the head V x d and the final norm d; the embedding is a lookup, not a matmul
    n = L * (4 * d * d + 3 * d * hidden + 2 * d) + V * d + d
    assert bench_train.flops_per_token(model, T) == 6 * n + 6 * L * d * T


def test_mfu_peak_is_matched_on_the_most_specific_gpu_name():
    assert bench_device.peak_bf16_for("NVIDIA H100 80GB HBM3") == 989.4e12
    assert bench_device.peak_bf16_for("NVIDIA H100 PCIe") == 756.0e12
    assert bench_device.peak_bf16_for("NVIDIA H200") == 989.4e12
    assert bench_device.peak_bf16_for("Tesla T4") is None  # unlisted: no MFU unless --peak-tflops
    assert bench_device.peak_flops(torch.device("cpu"), torch.bfloat16, None) is None
    assert bench_device.peak_flops(torch.device("cpu"), torch.float32, 2.0) == 2e12


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_contract_tests_refuse_cuda_without_a_device(monkeypatch):
    import conftest

    class Config:
        def getoption(self, name):
            return "cuda"

    monkeypatch.setenv("LONGCTX_TEST_DEVICE", "cpu")
    with pytest.raises(pytest.UsageError, match="--device=cuda but torch sees no CUDA device"):
        conftest.pytest_configure(Config())
