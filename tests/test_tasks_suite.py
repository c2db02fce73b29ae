"""The task suite's specification, as properties over the knobs of every family.

For any valid knobs, length, depth and seed: a row is exactly ``length`` tokens, labels sit only
on answers, the depth asked for is the depth generated, the same seed gives the same data, and the
oracle (reading the prompt alone) scores 100%. Bad knobs fail with a ValueError naming the field.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.base import IGNORE, Task, TaskArrays, hide_answers, training_views
from tasks.common import block_starts
from tasks.frequent_tokens import zipf_counts
from tasks.registry import TASKS
from tasks.vocab import Vocab

VOCAB = Vocab(256)
FAST = settings(max_examples=25, deadline=None)
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def niah_knobs(draw):
    needles = draw(st.integers(1, 4))
    return dict(key_len=draw(st.integers(1, 3)), value_len=draw(st.integers(1, 3)),
                haystack=draw(st.sampled_from(["noise", "filler", "distractor"])), needles=needles,
                queries=draw(st.integers(1, needles)),
                depths=draw(st.none() | st.lists(unit, min_size=needles, max_size=needles)))


@st.composite
def multikey_knobs(draw):
    key_len = draw(st.integers(1, 3))  # a fill grid of 4-token keys needs 16 records, past train_len 128
    sides = draw(st.lists(st.integers(1 if key_len == 1 else 2, 4), min_size=key_len, max_size=key_len))
    records = int(np.prod(sides))  # a grid's record count; more than 12 would not fit train_len 128
    return dict(key_len=key_len, value_len=draw(st.integers(1, 3)),
                distractors=draw(st.none() | st.just(records - 1)) if records <= 12 else None)


@st.composite
def kv_knobs(draw):
    pairs = draw(st.integers(1, 20))
    return dict(pairs=pairs, key_len=draw(st.integers(1, 3)), value_len=draw(st.integers(1, 3)),
                gold_index=draw(st.none() | st.integers(0, pairs - 1)))


@st.composite
def counting_knobs(draw):
    lo = draw(st.integers(0, 10))
    return dict(min_count=lo, max_count=draw(st.integers(lo, 40)))


@st.composite
def frequent_knobs(draw):
    k = draw(st.integers(1, 5))
    return dict(k=k, types=draw(st.integers(k + 1, 30)), alpha=draw(st.floats(0.0, 2.5)))


@st.composite
def conflict_knobs(draw):
    facts = draw(st.integers(1, 5))
    return dict(world_seed=draw(st.integers(0, 5)), closed_book_rate=draw(unit), conflict_rate=draw(unit),
                context_marker=draw(st.booleans()), world_keys=draw(st.none() | st.integers(facts, 90)),
                facts=facts, eval_closed_book_rate=draw(unit), eval_conflict_rate=draw(unit))


@st.composite
def text_niah_knobs(draw):
    keys = draw(st.integers(1, 4))
    return dict(keys=keys, values=draw(st.integers(1, 3)), queries=draw(st.integers(1, keys)),
                haystack=draw(st.sampled_from(["noise", "text"])))


KNOBS = {
    "niah": niah_knobs(),
    "multikey": multikey_knobs(),
    "kv_retrieval": kv_knobs(),
    "variable_tracking": st.fixed_dictionaries({"chains": st.integers(1, 4), "hops": st.integers(0, 6)}),
    "frequent_tokens": frequent_knobs(),
    "counting": counting_knobs(),
    "copy": st.fixed_dictionaries({"span": st.integers(1, 40), "reverse": st.booleans()}),
    "conflict": conflict_knobs(),
    "mqar": st.fixed_dictionaries({"num_kv_pairs": st.integers(1, 12), "power_a": st.floats(0.01, 2.0)}),
    "mix": st.fixed_dictionaries({"components": st.just(None), "weights": st.none()}),
    "passkey": st.fixed_dictionaries({"digits": st.integers(1, 8)}),
    "text_niah": text_niah_knobs(),
}
# Every registered family with an oracle (plugins included): its knob strategy above, else its defaults.
FAMILIES = [name for name in TASKS.names() if TASKS.get(name).has_oracle]


def test_every_registered_family_is_covered() -> None:
    assert set(KNOBS) <= set(FAMILIES)  # no strategy for a family that is gone
    # language modelling alone has no prompt-only oracle; it is measured by perplexity (tests/test_lm_eval.py)
    assert [name for name in TASKS.names() if not TASKS.get(name).has_oracle] == ["text_lm"]


def make(family: str, knobs: dict) -> Task:
    return TASKS.get(family)(**knobs)


def check_invariants(task: Task, arrays: TaskArrays, n: int, length: int) -> None:
    tokens, mask = arrays.tokens, arrays.answer_mask
    assert tokens.shape == (n, length) and tokens.dtype == np.int64
    assert mask.shape == (n, length) and mask.dtype == np.bool_
    assert tokens.min() >= 0 and tokens.max() < VOCAB.size
    assert mask.any(axis=1).all(), "every example has an answer"
    assert (tokens[mask] != Vocab.PAD).all()
    _, labels = training_views(tokens, mask)
    assert ((labels[:, :-1] != IGNORE) == mask[:, 1:]).all(), "labels exactly at the answers"
    assert (labels[:, -1] == IGNORE).all()
    for key, col in arrays.slices.items():
        assert len(col) == n, key
    hidden = hide_answers(tokens, mask)
    pred = task.oracle(VOCAB, hidden, mask)
    assert (pred[mask] == tokens[mask]).all(), "the oracle scores 100%"


@pytest.mark.parametrize("family", FAMILIES)
@FAST
@given(data=st.data(), n=st.integers(1, 6), extra=st.integers(0, 150), seed=st.integers(0, 2**20))
def test_generate_contract(family: str, data, n: int, extra: int, seed: int) -> None:
    task = make(family, {**data.draw(KNOBS.get(family, st.just({}))), "train_len": 4096})  # train_len never binds here
    task.check_vocab(VOCAB)
    length = task.min_length() + extra
    depth = data.draw(st.none() | unit) if task.has_depth else None
    arrays = task.generate(VOCAB, n, length, np.random.default_rng(seed), depth)
    check_invariants(task, arrays, n, length)
    if depth is not None and family != "mix":  # the depth achieved, within the family's resolution
        resolution = task.depth_resolution(length) if hasattr(task, "depth_resolution") else 1e-9
        assert (np.abs(arrays.depth - depth) <= resolution).all(), "depth honoured"
    if not task.has_depth:
        assert np.isnan(arrays.depth).all()
    again = task.generate(VOCAB, n, length, np.random.default_rng(seed), depth)
    assert (again.tokens == arrays.tokens).all() and (again.answer_mask == arrays.answer_mask).all()
    for key in arrays.slices:
        assert np.array_equal(again.slices[key], arrays.slices[key], equal_nan=key != "family")


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_changes_the_data(family: str) -> None:
    task = make(family, {})
    length = max(256, task.min_length())  # text tasks need room for their instructions
    a, b = (task.generate(VOCAB, 8, length, np.random.default_rng(s)) for s in (0, 1))
    assert not np.array_equal(a.tokens, b.tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_too_short_raises_naming_length(family: str) -> None:
    task = make(family, {})
    with pytest.raises(ValueError, match="length"):
        task.generate(VOCAB, 2, task.min_length() - 1, np.random.default_rng(0))


BAD = [
    ("niah", {"haystack": "essay"}, "haystack"),
    ("niah", {"needles": 0}, "needles"),
    ("niah", {"needles": 2, "queries": 3}, "queries"),
    ("niah", {"needles": 2, "depths": [0.5]}, "depths"),
    ("niah", {"depths": [1.5]}, "depths"),
    ("niah", {"value_len": 0}, "value_len"),
    ("multikey", {"distractors": 6}, "distractors"),  # 7 records: no 3 x ... grid of 2-token keys
    ("multikey", {"train_distractors": 4}, "train_distractors"),
    ("multikey", {"distractors": -1}, "distractors"),
    ("multikey", {"key_len": 0}, "key_len"),
    ("kv_retrieval", {"pairs": 0}, "pairs"),
    ("kv_retrieval", {"pairs": 4, "gold_index": 4}, "gold_index"),
    ("variable_tracking", {"chains": 0}, "chains"),
    ("variable_tracking", {"hops": -1}, "hops"),
    ("frequent_tokens", {"k": 0}, "k"),
    ("frequent_tokens", {"k": 4, "types": 4}, "types"),
    ("frequent_tokens", {"alpha": -1.0}, "alpha"),
    ("counting", {"min_count": -1}, "min_count"),
    ("counting", {"min_count": 5, "max_count": 4}, "max_count"),
    ("copy", {"span": 0}, "span"),
    ("copy", {"span": 100, "train_len": 128}, "train_len"),
    ("conflict", {"conflict_rate": 1.5}, "conflict_rate"),
    ("conflict", {"closed_book_rate": -0.5}, "closed_book_rate"),
    ("conflict", {"world_keys": 0}, "world_keys"),
    ("mqar", {"num_kv_pairs": 0}, "num_kv_pairs"),
    ("mix", {"components": {}}, "components"),
    ("mix", {"components": {"nope": {}}}, "components"),
    ("mix", {"components": {"niah": {"foo": 1}}}, "foo"),
    ("mix", {"components": {"niah": {"needles": 0}}}, "needles"),
    ("mix", {"components": {"niah": {}}, "weights": {"counting": 1.0}}, "weights"),
    ("mix", {"components": {"niah": {"value_len": 1}, "conflict": {"context_marker": False}}}, "components"),
    ("passkey", {"digits": 0}, "digits"),
    ("passkey", {"tokenizer": "words"}, "tokenizer"),
    ("text_niah", {"keys": 2, "queries": 3}, "queries"),
    ("text_niah", {"values": 0}, "values"),
    ("text_niah", {"haystack": "essay"}, "haystack"),
    ("text_lm", {"split": "dev"}, "split"),
]


@pytest.mark.parametrize("family,knobs,field", BAD, ids=[f"{f}-{k}" for f, _, k in BAD])
def test_bad_knobs_raise_naming_the_field(family: str, knobs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(family, knobs)


VOCAB_BAD = [
    ("niah", {"needles": 50, "key_len": 2, "train_len": 1000}, "needles"),
    ("kv_retrieval", {"pairs": 91, "key_len": 1, "train_len": 1000}, "pairs"),
    ("variable_tracking", {"chains": 10, "hops": 9, "train_len": 1000}, "chains"),
    ("frequent_tokens", {"types": 95, "train_len": 1000}, "types"),
    ("counting", {"max_count": 90, "train_len": 1000}, "max_count"),
    ("conflict", {"world_keys": 91}, "world_keys"),
    ("mix", {"components": {"counting": {"max_count": 90}}, "train_len": 1000}, "max_count"),
]


@pytest.mark.parametrize("family,knobs,field", VOCAB_BAD, ids=[f"{f}-{k}" for f, _, k in VOCAB_BAD])
def test_vocab_too_small_raises_naming_the_field(family: str, knobs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(family, knobs).check_vocab(VOCAB)


# ---- family-specific semantics -------------------------------------------------------------------

@FAST
@given(needles=st.integers(1, 4), depth=unit, seed=st.integers(0, 2**20), extra=st.integers(0, 100))
def test_niah_target_needle_at_depth(needles: int, depth: float, seed: int, extra: int) -> None:
    task = make("niah", {"needles": needles, "haystack": "noise"})  # token-exact placement
    length = task.min_length() + extra
    a = task.generate(VOCAB, 4, length, np.random.default_rng(seed), depth)
    context = length - task.question_len - task.answer_len
    for row in a.tokens:
        key = row[context + 1]
        start = int(np.flatnonzero((row[:context] == Vocab.NEEDLE) & (np.roll(row, -1)[:context] == key))[0])
        lo = int(np.rint(depth * (context - needles * task.needle_len)))
        assert lo <= start <= lo + (needles - 1) * task.needle_len  # shifted only by needles before it


def test_niah_single_needle_layout_is_the_documented_one() -> None:
    task = make("niah", {"haystack": "noise"})
    a = task.generate(VOCAB, 3, 40, np.random.default_rng(0), 0.5)
    start = int(np.rint(0.5 * (40 - 3 - 2 - 4)))
    assert (a.tokens[:, start] == Vocab.NEEDLE).all()
    assert (a.tokens[:, -5] == Vocab.QUERY).all() and (a.tokens[:, -3] == Vocab.ANSWER).all()
    assert (a.tokens[:, start + 1] == a.tokens[:, -4]).all()
    assert (a.tokens[:, start + 2 : start + 4] == a.tokens[:, -2:]).all()


def test_niah_haystacks() -> None:
    for haystack in ("filler", "distractor"):
        a = make("niah", {"haystack": haystack}).generate(VOCAB, 4, 200, np.random.default_rng(0), 0.5)
        if haystack == "filler":
            assert (a.tokens[:, :20] == a.tokens[0, :20]).all()  # one fixed pattern
        else:
            assert (a.tokens == Vocab.NEEDLE).sum(axis=1).min() > 30  # a haystack of look-alike needles


def test_block_starts_never_overlap() -> None:
    d = np.random.default_rng(0).random((200, 7))
    s = np.sort(block_starts(d, 100, 5), axis=1)
    assert (np.diff(s, axis=1) >= 5).all() and s.min() >= 0 and s.max() <= 95


@FAST
@given(knobs=multikey_knobs(), seed=st.integers(0, 2**20))
def test_multikey_records_are_distinct_look_alikes(knobs: dict, seed: int) -> None:
    task = make("multikey", knobs)
    a = task.generate(VOCAB, 3, task.min_length() + 30, np.random.default_rng(seed), 0.3)
    kl, vl = task.key_len, task.value_len
    for row in a.tokens:
        q = int(np.flatnonzero(row == Vocab.QUERY)[-1])
        target = row[q + 1 : q + 1 + kl]
        starts = np.flatnonzero(row[:q] == Vocab.NEEDLE)
        keys = [row[s + 1 : s + 1 + kl].tobytes() for s in starts]
        values = [row[s + 1 + kl : s + 1 + kl + vl].tobytes() for s in starts]
        assert len(set(keys)) == len(keys) and len(set(values)) == len(values)  # one answer per key
        assert keys.count(target.tobytes()) == 1


def test_multikey_keys_are_the_whole_grid_and_every_partial_key_is_ambiguous() -> None:
    """Every record's key is one point of the row's key grid, each point once: per position every token
    appears equally often, and every proper subset of the target's key matches min(side) records or more."""
    from itertools import combinations

    task = make("multikey", {})  # key_len 2, 8 distractors: a 3 x 3 grid
    a = task.generate(VOCAB, 200, 128, np.random.default_rng(0))
    kl = task.key_len
    for row in a.tokens:
        q = int(np.flatnonzero(row == Vocab.QUERY)[-1])
        starts = np.flatnonzero(row[:q] == Vocab.NEEDLE)
        keys = np.stack([row[s + 1 : s + 1 + kl] for s in starts])
        target = row[q + 1 : q + 1 + kl]
        assert len(keys) == 9 and len({k.tobytes() for k in keys}) == 9
        for col in keys.T:  # 3 tokens per position, 3 records each: no vote, no rarest token
            assert sorted(np.unique(col, return_counts=True)[1]) == [3, 3, 3]
        assert not set(keys[:, 0]) & set(keys[:, 1])
        for r in range(1, kl):
            for pos in combinations(range(kl), r):
                assert (keys[:, list(pos)] == target[list(pos)]).all(axis=1).sum() >= 3
        assert (keys == target).all(axis=1).sum() == 1


