"""The statistics behind every claim (scripts/figures/stats.py): intervals on the difference between
two arms, checked against closed forms, not against the code itself."""

import math

import numpy as np
import pandas as pd
import pytest


def test_paired_normal_is_the_wald_interval_of_paired_proportions():
    """0/1 outcomes of two arms on the same examples: with b pairs (1, 0), c pairs (0, 1) out of n, the
    mean difference is (b - c)/n with variance ((b + c) - (b - c)^2/n) / (n (n - 1))."""
    from figures.stats import Z95, paired_normal

    b, c, same = 9, 3, 52
    a_out = np.array([1] * b + [0] * c + [1] * (same // 2) + [0] * (same - same // 2))
    b_out = np.array([0] * b + [1] * c + [1] * (same // 2) + [0] * (same - same // 2))
    n = a_out.size
    mean, lo, hi = paired_normal(a_out - b_out)
    var = ((b + c) - (b - c) ** 2 / n) / (n * (n - 1))
    assert mean == pytest.approx((b - c) / n)
    assert (lo, hi) == pytest.approx(((b - c) / n - Z95 * math.sqrt(var), (b - c) / n + Z95 * math.sqrt(var)))


def test_pairing_narrows_the_interval_when_arms_agree_on_most_examples():
    """Two arms that fail on the same hard examples: the paired interval is far narrower than the
    unpaired one (two independent binomials) on the same numbers."""
    from figures.stats import difference

    rng = np.random.default_rng(0)
    hard = rng.random(64) < 0.4
    a = np.where(hard, 0, 1)
    b = a.copy()
    b[:3] = 1 - b[:3]  # three disagreements
    def rows(out, with_outcomes):
        return pd.DataFrame([dict(status="ok", seed=0, task="niah", eval_len=64, depth=0.5, n_examples=64,
                                  accuracy=out.mean(), correct="".join(map(str, out)) if with_outcomes else None)])
    paired = difference(rows(a, True), rows(b, True))
    unpaired = difference(rows(a, False), rows(b, False))
    assert paired.paired and not unpaired.paired
    assert paired.mean == pytest.approx(unpaired.mean) == pytest.approx(a.mean() - b.mean())
    assert (paired.hi - paired.lo) < 0.5 * (unpaired.hi - unpaired.lo)
    pa, pb = a.mean(), b.mean()  # unpaired closed form: two independent binomial proportions
    half = 1.959963984540054 * math.sqrt(pa * (1 - pa) / 64 + pb * (1 - pb) / 64)
    assert (unpaired.lo, unpaired.hi) == pytest.approx((pa - pb - half, pa - pb + half))


def test_t_interval_over_three_seeds_uses_two_degrees_of_freedom():
    from figures.stats import t_interval

    mean, lo, hi = t_interval(np.array([0.1, 0.2, 0.3]))
    # t_{0.975, 2} = 4.302653 (tables); sd = 0.1, k = 3
    assert mean == pytest.approx(0.2)
    assert hi - mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert math.isnan(t_interval(np.array([0.5]))[1])


def test_difference_pools_seeds_as_strata_and_reports_the_seed_interval():
    from figures.stats import difference, t_interval

    def arm(acc_by_seed):
        out = []
        for seed, outs in acc_by_seed.items():
            out.append(dict(status="ok", seed=seed, task="niah", eval_len=64, depth=0.0, n_examples=len(outs),
                            accuracy=float(np.mean(outs)), correct="".join(map(str, outs))))
        return pd.DataFrame(out)
    a = arm({0: [1, 1, 1, 0], 1: [1, 1, 0, 0], 2: [1, 0, 0, 0]})
    b = arm({0: [1, 0, 1, 0], 1: [1, 1, 0, 0], 2: [0, 0, 0, 0]})
    d = difference(a, b)
    assert d.seeds == 3 and d.n == 12 and d.paired
    assert d.mean == pytest.approx(2 / 12)
    _, lo, hi = t_interval(np.array([0.25, 0.0, 0.25]))
    assert (d.seed_lo, d.seed_hi) == pytest.approx((lo, hi))
    # per-seed variances (ddof=1) of the differences [0,1,0,0], [0,0,0,0], [1,0,0,0]: 0.25, 0, 0.25
    se = math.sqrt((0.25 * 4 + 0 + 0.25 * 4) / 12 ** 2)
    assert d.hi - d.mean == pytest.approx(1.959963984540054 * se)
    # a cell only one arm has is not compared
    extra = pd.concat([a, pd.DataFrame([dict(status="ok", seed=3, task="niah", eval_len=64, depth=0.0,
                                             n_examples=4, accuracy=1.0, correct="1111")])])
    assert difference(extra, b).n == 12


def test_collect_prints_the_paired_difference_against_a_reference_arm(tmp_path, capsys):
    """collect.py --versus: one line per arm and length with the paired interval of the difference."""
    import collect

    from pipeline.results.rows import append_rows, make_row

    full = np.array([1] * 30 + [0] * 2)
    window = full.copy()
    window[:8] = 0  # the window loses 8 of the 30 needles full finds
    for seed in (0, 1, 2):
        for policy, out in (("full", full), ("sink_window", window)):
            append_rows(tmp_path / f"{policy}-s{seed}" / "results.jsonl", [make_row(
                run_id=f"{policy}-s{seed}", model="transformer", pos="rope", attention="full", cache=policy,
                cache_policy=policy, task="niah", train_len=64, eval_len=128, depth=0.5, seed=seed,
                n_examples=32, accuracy=float(out.mean()), correct="".join(map(str, out)), status="ok")])
    rep = collect.main([str(tmp_path), "--versus", "full/full"])
    text = capsys.readouterr().out
    labels = set(rep.table["label"])
    assert "transformer/rope/full/full" in labels and len(labels) == 2
    assert "-0.250" in text and "yes" in text  # 8/32 lost, paired
    with pytest.raises(SystemExit, match="no ok rows with that label"):
        collect.main([str(tmp_path), "--versus", "nonesuch"])
