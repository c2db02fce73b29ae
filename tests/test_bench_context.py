"""scripts/bench_context.py: the search finds the longest fitting length; the benchmark runs end to end."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import bench_context  # noqa: E402


def brute_force(peak, budget, step, max_len):
    """The reference: the longest grid length that fits, scanning every grid point."""
    fits = [T for T in range(step, max_len + 1, step) if peak(T) <= budget]
    return max(fits, default=0)


@pytest.mark.parametrize("peak", [
    lambda T: 1000 + 37 * T,  # linear, like activations
    lambda T: 5000 + 3 * T + T * T // 50,  # convex: the line through two probes over-predicts
    lambda T: 200 * int(T**0.5) + 7 * T,  # concave
    lambda T: 1000 + 37 * T + (500 if T % 3 == 0 else 0),  # not monotone: the answer is some fitting T
], ids=["linear", "convex", "concave", "bumpy"])
@pytest.mark.parametrize("budget", [3_000, 60_000, 400_000])
def test_search_finds_the_longest_fitting_length(peak, budget):
    step, max_len = 16, 8192
    calls = []
    found = bench_context.longest_fit(lambda T: calls.append(T) or peak(T), budget, step, max_len)
    assert found.longest % step == 0 and (found.longest == 0 or peak(found.longest) <= budget)
    # the bracket is exact: the next grid length was measured over budget (or is past max_len)
    nxt = found.longest + step
    assert nxt > max_len or (nxt in found.peaks and found.peaks[nxt] > budget)
    if "bumpy" not in str(peak):
        assert found.longest == brute_force(peak, budget, step, max_len)
    assert len(calls) <= 20 and set(calls) == set(found.peaks)


def test_search_reports_a_cap_and_a_miss():
    capped = bench_context.longest_fit(lambda T: T, budget=10**9, step=64, max_len=1000)
    assert capped.longest == 960 and capped.capped
    miss = bench_context.longest_fit(lambda T: 10**6 + T, budget=10, step=64, max_len=1000)
    assert miss.longest == 0 and not miss.capped and list(miss.peaks) == [64]


def test_quick_run_writes_records_and_figure(tmp_path):
    out, fig = tmp_path / "ctx.json", tmp_path / "ctx.png"
    methods = ["full_ft", "full_ft+ckpt", "longlora", "hybrid+ckpt"]  # every family and option
    bench_context.main(["--quick", "--mem-gb", "0.002", "--d-model", "16", "--layers", "2", "--vocab", "64",
                        "--step", "64", "--max-len", "2048", "--methods", *methods,
                        "--json", str(out), "--plot", str(fig)])
    records = json.loads(out.read_text())
    longest = {r["name"].split("/")[-1]: r for r in records if r["name"].startswith("context/max_train_len/")}
    assert list(longest) == methods
    for r in records:
        assert set(r) >= {"name", "baseline", "value", "ratio", "unit"}
    assert all(r["value"] > 0 for r in longest.values())
    assert longest["full_ft+ckpt"]["value"] > longest["full_ft"]["value"]
    peaks = [r for r in records if r["name"].startswith("context/peak_bytes/full_ft/")]
    assert any(r["ratio"] > 1 for r in peaks) and any(r["ratio"] <= 1 for r in peaks)
    assert fig.stat().st_size > 10_000


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit):
        bench_context.main(["--methods", "full_ft", "qlora"])
