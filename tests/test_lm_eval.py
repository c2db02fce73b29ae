"""Perplexity by position, each mode against an independent reference, and eval.py end to end.

- ``full`` streamed in chunks = one teacher-forced forward over the whole stream.
- ``sink_window`` streamed in chunks (window-only with sink=0, and with sinks): for a one-layer model
  the keys and values of a token depend only on that token, so the prediction at t equals a fresh
  forward over the kept tokens (sinks + the window before t + t) at positions 0..n-1.
- ``recompute`` = a fresh forward over the W tokens before each position, one at a time.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig
from pipeline.eval_run import evaluate_checkpoint
from pipeline.evaluation.lm_eval import LmEvalConfig, evaluate_lm, recompute_nll, stream_nll
from pipeline.run import train


def tiny(n_layers: int = 1) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=256, d_model=32, n_heads=4, n_kv_heads=2, n_layers=n_layers,
                                         init_std=0.2)).eval()


def nll_of_last(model, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(seq)[:, -1].float(), target, reduction="none")


def test_full_stream_equals_one_forward() -> None:
    model, x = tiny(2), torch.randint(0, 256, (2, 50))
    nll, _ = stream_nll(model, x, CacheConfig(policy="full", prefill="policy"), chunk=7)
    ref = F.cross_entropy(model(x[:, :-1]).float().transpose(1, 2), x[:, 1:], reduction="none")
    torch.testing.assert_close(nll, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sink", [0, 2])
def test_sink_window_stream_equals_recomputing_the_kept_tokens(sink: int) -> None:
    model, x, R = tiny(1), torch.randint(0, 256, (2, 40)), 6
    policy = CacheConfig(policy="sink_window", sink=sink, window=R, prefill="policy", chunk_size=5)
    nll, _ = stream_nll(model, x, policy, chunk=5)
    for t in (3, sink + R, sink + R + 1, 20, 38):
        kept = list(range(min(sink, t))) + list(range(max(sink, t - R), t + 1))  # sinks, window, itself
        ref = nll_of_last(model, x[:, kept], x[:, t + 1])
        torch.testing.assert_close(nll[:, t], ref, atol=1e-5, rtol=1e-5)


def test_recompute_equals_a_fresh_window_per_position() -> None:
    model, x, W = tiny(2), torch.randint(0, 256, (2, 30)), 8
    nll = recompute_nll(model, x, W, batch=5)
    assert nll.shape == (2, 29)
    for t in (0, 5, 7, 8, 20, 28):
        ref = nll_of_last(model, x[:, max(0, t - W + 1) : t + 1], x[:, t + 1])
        torch.testing.assert_close(nll[:, t], ref, atol=1e-5, rtol=1e-5)


def test_rows_are_buckets_per_policy() -> None:
    cfg = LmEvalConfig(n_tokens=100, n_streams=2, bucket=30, chunk=16)
    rows = evaluate_lm(tiny(1), cfg, "bytes", CacheConfig(policy="sink_window", sink=0, window=16), 32,
                       {"run_id": "r"}, None)
    assert [(r["bucket_start"], r["bucket_end"]) for r in rows] == [(1, 30), (31, 60), (61, 90), (91, 100)]
    assert all(r["status"] == "ok" and r["task"] == "lm" and np.isfinite(r["nll"]) for r in rows)
    assert rows[0]["cache"].startswith("sink_window(S=0,R=16") and rows[-1]["past_train_len"]
    with pytest.raises(ValueError, match="n_streams"):
        evaluate_lm(tiny(1), LmEvalConfig(n_tokens=10**6), "bytes", CacheConfig(), 32, {}, None)


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm")
    overrides = ["task=text_lm", "task.train_len=32", "model.d_model=32", "model.n_heads=2", "data.n_train=32",
                 "data.n_val=8", "data.batch_size=8", "trainer=smoke", "logger=none", "evaluate=false"]
    train(compose_config(overrides, run_dir=str(run)))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("extra", [["cache=sink_window", "cache.sink=4", "cache.window=16"],
                                   ["eval.lm.mode=recompute", "eval.lm.recompute_window=16"]],
                         ids=["stream", "recompute"])
def test_eval_py_lm_runs_on_a_checkpoint(text_checkpoint, tmp_path, extra, caplog) -> None:
    ov = [f"ckpt={text_checkpoint}", "eval=lm", "eval.lm.n_tokens=96", "eval.lm.n_streams=2", "eval.lm.bucket=32"]
    ov += extra
    with caplog.at_level("INFO"):
        rows = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path)), ov)
    # it says where it wrote, and what it measured, as a grid evaluation does
    assert f"run dir: {tmp_path}" in caplog.text and f"rows in {tmp_path / 'results.jsonl'}" in caplog.text
    assert re.search(r"eval=lm \S+: NLL [\d.]+ within the training length \(L=32\), [\d.]+ past it", caplog.text)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    written = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["nll"] for r in written] == [r["nll"] for r in rows]
    assert rows[0]["cache"].startswith("sink_window(S=4,R=16") if "cache=sink_window" in extra \
        else rows[0]["cache"] == "recompute(W=16)"


def test_eval_py_sinks_and_longbench_run_on_a_checkpoint(text_checkpoint, tmp_path, caplog) -> None:
    from pathlib import Path

    ov = [f"ckpt={text_checkpoint}", "eval=sinks", "eval.sinks.n_sequences=2"]
    with caplog.at_level("INFO"):
        rows = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "s")), ov)
    assert f"run dir: {tmp_path / 's'}" in caplog.text and "eval=sinks: attention on token 0 up to" in caplog.text
    assert len(rows) == 2 * 2 and all(0 <= r["sink_mass"] <= 1 for r in rows)  # 2 layers x 2 heads
    fixture = Path(__file__).parent / "fixtures" / "longbench"
    ov = [f"ckpt={text_checkpoint}", "eval=longbench", f"eval.longbench.dir={fixture}",
          "eval.longbench.datasets=[passage_count,trec]", "eval.longbench.max_length=48"]
    rows = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "lb")), ov)
    assert [r["dataset"] for r in rows] == ["passage_count", "trec"]
    assert all(r["status"] == "ok" and r["n_truncated"] == 1 and 0 <= r["score"] <= 100 for r in rows)
    preds = (tmp_path / "lb" / "longbench" / "trec.jsonl").read_text().splitlines()
    assert json.loads(preds[0])["answers"] == ["Animal"]


def test_plot_draws_the_streaming_figures(text_checkpoint, tmp_path) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import plot

    for name, ov in (("lm", ["eval=lm", "eval.lm.n_tokens=64", "eval.lm.n_streams=2", "eval.lm.bucket=32"]),
                     ("sinks", ["eval=sinks", "eval.sinks.n_sequences=2"])):
        ov = [f"ckpt={text_checkpoint}"] + ov
        evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / name)), ov)
    done = plot.main([str(tmp_path / "lm"), str(tmp_path / "sinks"), "--out", str(tmp_path / "fig"),
                      "--kind", "nll_position", "sinks", "--format", "png", "--dpi", "50"])
    assert all(isinstance(v, list) and v and v[0].exists() for v in done.values()), done


def test_eval_lm_on_an_imported_hf_model(tmp_path) -> None:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    ov = [f"init_from=hf:{tmp_path / 'llama'}", "eval=lm", "cache=sink_window", "cache.window=16",
          "eval.lm.n_tokens=64", "eval.lm.n_streams=2", "eval.lm.bucket=32"]
    rows = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev")), ov)
    assert len(rows) == 2 and all(r["status"] == "ok" and np.isfinite(r["nll"]) for r in rows)
    cfg.vocab_size = 100  # bytes do not fit: a config error before any work
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "small")
    from pipeline.config.resolve import ConfigError

    ov[0] = f"init_from=hf:{tmp_path / 'small'}"
    with pytest.raises(ConfigError, match="vocab_size"):
        evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev2")), ov)
