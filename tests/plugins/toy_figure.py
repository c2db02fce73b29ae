"""A test-only figure kind: proves that a new figure is one file, found without editing any other.

tests/conftest.py imports every module of tests/plugins once; the parametrized contract test over
``FIGURES`` (tests/test_figures.py) then draws this kind as it draws the built-in ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
if SCRIPTS not in sys.path:  # scripts/figures imports as the top-level package ``figures``
    sys.path.insert(0, SCRIPTS)

from figures.base import FIGURES, Context  # noqa: E402
from figures.style import SINGLE_COL, paper_style, save  # noqa: E402


@FIGURES.register("toy_rows_per_label")
def draw_rows_per_label(ctx: Context) -> list[Path] | str:
    """Toy: how many ok rows each label has (a bar per label, in the palette's order and colours)."""
    import matplotlib.pyplot as plt

    ok = ctx.df[ctx.df["status"] == "ok"] if not ctx.df.empty else ctx.df
    if ok.empty:
        return "no ok rows"
    counts = ok.groupby("label").size()
    labels = ctx.palette.sort(counts.index)
    with paper_style():
        fig, ax = plt.subplots(figsize=(SINGLE_COL, 0.5 + 0.15 * len(labels)))
        ax.barh(range(len(labels)), [counts[lb] for lb in labels], color=[ctx.palette.color(lb) for lb in labels])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("ok rows")
        return save(fig, ctx.out, "toy_rows_per_label")
