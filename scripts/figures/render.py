"""Every figure kind behind one call: ``render(df, out, kinds, dirs)`` draws what the data allows.

The kinds are the registry ``FIGURES`` (figures/base.py): every module of this package that registers
one, plus $LONGCTX_PLUGINS. A kind the data cannot support is skipped with the reason (no depth
column, no slice_hops, ...), never an error, so one ``plot.py`` call over a mixed sweep yields every
figure it can.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .base import FIGURES, Context
from .results import make_palette
from .style import Palette, save_options


def render(df: pd.DataFrame, out: str | Path, kinds: Iterable[str] | None = None,
           dirs: Iterable[str | Path] = (), palette: Palette | None = None,
           formats: Iterable[str] = ("png", "pdf"), dpi: int = 300) -> dict[str, list[Path] | str]:
    """Draw each kind; returns kind -> written paths, or the reason it was skipped."""
    kinds = list(kinds or FIGURES.names())
    unknown = [k for k in kinds if k not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure kinds {unknown}; allowed: {FIGURES.names()}")
    out = Path(out)
    done: dict[str, list[Path] | str] = {}
    palette = palette or make_palette(df)  # one palette for every figure of the call
    with save_options(formats, dpi):
        for kind in kinds:
            done[kind] = _draw_atomically(kind, df, out, palette, [Path(d) for d in dirs])
    return done


def _draw_atomically(kind: str, df: pd.DataFrame, out: Path, palette: Palette,
                     dirs: list[Path]) -> list[Path] | str:
    """Draw one kind into a scratch folder and move its files into ``out`` only when all of them were
    written: a failure leaves no partial figure set behind; it is reported as ``failed: ...``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{kind}-") as scratch:
        try:
            result = FIGURES.get(kind)(Context(df, Path(scratch), palette, dirs))
        except Exception as err:  # noqa: BLE001  (one broken kind never costs the others)
            import matplotlib.pyplot as plt

            plt.close("all")
            return f"failed: {type(err).__name__}: {err}"
        if isinstance(result, str):
            return result
        moved = []
        for path in result:
            target = out / Path(path).name
            os.replace(path, target)
            moved.append(target)
        return moved
