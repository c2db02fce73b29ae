"""Token vocabulary layout shared by every task: special markers, then key, value, filler ranges.

With ``size=256``: specials 0..15, keys 16..105, values 106..195, filler 196..255.
Keys, values and filler never overlap, so an answer is never confused with the haystack.
"""

from __future__ import annotations

from dataclasses import dataclass

N_SPECIAL = 16


@dataclass(frozen=True)
class Vocab:
    size: int = 256

    PAD = 0  # also the placeholder for hidden answers given to oracles
    BOS = 1
    EOS = 2
    SEP = 3  # separates records (documents, pairs)
    NEEDLE = 4  # opens a needle: NEEDLE key... value...
    QUERY = 5  # opens a question: QUERY key... ANSWER
    ANSWER = 6  # the answer follows
    CONTEXT = 7  # "according to the context" (conflict task)
    MARK = 8  # a countable marker (counting task)
    REVERSE = 9  # copy task: reproduce reversed
    COPY = 10  # copy task: reproduce as is
    ASSIGN = 11  # variable tracking: VAR = value
    HOP = 12  # opens a multi-hop question (variable tracking: HOP value ANSWER)
    FREQ = 13  # frequent-tokens question
    COUNT = 14  # counting question
    UNUSED = 15

    def __post_init__(self) -> None:
        if self.size < N_SPECIAL + 24:
            raise ValueError(f"vocab_size={self.size} must be >= {N_SPECIAL + 24} (specials + 3 ranges of 8)")

    @property
    def _span(self) -> int:
        return (self.size - N_SPECIAL) * 3 // 8

    @property
    def keys(self) -> range:
        return range(N_SPECIAL, N_SPECIAL + self._span)

    @property
    def values(self) -> range:
        return range(self.keys.stop, self.keys.stop + self._span)

    @property
    def filler(self) -> range:
        return range(self.values.stop, self.size)