@pytest.mark.parametrize("pairs", [1, 5, 9])
def test_kv_retrieval_depth_picks_the_gold_record(pairs: int) -> None:
    task = make("kv_retrieval", {"pairs": pairs})
    for depth in (0.0, 0.5, 1.0):
        a = task.generate(VOCAB, 3, 200, np.random.default_rng(0), depth)
        assert (a.slices["gold_index"] == round(depth * (pairs - 1))).all()
    a = make("kv_retrieval", {"pairs": 9, "gold_index": 3}).generate(VOCAB, 3, 200, np.random.default_rng(0))
    assert (a.slices["gold_index"] == 3).all() and np.abs(a.depth - 3 / 8).max() <= task.depth_resolution(200)


def test_variable_tracking_statements_keep_chain_order() -> None:
    task = make("variable_tracking", {"chains": 3, "hops": 4})
    a = task.generate(VOCAB, 20, 200, np.random.default_rng(0))
    for row in a.tokens:
        answer = row[-5:]
        first = [int(np.flatnonzero((row == Vocab.ASSIGN) & (np.roll(row, -1) == x))[0]) for x in answer]
        assert first == sorted(first)


@FAST
@given(knobs=frequent_knobs(), extra=st.integers(0, 3000))
def test_frequent_counts_have_no_ties(knobs: dict, extra: int) -> None:
    task = make("frequent_tokens", knobs)
    total = task.min_length() - 2 - task.k + extra
    c = np.array(zipf_counts(total, task.types, task.k, task.alpha))
    assert c.sum() == total and c.min() >= 1
    assert (np.diff(c[: task.k + 1]) < 0).all() and c[task.k] >= c[task.k + 1 :].max(initial=0)


