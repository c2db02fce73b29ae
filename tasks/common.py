"""Vectorised building blocks shared by the task generators (no Python loop over examples).

Every helper works on a batch: ``n`` rows, per-row random draws from one ``np.random.Generator``.
"""

from __future__ import annotations

import numpy as np

from tasks.vocab import N_SPECIAL, Vocab


def block_starts(depths: np.ndarray, context: int, width: int) -> np.ndarray:
    """Starts (n, m) of m non-overlapping blocks of ``width`` tokens inside ``[0, context)``.

    Block j of a row lies at depth ``depths[:, j]`` in [0, 1]: with r its rank among the row's
    depths, it starts at ``rint(d * (context - m * width)) + r * width``. Rounding is monotone, so
    consecutive blocks are at least ``width`` apart and never overlap; depth 0 is the first token
    and depth 1 ends the last block at the end of the context. With m = 1 this is the NIAH rule
    ``rint(d * (context - width))``.
    """
    n, m = depths.shape
    order = np.argsort(depths, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(m), (n, m)), axis=1)
    return np.rint(depths * (context - m * width)).astype(np.int64) + rank * width


def place_blocks(tokens: np.ndarray, starts: np.ndarray, blocks: np.ndarray) -> None:
    """Write blocks (n, m, w) into tokens (n, L) at starts (n, m), in place."""
    n, m, w = blocks.shape
    length = tokens.shape[1]
    flat = (np.arange(n)[:, None, None] * length + starts[:, :, None] + np.arange(w)).ravel()
    tokens.reshape(-1)[flat] = blocks.ravel()  # one flat scatter: cheaper than 3-D fancy indexing


def draw_excluding(rng: np.random.Generator, size: int, excluded: np.ndarray,
                   shape: tuple[int, int]) -> np.ndarray:
    """Offsets in [0, size) drawn uniformly per row, never equal to that row's ``excluded`` (n, e).

    ``excluded`` must hold distinct offsets per row. Draw from the size - e allowed values, then
    step over each excluded offset in ascending order (the classic rank-to-value shift).
    """
    n, e = excluded.shape
    out = rng.integers(0, size - e, size=shape, dtype=np.int64)
    ex = np.sort(excluded, axis=1)
    for j in range(e):  # loop over the few excluded values, vectorised over rows and draws
        out += out >= ex[:, j : j + 1]
    return out


def distinct_codes(rng: np.random.Generator, n: int, space: int, k: int) -> np.ndarray:
    """(n, k) integers in [0, space), distinct within a row, in random order.

    Sorting k draws from [0, space - k] and adding 0..k-1 makes them strictly increasing (hence
    distinct) without a (n, space) argsort, so the space can be huge (multi-token keys).
    """
    if k > space:
        raise ValueError(f"cannot draw {k} distinct codes from a space of {space}")
    codes = np.sort(rng.integers(0, space - k + 1, size=(n, k), dtype=np.int64), axis=1) + np.arange(k)
    return np.take_along_axis(codes, rng.random((n, k)).argsort(axis=1), axis=1)


def digits(codes: np.ndarray, base: int, width: int) -> np.ndarray:
    """Base-``base`` digits of codes (...,) as (..., width), most significant first."""
    powers = base ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (codes[..., None] // powers) % base


def depth_matrix(rng: np.random.Generator, n: int, m: int, first: float | None) -> np.ndarray:
    """(n, m) uniform depths; column 0 (the target) fixed to ``first`` when given."""
    d = rng.random((n, m))
    if first is not None:
        d[:, 0] = float(first)
    return d


def check_depth(depth: float | None) -> None:
    if depth is not None and not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth={depth} must be in [0, 1]")


# Question openers: the special token that starts each family's question (mix tells rows apart by it).
def row_signature(hidden_row: np.ndarray, mask_row: np.ndarray) -> tuple[int, int, int]:
    """(opener, tokens between opener and ANSWER, answer tokens) of one example.

    The opener is the nearest special token before the ANSWER marker that precedes the first
    answer, stepping over CONTEXT (that marker may sit inside a question). Rows whose first answer
    does not follow an ANSWER marker (MQAR) get opener -1, between -1.
    """
    p = int(mask_row.argmax())
    a = int(mask_row.sum())
    if hidden_row[p - 1] != Vocab.ANSWER:
        return (-1, -1, a)
    j = p - 2
    while j >= 0 and (hidden_row[j] >= N_SPECIAL or hidden_row[j] == Vocab.CONTEXT):
        j -= 1
    return (int(hidden_row[j]) if j >= 0 else -1, p - 2 - j, a)


def question_counts(rng: np.random.Generator, n: int, most: int) -> np.ndarray:
    """Questions per row, uniform in 1..``most`` (training rows: several questions, and the
    one-question evaluation layout among them); all 1, drawing nothing, when ``most`` is 1."""
    return np.ones(n, dtype=np.int64) if most == 1 else rng.integers(1, most + 1, size=n)
