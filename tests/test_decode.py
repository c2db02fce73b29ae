"""Prefill + decode through the full cache reproduces teacher forcing; the memory probe counts bytes."""

import numpy as np
import pytest
import torch

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig
from pipeline.evaluation.decode import decode_predictions, teacher_forced_predictions
from pipeline.train.memory import measure_peak
from tasks.dataset import generate
from tasks.mqar import Mqar
from tasks.niah import Niah
from tasks.vocab import Vocab


@pytest.mark.parametrize("task", [Niah(train_len=48, value_len=3), Mqar(train_len=48, num_kv_pairs=6)],
                         ids=["niah", "mqar"])
@pytest.mark.parametrize("prefill", ["dense", "policy"])
def test_forced_decode_equals_teacher_forced(task, prefill):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2)).eval()
    a = generate(task, Vocab(64), "test", 6, 48, 0)
    tokens, mask = torch.from_numpy(a.tokens), torch.from_numpy(a.answer_mask)
    policy = CacheConfig("full", prefill=prefill, chunk_size=7)
    dec, cache_bytes = decode_predictions(model, tokens, mask, policy, free_running=False)
    tf = teacher_forced_predictions(model, tokens)
    assert torch.equal(dec[mask], tf[mask])
    free, _ = decode_predictions(model, tokens, mask, policy)
    first = mask.float().argmax(1)
    rows = torch.arange(6)
    assert torch.equal(free[rows, first], tf[rows, first])  # the first answer token never differs
    assert cache_bytes == 2 * 2 * 6 * 2 * 47 * 16 * 4  # layers x (k,v) x B x Hkv x (L-1) x hd x fp32


def test_memory_probe_counts_live_tensor_bytes():
    with measure_peak() as m:
        a = torch.zeros(1000, 250)  # 1 MB
        b = a + 1  # 2 MB live
        del a
        c = b * 2  # still 2 MB live at most
        del b, c
    assert m.region_peak_bytes == 2_000_000
    lin = torch.nn.Linear(100, 100)
    with measure_peak(lin) as m2:
        lin(torch.zeros(10, 100))
    assert m2.peak_bytes - m2.region_peak_bytes == (100 * 100 + 100) * 4


def test_memory_probe_sees_cache_growth_with_length():
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2)).eval()
    peaks = []
    for length in (64, 256):
        x = torch.randint(0, 64, (1, length))
        with measure_peak(model) as m, torch.no_grad():
            cache = model.new_cache(1)
            model(x, cache)
        peaks.append((m.region_peak_bytes, cache.nbytes()))
    assert peaks[1][0] > peaks[0][0] and peaks[1][0] >= peaks[1][1]
    assert np.isclose(peaks[1][1] / peaks[0][1], 4.0)


def test_prefix_cached_answers_equal_recomputed_ones(tmp_path):
    from pipeline.evaluation.prefix import evaluate_prefix_cache

    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2)).eval()
    task = Niah(train_len=96, needles=3)
    rows = evaluate_prefix_cache(model, task, Vocab(64), [96, 128], 6, 4, 3, CacheConfig("full"), 0,
                                 {"run_id": "t"}, tmp_path / "rows.jsonl", torch.device("cpu"))
    assert [r["eval_len"] for r in rows] == [96, 128]
    for r in rows:
        assert r["answers_identical"] is True and r["n_examples"] == 18
        assert r["question_s_reuse"] > 0 and r["question_s_recompute"] > 0


def test_niah_questions_ask_every_needle():
    t = Niah(train_len=96, needles=3, value_len=2)
    a = generate(t, Vocab(64), "test", 5, 96, 0)
    context, qa = t.questions(Vocab(64), a, 3)
    for question, answer in qa:
        full = np.concatenate([a.tokens[:, :context], question, answer], axis=1)
        mask = np.zeros_like(full, dtype=bool)
        mask[:, -2:] = True
        one = Niah(train_len=96, needles=3)
        pred = one.oracle(Vocab(64), np.where(mask, 0, full), mask)
        assert (pred[mask] == full[mask]).all()


# ------------------------------------------------ the evaluation protocol: the question goes through the policy