def test_counting_answer_is_the_mark_count() -> None:
    a = make("counting", {"min_count": 3, "max_count": 9}).generate(VOCAB, 50, 100, np.random.default_rng(0))
    marks = (a.tokens == Vocab.MARK).sum(axis=1)
    assert (a.tokens[:, -1] == VOCAB.values.start + marks).all() and (a.slices["count"] == marks).all()
    assert 3 <= marks.min() and marks.max() <= 9


def test_copy_reverse() -> None:
    for reverse in (False, True):
        task = make("copy", {"span": 10, "reverse": reverse})
        a = task.generate(VOCAB, 2, 60, np.random.default_rng(0), 0.0)
        text = a.tokens[:, 2:12]
        assert (a.tokens[:, 1] == Vocab.SEP).all() and (a.tokens[:, 0] != Vocab.SEP).all()  # one word before
        one = task.generate(VOCAB, 2, 60, np.random.default_rng(0), 1.0)
        context = 60 - 2 - 10
        assert (one.tokens[:, context - 2] == Vocab.SEP).all() and (one.tokens[:, context - 1] != Vocab.SEP).all()
        assert (a.tokens[:, -10:] == (text[:, ::-1] if reverse else text)).all()


def test_conflict_world_and_metrics() -> None:
    task = make("conflict", {"conflict_rate": 0.5, "closed_book_rate": 0.3})
    assert (task.world(VOCAB) == make("conflict", {}).world(VOCAB)).all()  # one world, any split seed
    assert not (task.world(VOCAB) == make("conflict", {"world_seed": 1}).world(VOCAB)).all()
    a = task.generate(VOCAB, 400, 64, np.random.default_rng(0))
    conflict, in_context = a.slices["conflict"].astype(bool), a.slices["in_context"].astype(bool)
    assert conflict.any() and (in_context & ~conflict).any() and (~in_context).any()
    true = task.world(VOCAB)[a.tokens[:, -3] - VOCAB.keys.start]
    assert (a.tokens[conflict, -1] != true[conflict]).all()
    assert (a.tokens[~conflict, -1] == true[~conflict]).all()
    assert ((a.tokens[:, -4] == Vocab.CONTEXT) == in_context).all()
    oracle = task.oracle(VOCAB, hide_answers(a.tokens, a.answer_mask), a.answer_mask)
    m = task.extra_metrics(VOCAB, a, oracle)
    assert m == {"context_following": 1.0, "weight_recall": 0.0, "closed_book_accuracy": 1.0}
    weights_only = a.tokens.copy()
    weights_only[:, -1] = true
    assert task.extra_metrics(VOCAB, a, weights_only)["weight_recall"] == 1.0


