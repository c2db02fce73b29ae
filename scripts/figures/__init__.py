"""Paper figures from results rows: one module per figure type, a common style, one loader.

    from figures import load_results, render
    df = load_results(["multirun/2026-11-26/12-00-00"])
    render(df, "figures/")

A new figure kind is one module here that registers a draw function with ``FIGURES`` (figures/base.py).
"""

from .base import FIGURES, Context
from .render import render
from .results import load_results, make_palette

__all__ = ["FIGURES", "Context", "load_results", "make_palette", "render"]
