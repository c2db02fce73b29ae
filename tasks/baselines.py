"""Prompt-only shortcut baselines: what a skeptical reviewer tries before believing a task measures a skill.

A baseline sees what an oracle sees (the row with its answers hidden) plus a ``Prior`` learned
from training rows (the most frequent training answer, the token kinds answers come from), and
never the answer. It returns predictions at the answer positions, like ``Task.oracle``. Each
family states a chance floor (``Task.chance_floor``); on a family's default config no baseline
should beat it (``tests/test_baselines.py``), and ``scripts/baselines.py`` prints the table a paper
can report next to the models.

Generic baselines (every family): ``constant`` (the most frequent training answer),
``most_frequent`` (the prompt's most frequent tokens of the answers' kind), ``first_value`` /
``last_value`` (the first / last tokens of that kind in the context), ``after_last_key`` (the tokens
of that kind following the last key token of the context). Family baselines: structural guesses
that ignore the question (per-position key mode, first chain, elimination, world lookup, a recency
window for aggregation tasks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from tasks.base import Task, TaskArrays, hide_answers
from tasks.dataset import generate
from tasks.vocab import Vocab

OPENERS = (Vocab.QUERY, Vocab.HOP, Vocab.FREQ, Vocab.COUNT, Vocab.COPY, Vocab.REVERSE)


@dataclass
class Prior:
    """What a baseline may know besides the prompt: facts of the training distribution."""

    answer: np.ndarray  # the most frequent training answer (its tokens)
    kinds: list[range]  # vocabulary ranges the training answers come from

    @classmethod
    def fit(cls, vocab: Vocab, train: TaskArrays) -> Prior:
        answers = [tuple(t[m]) for t, m in zip(train.tokens, train.answer_mask)]
        top = Counter(answers).most_common(1)[0][0]
        used = np.unique(train.tokens[train.answer_mask])
        kinds = [r for r in (vocab.keys, vocab.values, vocab.filler) if ((used >= r.start) & (used < r.stop)).any()]
        return cls(np.asarray(top, dtype=np.int64), kinds)

    def of_kind(self, tokens: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(tokens), dtype=bool)
        for r in self.kinds:
            keep |= (tokens >= r.start) & (tokens < r.stop)
        return keep


Baseline = Callable[[Task, Vocab, np.ndarray, np.ndarray, Prior], np.ndarray]


def context_end(row: np.ndarray, mask_row: np.ndarray) -> int:
    """Where the context stops: the last question opener before the first answer (or the token
    just before the first answer when the question has no opener, as in MQAR)."""
    p = int(mask_row.argmax())
    openers = np.flatnonzero(np.isin(row[:p], OPENERS))
    return int(openers[-1]) if len(openers) else p - 1


def fill(out_row: np.ndarray, mask_row: np.ndarray, guess: np.ndarray | list[int]) -> None:
    """Write ``guess`` at the answer positions, padded with its first token (or PAD)."""
    a = int(mask_row.sum())
    guess = np.asarray(list(guess)[:a], dtype=np.int64)
    pad = guess[0] if len(guess) else Vocab.PAD
    out_row[mask_row] = np.concatenate([guess, np.full(a - len(guess), pad, dtype=np.int64)])


def per_row(rule: Callable[[np.ndarray, np.ndarray, int, Prior], list[int] | np.ndarray]) -> Baseline:
    """A baseline from a rule on one row: (hidden row, answer mask, context end, prior) -> answer."""

    def baseline(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
        out = hidden.copy()
        for i, (row, m) in enumerate(zip(hidden, mask)):
            fill(out[i], m, rule(row, m, context_end(row, m), prior))
        return out

    baseline.__doc__ = rule.__doc__
    return baseline


# ---- generic ----------------------------------------------------------------------------------

@per_row
def constant(row, m, end, prior):
    """The most frequent training answer, whatever the prompt."""
    return prior.answer


@per_row
def most_frequent(row, m, end, prior):
    """The prompt's most frequent tokens of the answers' kind, most frequent first."""
    ctx = row[:end][prior.of_kind(row[:end])]
    return [t for t, _ in Counter(ctx.tolist()).most_common()]


@per_row
def first_value(row, m, end, prior):
    """The first tokens of the answers' kind in the context."""
    return row[:end][prior.of_kind(row[:end])]


@per_row
def last_value(row, m, end, prior):
    """The last tokens of the answers' kind in the context."""
    ctx = row[:end][prior.of_kind(row[:end])]
    return ctx[-int(m.sum()):] if len(ctx) else ctx