def _first_answer_logits(model, tokens, mask, policy, protocol, decode_tail=None):
    from pipeline.evaluation.decode import decode_start, run_prompt, task_openers

    first = int(mask.float().argmax(1).min())
    start = decode_start(tokens.numpy(), mask.numpy(), task_openers(Niah()), protocol, decode_tail)
    cache = model.new_cache(tokens.shape[0], policy)
    return run_prompt(model, tokens[:, :first], cache, policy, start), start, first


def test_question_decoded_protocol_sees_the_policy_and_full_is_teacher_forced():
    """Needles 40+ tokens before the question, a window of 8: under question_decoded the first answer
    token's logits come from the compressed cache (differ from full); under the old question_prefilled
    ablation they are full attention's; under full every protocol equals teacher forcing."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, init_std=0.2)).eval()
    task = Niah(train_len=64, needles=2, queries=2, depths=[0.0, 0.2])
    a = generate(task, Vocab(64), "test", 4, 64, 0)
    tokens, mask = torch.from_numpy(a.tokens), torch.from_numpy(a.answer_mask)
    with torch.no_grad():
        tf = model(tokens)  # teacher-forced logits
    first = int(mask.float().argmax(1).min())
    sink = CacheConfig("sink_window", sink=2, window=8)
    full_dec, start, _ = _first_answer_logits(model, tokens, mask, CacheConfig("full"), "question_decoded")
    assert start == first - task.question_len  # the QUERY token opens the decoded part
    assert torch.allclose(full_dec, tf[:, first - 1], atol=1e-5)
    tail, start_tail, _ = _first_answer_logits(model, tokens, mask, CacheConfig("full"), "question_decoded", 2)
    assert start_tail == first - 2 and torch.allclose(tail, tf[:, first - 1], atol=1e-5)
    sw_dec, _, _ = _first_answer_logits(model, tokens, mask, sink, "question_decoded")
    assert (sw_dec - tf[:, first - 1]).abs().max() > 1e-2  # the question read the compressed cache
    sw_old, _, _ = _first_answer_logits(model, tokens, mask, sink, "question_prefilled")
    assert torch.allclose(sw_old, tf[:, first - 1], atol=1e-5)  # the ablation: dense question, full logits
    for protocol in ("question_decoded", "question_prefilled"):
        preds, _ = decode_predictions(model, tokens, mask, CacheConfig("full"), free_running=False,
                                      feed_from=_first_answer_logits(model, tokens, mask, CacheConfig("full"),
                                                                     protocol)[1])
        assert torch.equal(preds[mask], teacher_forced_predictions(model, tokens)[mask])


def test_question_starts_follow_each_rows_opener():
    from pipeline.evaluation.decode import question_starts, task_openers

    a = generate(Niah(train_len=48, queries=1), Vocab(64), "test", 3, 48, 0)
    starts = question_starts(a.tokens, a.answer_mask, task_openers(Niah()))
    assert (a.tokens[np.arange(3), starts] == Vocab.QUERY).all()
    m = generate(Mqar(train_len=48, num_kv_pairs=6), Vocab(64), "test", 3, 48, 0)
    assert (question_starts(m.tokens, m.answer_mask, task_openers(Mqar())) == m.answer_mask.argmax(1)).all()


def test_grid_rows_name_their_protocol(tmp_path):
    from pipeline.config.eval_config import EvalConfig
    from pipeline.evaluation.evaluate import evaluate_grid

    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2)).eval()
    for protocol in ("question_decoded", "question_prefilled"):
        ev = EvalConfig(lengths=[32], depths=[0.5], n_examples=4, batch_size=4, protocol=protocol)
        rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), ev, CacheConfig("sink_window", window=4), 0,
                             {"run_id": "t"}, None)
        assert {r["protocol"] for r in rows} == {protocol}
    with pytest.raises(ValueError, match="eval.protocol"):
        ev = EvalConfig(lengths=[32], depths=[0.5], n_examples=4, batch_size=4, protocol="dense_question")
        evaluate_grid(model, [Niah(train_len=32)], Vocab(64), ev, CacheConfig(), 0, {}, None)
