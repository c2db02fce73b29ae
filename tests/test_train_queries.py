"""Several questions per training row (``train_queries``): kv_retrieval and multikey.

Training rows end with several ``QUERY key ANSWER value`` blocks about distinct records, each
value labelled; validation and test rows keep one question, so evaluation is unchanged. The
checks read the rows directly (records from their separators, questions from the row's end), not
through the task's oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks.base import hide_answers, training_views
from tasks.dataset import generate
from tasks.registry import TASKS
from tasks.vocab import Vocab

V = Vocab(256)
KNOBS = {  # multi-question training layouts (the kv/multikey recipes used these before the curriculum)
    "kv_retrieval": {"train_len": 64, "pairs": 8, "key_len": 1, "value_len": 3, "train_queries": 4},
    "multikey": {"train_len": 64, "key_len": 2, "value_len": 2, "distractors": 8,
                 "train_queries": 4, "train_distractors": 3},
}


def records_of(family: str, task, row: np.ndarray) -> dict[tuple, tuple]:
    """key -> value of every record before the first question, found from its marker token."""
    kl, vl = task.key_len, task.value_len
    end = int(np.flatnonzero(row == V.QUERY)[0])
    if family == "kv_retrieval":  # k.. v.. SEP
        return {tuple(row[s - vl - kl : s - vl]): tuple(row[s - vl : s]) for s in np.flatnonzero(row[:end] == V.SEP)}
    return {tuple(row[s + 1 : s + 1 + kl]): tuple(row[s + 1 + kl : s + 1 + kl + vl])  # NEEDLE k.. v..
            for s in np.flatnonzero(row[:end] == V.NEEDLE)}


def questions_of(task, row: np.ndarray, q: int) -> list[tuple[int, tuple, tuple]]:
    """(start, key, answer) of the q question blocks at the row's end."""
    kl, w = task.key_len, 2 + task.key_len + task.value_len
    out = []
    for j in range(q):
        at = len(row) - (q - j) * w
        assert row[at] == V.QUERY and row[at + 1 + kl] == V.ANSWER
        out.append((at, tuple(row[at + 1 : at + 1 + kl]), tuple(row[at + 2 + kl : at + w])))
    return out


@pytest.mark.parametrize("family", sorted(KNOBS))
def test_training_rows_ask_several_distinct_records_and_evaluation_rows_one(family: str) -> None:
    task = TASKS.get(family)(**KNOBS[family])
    for split in ("train", "val", "test"):
        a = generate(task, V, split, 200, 64, seed=3)
        asks = a.slices["questions"]
        if split == "train":  # 1..4 questions, uniform: the evaluation layout is among the training rows
            assert set(asks) == {1, 2, 3, 4}
        else:
            assert (asks == 1).all(), split
        assert a.tokens.shape == (200, 64)
        if family == "multikey":  # training rows hold train_distractors look-alikes, evaluation rows distractors
            assert (a.slices["distractors"] == (3 if split == "train" else 8)).all(), split
        _, labels = training_views(a.tokens, a.answer_mask)
        for i, row in enumerate(a.tokens):
            recs = records_of(family, task, row)
            assert len(recs) == 1 + int(a.slices["distractors"][i]) if family == "multikey" else len(recs) == 8
            q = int(asks[i])
            asked = questions_of(task, row, q)
            assert len({key for _, key, _ in asked}) == q == (row == V.QUERY).sum()  # distinct records
            expect = np.zeros(64, dtype=bool)
            for at, key, answer in asked:
                assert recs[key] == answer  # each question's answer is its own record's value
                expect[at + 2 + task.key_len : at + 2 + task.key_len + task.value_len] = True
            assert np.array_equal(a.answer_mask[i], expect)  # every answer labelled, nothing else
            assert np.array_equal(labels[i][labels[i] != -100], a.tokens[i][a.answer_mask[i]])
        pred = task.oracle(V, hide_answers(a.tokens, a.answer_mask), a.answer_mask)
        assert np.array_equal(pred[a.answer_mask], a.tokens[a.answer_mask]), split  # oracle 1.0


@pytest.mark.parametrize("family", sorted(KNOBS))
def test_the_first_training_question_follows_the_depth_and_the_others_land_anywhere(family: str) -> None:
    task = TASKS.get(family)(**KNOBS[family])
    a = generate(task, V, "train", 400, 64, seed=1, depth=0.0)
    firsts, others = [], []
    for row, q in zip(a.tokens, a.slices["questions"]):
        recs = list(records_of(family, task, row))
        asked = [key for _, key, _ in questions_of(task, row, int(q))]
        firsts.append(recs.index(asked[0]))
        others += [recs.index(k) for k in asked[1:]]
    if family == "multikey":  # depth places the block of records; the asked ones sit anywhere in it
        assert set(firsts) == set(others) == set(range(len(recs)))
        assert (a.tokens[:, 0] == V.NEEDLE).all()  # depth 0: the block starts the row
        return
    assert set(firsts) == {0}  # depth 0: the first record
    assert set(others) == set(range(1, len(recs)))  # the other questions ask records at every other slot


def test_single_question_rows_are_unchanged_by_the_knob() -> None:
    """train_queries only touches the training split: test rows equal those of the plain task."""
    for family, knobs in KNOBS.items():
        plain = {k: v for k, v in knobs.items() if not k.startswith("train_") or k == "train_len"}
        a = generate(TASKS.get(family)(**knobs), V, "test", 50, 64, seed=0)
        b = generate(TASKS.get(family)(**plain), V, "test", 50, 64, seed=0)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.answer_mask, b.answer_mask), family


@pytest.mark.parametrize("family,knobs,field", [
    ("kv_retrieval", {"train_queries": 0}, "train_queries"),
    ("kv_retrieval", {"train_queries": 9}, "train_queries"),  # more than the 8 records
    ("kv_retrieval", {"train_queries": 5}, "train_queries"),  # 8 records + 5 questions > 64 tokens
    ("multikey", {"train_queries": 4}, "train_queries"),  # 9 records of 5 tokens leave room for 3 questions
    ("multikey", {"train_queries": 0}, "train_queries"),
    ("multikey", {"train_distractors": -1}, "train_distractors"),
    ("multikey", {"train_queries": 6, "train_distractors": 3}, "train_queries"),  # 4 records
])
def test_bad_training_layouts_fail_naming_the_field(family: str, knobs: dict, field: str) -> None:
    base = {k: v for k, v in KNOBS[family].items() if not k.startswith("train_") or k == "train_len"}
    with pytest.raises(ValueError, match=field):
        TASKS.get(family)(**{**base, **knobs})


def test_mix_refuses_several_training_questions() -> None:
    with pytest.raises(ValueError, match="train_queries"):
        TASKS.get("mix")(train_len=64, components={"kv_retrieval": {"train_queries": 2}, "niah": {}})
