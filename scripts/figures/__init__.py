"""Paper figures from results rows: one module per figure type, a common style, one loader.

    from figures import load_results, render
    df = load_results(["multirun/2026-11-26/12-00-00"])
    render(df, "figures/")
"""

from .render import KINDS, render
from .results import load_results, make_palette

__all__ = ["KINDS", "load_results", "make_palette", "render"]