@per_row
def middle_value(row, m, end, prior):
    """The middle answer-sized group of the answers' kind in the context (the middle record's value
    where records hold the only such tokens): the positional guess for depth 0.5."""
    ctx = row[:end][prior.of_kind(row[:end])]
    a = int(m.sum())
    groups = len(ctx) // a
    return ctx[(groups // 2) * a : (groups // 2 + 1) * a] if groups else ctx


GENERIC: dict[str, Baseline] = {"constant": constant, "most_frequent": most_frequent,
                                "first_value": first_value, "last_value": last_value,
                                "middle_value": middle_value}


def after_last_key(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """The tokens of the answers' kind that follow the last key token of the context."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        ctx = row[:end]
        keys = np.flatnonzero((ctx >= vocab.keys.start) & (ctx < vocab.keys.stop))
        after = ctx[keys[-1] + 1 :] if len(keys) else ctx[:0]
        fill(out[i], m, after[prior.of_kind(after)])
    return out


GENERIC["after_last_key"] = after_last_key


# ---- family-specific --------------------------------------------------------------------------

def records(row: np.ndarray, end: int, key_len: int, value_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys (r, key_len), values (r, value_len)) of the NEEDLE records before ``end``."""
    starts = np.flatnonzero(row[:end] == Vocab.NEEDLE)
    starts = starts[starts + key_len + value_len < end]
    at = starts[:, None] + 1 + np.arange(key_len + value_len)[None, :]
    block = row[at] if len(starts) else np.zeros((0, key_len + value_len), dtype=np.int64)
    return block[:, :key_len], block[:, key_len:]


def position_mode(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Multikey: vote per key position over all records, answer the record closest to the vote."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        keys, vals = records(row, context_end(row, m), task.key_len, task.value_len)
        if not len(keys):
            continue
        mode = [Counter(col.tolist()).most_common(1)[0][0] for col in keys.T]
        fill(out[i], m, vals[int(np.argmin((keys != np.asarray(mode)).sum(axis=1)))])
    return out


def question_key(row: np.ndarray, end: int, key_len: int) -> np.ndarray:
    """The key the row's (last) question asks: the tokens after its QUERY opener."""
    return row[end + 1 : end + 1 + key_len]  # context_end is the question's opener


def key_subset_lookup(positions: tuple[int, ...], pick: str) -> Baseline:
    """Records whose key matches the question at ``positions`` only; the first (or last) of them."""

    def baseline(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
        out = hidden.copy()
        cols = list(positions)
        for i, (row, m) in enumerate(zip(hidden, mask)):
            end = context_end(row, m)
            keys, vals = records(row, end, task.key_len, task.value_len)
            hit = np.flatnonzero((keys[:, cols] == question_key(row, end, task.key_len)[cols]).all(axis=1))
            if len(hit):
                fill(out[i], m, vals[hit[0] if pick == "first" else hit[-1]])
        return out

    baseline.__doc__ = f"Key-subset lookup: match key positions {positions} only, the {pick} matching record."
    return baseline


def rarest_key_token(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """The question's key token that is rarest among the records' keys; the first record holding it."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        keys, vals = records(row, end, task.key_len, task.value_len)
        key = question_key(row, end, task.key_len)
        if not len(keys) or not len(key):
            continue
        counts = [(keys == t).sum() for t in key]
        t = key[int(np.argmin([c if c else np.inf for c in counts]))]
        hit = np.flatnonzero((keys == t).any(axis=1))
        if len(hit):
            fill(out[i], m, vals[hit[0]])
    return out


def fewest_matches(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """The proper key subset that matches the fewest records (at least one); the first of them."""
    out = hidden.copy()
    subsets = proper_subsets(task.key_len)
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        keys, vals = records(row, end, task.key_len, task.value_len)
        key = question_key(row, end, task.key_len)
        hits = [np.flatnonzero((keys[:, list(s)] == key[list(s)]).all(axis=1)) for s in subsets]
        hits = [h for h in hits if len(h)]
        if hits:
            fill(out[i], m, vals[min(hits, key=len)[0]])
    return out


def proper_subsets(key_len: int) -> list[tuple[int, ...]]:
    return [s for r in range(1, key_len) for s in combinations(range(key_len), r)]


def key_lookups(task: Task) -> dict[str, Baseline]:
    """Every partial-key lookup a model could learn instead of matching the whole key (record tasks
    whose keys have several tokens): each proper subset of key positions with the first and the
    last matching record, the question's rarest key token, and the most selective subset."""
    if getattr(task, "key_len", 1) < 2 or not hasattr(task, "value_len"):
        return {}
    out: dict[str, Baseline] = {}
    for s in proper_subsets(task.key_len):
        name = "key_" + "".join(map(str, s))
        out[name] = key_subset_lookup(s, "first")
        out[name + "_last"] = key_subset_lookup(s, "last")
    return {**out, "rarest_key_token": rarest_key_token, "fewest_matches": fewest_matches}


def elimination(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """MQAR: at each query, the first context value whose key has not been queried yet (query-free:
    the asked key is not read, the keys of earlier queries are)."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        pairs = task.pairs(vocab, row)
        asked: set[int] = set()
        for pos in np.flatnonzero(m):
            left = [v for k, v in pairs if k not in asked]
            out[i, pos] = left[0] if left else pairs[0][1]
            asked.add(int(row[pos - 1]))
    return out


def last_pair(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """MQAR: the most recent pair's value at every query (a recency guess)."""
    out = hidden.copy()
    last = [task.pairs(vocab, row)[-1][1] for row in hidden]
    out[mask] = np.repeat(last, mask.sum(axis=1))
    return out


def _chain(row: np.ndarray, end: int, start: int) -> list[int]:
    assigned = {int(row[s + 2]): int(row[s + 1]) for s in np.flatnonzero(row[:end] == Vocab.ASSIGN)}
    chain, cur = [], start
    while cur in assigned and len(chain) <= len(assigned):
        cur = assigned[cur]
        chain.append(cur)
    return chain


def _value_statements(row: np.ndarray, end: int, vocab: Vocab) -> np.ndarray:
    s = np.flatnonzero(row[:end] == Vocab.ASSIGN)
    return s[(row[s + 2] >= vocab.values.start) & (row[s + 2] < vocab.values.stop)]


def first_chain(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Variable tracking: follow the chain that starts first in the context, question unread."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        heads = _value_statements(row, end, vocab)
        fill(out[i], m, _chain(row, end, int(row[heads[0] + 2])) if len(heads) else [])
    return out


def last_chain(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Variable tracking: follow the chain whose value is assigned last."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        heads = _value_statements(row, end, vocab)
        fill(out[i], m, _chain(row, end, int(row[heads[-1] + 2])) if len(heads) else [])
    return out


def _facts(row: np.ndarray, end: int) -> list[tuple[int, int]]:
    return [(int(row[s + 1]), int(row[s + 2])) for s in np.flatnonzero(row[:end] == Vocab.NEEDLE)]


def world_lookup(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Conflict: the world's value of the asked key, the context ignored (pure memorisation)."""
    out = hidden.copy()
    p = mask.argmax(axis=1)
    rows = np.arange(len(hidden))
    out[rows, p] = task.world(vocab)[hidden[rows, p - 2] - vocab.keys.start]
    return out


def disagreeing_fact(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Conflict: the value of the first context fact that contradicts the world (key unread); the
    world's value when the context asserts nothing."""
    out = world_lookup(task, vocab, hidden, mask, prior)
    world = task.world(vocab)
    for i, (row, m) in enumerate(zip(hidden, mask)):
        facts = _facts(row, int(m.argmax()))
        odd = [v for k, v in facts if world[k - vocab.keys.start] != v]
        if odd or facts:
            fill(out[i], m, [(odd or [v for _, v in facts])[0]])
    return out


def first_fact(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Conflict: the value of the first context fact (key unread); the world's value when none."""
    out = world_lookup(task, vocab, hidden, mask, prior)
    for i, (row, m) in enumerate(zip(hidden, mask)):
        facts = _facts(row, int(m.argmax()))
        if facts:
            fill(out[i], m, [facts[0][1]])
    return out


def recent_count(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Counting: twice the marks in the second half of the context (a recency window)."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        count = 2 * int((row[end - end // 2 : end] == Vocab.MARK).sum())
        fill(out[i], m, [vocab.values.start + min(count, len(vocab.values) - 1)])
    return out


def recent_frequent(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Frequent tokens: the most frequent tokens of the second half of the context."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        fill(out[i], m, [t for t, _ in Counter(row[end - end // 2 : end].tolist()).most_common()])
    return out


def first_seen(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """Frequent tokens: the first distinct tokens of the context."""
    out = hidden.copy()
    for i, (row, m) in enumerate(zip(hidden, mask)):
        end = context_end(row, m)
        fill(out[i], m, list(dict.fromkeys(row[:end].tolist())))
    return out


FAMILY: dict[str, dict[str, Baseline]] = {
    "multikey": {"position_mode": position_mode},
    "mqar": {"elimination": elimination, "last_pair": last_pair},
    "variable_tracking": {"first_chain": first_chain, "last_chain": last_chain},
    "conflict": {"world_lookup": world_lookup, "disagreeing_fact": disagreeing_fact, "first_fact": first_fact},
    "counting": {"recent_count": recent_count},
    "frequent_tokens": {"recent_frequent": recent_frequent, "first_seen": first_seen},
}
KEYED = ("multikey", "niah")  # NEEDLE key value records: partial-key lookups apply
SKILL: dict[str, set[str]] = {"frequent_tokens": {"most_frequent"}}  # generic rules that are the task itself


def baselines_for(task: Task) -> dict[str, Baseline]:
    """Every shortcut baseline that applies to ``task``'s family."""
    generic = {k: v for k, v in GENERIC.items() if k not in SKILL.get(task.name, set())}
    keyed = key_lookups(task) if task.name in KEYED else {}
    return {**generic, **FAMILY.get(task.name, {}), **keyed, **task.shortcuts()}


def score(arrays: TaskArrays, preds: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
    """(exact match, token accuracy) over the answers (of the examples ``rows``; None: all)."""
    mask = arrays.answer_mask if rows is None else arrays.answer_mask[rows]
    right = ((preds == arrays.tokens) if rows is None else (preds[rows] == arrays.tokens[rows])) | ~mask
    return float(right.all(axis=1).mean()), float((right & mask).sum() / max(1, mask.sum()))


_PRIORS: dict[tuple, Prior] = {}


def fitted_prior(task: Task, vocab: Vocab, seed: int = 0, n_prior: int = 2048) -> Prior:
    """The prior of ``task`` fit on ``n_prior`` training rows at its training length (cached)."""
    key = (repr(task), vocab.size, seed, n_prior)
    if key not in _PRIORS:
        _PRIORS[key] = Prior.fit(vocab, generate(task, vocab, "train", n_prior, task.train_len, seed))
    return _PRIORS[key]


def baseline_predictions(task: Task, vocab: Vocab, arrays: TaskArrays, prior: Prior) -> dict[str, np.ndarray]:
    """Every prompt-only baseline's predictions on the examples of one cell (the oracle excluded)."""
    hidden = hide_answers(arrays.tokens, arrays.answer_mask)
    return {name: fn(task, vocab, hidden, arrays.answer_mask, prior) for name, fn in baselines_for(task).items()}


def has_floor(task: Task) -> bool:
    """Whether the baselines apply: the synthetic token families (and mixes of them), not text tasks."""
    return type(task).chance_floor is not Task.chance_floor


def cell_floor(task: Task, vocab: Vocab, arrays: TaskArrays, seed: int = 0,
               groups: list[np.ndarray] | None = None) -> list[tuple[float, str]]:
    """The floor of each group of a cell's examples (None: all of them): the best prompt-only
    baseline's exact match on exactly those examples, and its name. Paired with a model's accuracy on
    the same examples, so "above the floor" compares like with like."""
    preds = baseline_predictions(task, vocab, arrays, fitted_prior(task, vocab, seed))
    out = []
    for rows in groups if groups is not None else [np.arange(len(arrays.tokens))]:
        acc = {name: score(arrays, p, rows)[0] for name, p in preds.items()}
        best = max(acc, key=acc.get)
        out.append((acc[best], best))
    return out


def run_baselines(task: Task, vocab: Vocab, length: int, n: int = 512, seed: int = 0,
                  depth: float | None = None, n_prior: int = 2048) -> list[dict]:
    """One row per baseline (and the oracle) on ``n`` test examples of one cell; the prior is fit on
    ``n_prior`` training examples at the training length."""
    prior = fitted_prior(task, vocab, seed, n_prior)
    arrays = generate(task, vocab, "test", n, length, seed, depth)
    hidden = hide_answers(arrays.tokens, arrays.answer_mask)
    floor = task.cell_floor(vocab, length, depth)
    rows = []
    for name, fn in {"oracle": None, **baselines_for(task)}.items():
        preds = task.oracle(vocab, hidden, arrays.answer_mask) if fn is None else fn(
            task, vocab, hidden, arrays.answer_mask, prior)
        acc, tok = score(arrays, preds)
        rows.append({"task": task.name, "baseline": name, "eval_len": length, "depth": depth, "seed": seed,
                     "n_examples": n, "accuracy": acc, "token_accuracy": tok,
                     "floor": floor["accuracy"], "floor_token_accuracy": floor.get("token_accuracy")})
    return rows
