"""The figure registry: a figure kind is one module of this package that registers a draw function.

    @FIGURES.register("heatmap")
    def draw(ctx: Context) -> list[Path] | str:
        '''NIAH accuracy by eval length x depth.'''   # the first line is the kind's --help text
        return plot_heatmaps(ctx.df, ctx.out, ctx.palette) or "no rows with a depth"

A draw function returns the files it wrote, or the reason the data cannot support it (skipped, never an
error). ``render`` finds every kind by importing this package's modules (the shared registry idiom,
registries/__init__.py); out-of-tree kinds come from $LONGCTX_PLUGINS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from registries import Registry

from .style import Palette

Draw = Callable[["Context"], "list[Path] | str"]
# infrastructure modules of the package: they register nothing
INFRASTRUCTURE = ("base", "render", "results", "stats", "style")
FIGURES: Registry[Draw] = Registry("figure kind", "--kind", package="figures", skip=INFRASTRUCTURE)


@dataclass
class Context:
    """What every draw function receives: the rows, where to write, the fixed palette, the run folders."""

    df: pd.DataFrame
    out: Path
    palette: Palette
    dirs: list[Path] = field(default_factory=list)  # searched for metrics.csv and gates.pt


def table_kind(fn: Callable[[pd.DataFrame, Path, Palette], list[Path]], needs: str, doc: str) -> Draw:
    """A draw function over the results table: skipped with a reason when no row supports it."""

    def draw(ctx: Context) -> list[Path] | str:
        if ctx.df.empty:
            return "no results rows"
        return fn(ctx.df, ctx.out, ctx.palette) or f"no data for it ({needs})"

    draw.__doc__ = doc
    return draw


def describe(name: str) -> str:
    """The first line of a kind's docstring, for --help."""
    doc = (FIGURES.get(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else name