def test_conflict_test_documents_contradict_the_world_and_were_never_trained_on() -> None:
    from tasks.dataset import generate

    task = make("conflict", {"conflict_rate": 0.5})  # training also sees (other) contradictions
    world, counter = task.world(VOCAB), task.counter(VOCAB)
    assert (world != counter).all()

    def facts(a):
        rows, cols = np.nonzero(a.tokens[:, :-5] == Vocab.NEEDLE)
        return set(zip(a.tokens[rows, cols + 1].tolist(), a.tokens[rows, cols + 2].tolist()))

    train, test = generate(task, VOCAB, "train", 2000, 128, 0), generate(task, VOCAB, "test", 300, 128, 0)
    assert test.slices["conflict"].all() and test.slices["in_context"].all()  # eval defaults: all conflicting
    test_facts = facts(test)
    assert all(counter[k - VOCAB.keys.start] == v for k, v in test_facts)  # every fact contradicted
    assert not test_facts & facts(train)  # no test (key, value) pair occurs in training
    assert (test.tokens[:, -1] == counter[test.tokens[:, -3] - VOCAB.keys.start]).all()


def test_mix_slices_are_aligned_by_family() -> None:
    task = make("mix", {"components": {"niah": {"needles": 2}, "counting": {}, "kv_retrieval": {}},
                        "weights": {"niah": 2, "counting": 1, "kv_retrieval": 1}})
    a = task.generate(VOCAB, 40, 128, np.random.default_rng(0), 0.5)
    check_invariants(task, a, 40, 128)
    fam = a.slices["family"]
    assert (fam == "niah").sum() == 20 and (fam == "counting").sum() == 10
    assert np.isnan(a.slices["count"][fam != "counting"]).all()
    assert not np.isnan(a.slices["count"][fam == "counting"]).any()
    niah_depth = a.depth[fam == "niah"]  # the depth achieved: the distractor slot nearest 0.5
    assert np.isnan(a.depth[fam == "counting"]).all() and (np.abs(niah_depth - 0.5) <= 0.05).all()
    assert (task.family_of(hide_answers(a.tokens, a.answer_mask), a.answer_mask) == fam).all()
    pred = task.oracle(VOCAB, hide_answers(a.tokens, a.answer_mask), a.answer_mask)
    assert set(task.extra_metrics(VOCAB, a, pred)) == {"niah/achieved_depth", "kv_retrieval/achieved_depth"}
    mk = make("mix", {"components": {"multikey": {}, "conflict": {"conflict_rate": 1.0}}})
    b = mk.generate(VOCAB, 10, 128, np.random.default_rng(0))
    pred = mk.oracle(VOCAB, hide_answers(b.tokens, b.answer_mask), b.answer_mask)
    metrics = mk.extra_metrics(VOCAB, b, pred)
    assert metrics["multikey/distractor_rate"] == 0.0 and "conflict/context_following" in metrics


def test_text_lm_rows_are_corpus_windows_with_every_next_token_a_target() -> None:
    from tasks.corpus import corpus_tokens

    task = make("text_lm", {})
    a = task.generate(VOCAB, 5, 64, np.random.default_rng(0))
    stream = corpus_tokens("default", "bytes", "train")
    assert (~a.answer_mask[:, 0]).all() and a.answer_mask[:, 1:].all()
    for row in a.tokens:  # each row is a contiguous stretch of the training split
        hits = np.flatnonzero(stream[: len(stream) - 63] == row[0])
        assert any((stream[h : h + 64] == row).all() for h in hits)
    test = corpus_tokens("default", "bytes", "test")
    assert len(stream) + len(test) == len(corpus_tokens("default", "bytes", "all"))
    with pytest.raises(NotImplementedError, match="perplexity"):
        task.oracle(VOCAB, a.tokens, a.answer_mask)
