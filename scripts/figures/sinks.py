"""The attention-sink probe (StreamingLLM, Fig. 2): attention mass on the first token per layer and head.

Reads the ``task == "sinks"`` rows of ``eval=sinks``: a heatmap (layers x heads) of the mean softmax
weight that queries put on token 0, beside each layer's mean and the uniform-attention reference
(what a head that spreads evenly over its causal prefix would give).

    python scripts/figures/sinks.py outputs/eval/<date>/<time> [--out figures]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make ``figures`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from figures.base import FIGURES, table_kind
    from figures.style import DOUBLE_COL, Palette, paper_style, plt, save, slug
else:
    from .base import FIGURES, table_kind
    from .style import DOUBLE_COL, Palette, paper_style, plt, save, slug


def plot_sinks(df: pd.DataFrame, out: str | Path, palette: Palette | None = None) -> list[Path]:
    if "sink_mass" not in df.columns or "task" not in df.columns:
        return []
    rows = df[(df["task"] == "sinks") & df["sink_mass"].notna()]
    paths: list[Path] = []
    stems = {run: _stem(probe.iloc[0]) for run, probe in rows.groupby("run_id", sort=True)}
    for run, probe in rows.groupby("run_id", sort=True):
        n_layers, n_heads = int(probe["layer"].max()) + 1, int(probe["head"].max()) + 1
        grid = np.full((n_layers, n_heads), np.nan)
        grid[probe["layer"].astype(int), probe["head"].astype(int)] = probe["sink_mass"]
        uniform = float(probe["uniform_mass"].iloc[0])
        with paper_style():
            fig, (ax, bx) = plt.subplots(1, 2, figsize=(DOUBLE_COL * 0.75, 0.6 + 0.35 * n_layers + 1.2),
                                         gridspec_kw={"width_ratios": [max(n_heads, 2), 3]})
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5, color="w" if v < 0.6 else "k")
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(n_heads))
            ax.set_yticks(range(n_layers))
            ax.grid(False)
            fig.colorbar(im, ax=ax, label="attention on token 0")
            bx.plot(np.nanmean(grid, axis=1), range(n_layers), marker="o", label="mean over heads")
            bx.axvline(uniform, color="0.4", linestyle=":", label="uniform attention")
            bx.set_xlim(0, 1)
            bx.set_ylim(n_layers - 0.5, -0.5)
            bx.set_yticks(range(n_layers))
            bx.set_xlabel("attention on token 0")
            bx.legend(fontsize=6)
            first = probe.iloc[0]
            fig.suptitle(f"attention sinks: {first.get('model')} {run}, L={first.get('eval_len')}", fontsize=7)
            stem = stems[run] if list(stems.values()).count(stems[run]) == 1 else f"{stems[run]}_{run}"
            paths += save(fig, out, f"attention_sinks_{slug(stem)}")
    return paths


def _stem(row: pd.Series) -> str:
    """A file name from the model, not the run id (eval.py's are random): ``transformer_L128_start2``."""
    start = row.get("start_token")
    start = f"_start{int(start)}" if start is not None and not pd.isna(start) else ""
    made = row.get("imported_from")
    length = row.get("train_len")
    length = int(length) if isinstance(length, (int, float)) and not pd.isna(length) else length
    made = str(made).removeprefix("hf:") if isinstance(made, str) and made else f"L{length}"
    return f"{row.get('model')}_{made}{start}"


FIGURES.register("sinks")(table_kind(plot_sinks, "eval=sinks rows",
                                     "Attention mass on the first token per layer and head (eval=sinks)."))


def main(argv: list[str] | None = None) -> list[Path]:
    import argparse

    from figures import load_results

    ap = argparse.ArgumentParser(description="attention-sink figure from eval=sinks rows")
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", default="figures")
    args = ap.parse_args(argv)
    paths = plot_sinks(load_results(args.results), args.out)
    print("\n".join(str(p) for p in paths) or "no eval=sinks rows found")
    return paths


if __name__ == "__main__":
    main()
