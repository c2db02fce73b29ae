"""DuoAttention gate map: the learned gate of every (layer, KV head), saved as ``gates.pt``.

A gate near 1 marks a retrieval head (full cache), near 0 a streaming head (sink + window); the
same red -> green colormap as the NIAH heatmap, fixed to 0..1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .base import FIGURES, Context
from .curves import run_labels
from .results import find_files, run_dir_of
from .style import NIAH_CMAP, SINGLE_COL, paper_style, save, slug


def load_gates(path: str | Path) -> np.ndarray:
    """The (n_layers, n_kv_heads) gates of ``models.duo.save_gates`` as a float array."""
    import torch  # only when a gates file exists: importing torch costs seconds

    g = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(g, dict):  # tolerate {"gates": tensor}
        g = g.get("gates", next(iter(g.values())))
    arr = np.asarray(g.detach().float().cpu().numpy() if hasattr(g, "detach") else g, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{path}: gates of shape {arr.shape}; expected (n_layers, n_kv_heads)")
    return arr


def plot_gates(gates: np.ndarray, out: Path, name: str, title: str = "") -> list[Path]:
    import matplotlib.pyplot as plt

    n_layers, n_heads = gates.shape
    with paper_style():
        fig, ax = plt.subplots(figsize=(SINGLE_COL, min(4.0, 1.2 + 0.18 * n_layers)))
        im = ax.imshow(gates, cmap=NIAH_CMAP, vmin=0.0, vmax=1.0, aspect="auto", origin="upper",
                       interpolation="nearest")
        ax.grid(False)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        if n_heads * n_layers <= 16 * 16:
            for (i, j), v in np.ndenumerate(gates):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5)
        # The deployed split depends on cache.sparsity / threshold; alpha > 0.5 is the paper's statistic.
        share = float((gates > 0.5).mean())
        ax.set_title(f"{title}\nalpha > 0.5 on {100 * share:.0f}% of heads".strip(), fontsize=6)
        cbar = fig.colorbar(im, ax=ax, pad=0.02, fraction=0.06)
        cbar.set_label("gate alpha")
        return save(fig, out, name)


@FIGURES.register("gates")
def draw_gates(ctx: Context) -> list[Path] | str:
    """DuoAttention gate map of every gates.pt under the run folders."""
    files = find_files(ctx.dirs, "gates.pt")
    if not files:
        return "no gates.pt under the given directories"
    labels = run_labels(ctx.df)
    paths: list[Path] = []
    skipped = []
    for f in files:
        run = run_dir_of(f)
        try:
            gates = load_gates(f)
        except Exception as err:  # truncated, not a tensor, wrong shape: one bad file never stops the rest
            logging.getLogger(__name__).warning("skipped unreadable %s: %s", f, f"{type(err).__name__}: {err}"[:200])
            skipped.append(f)
            continue
        paths += plot_gates(gates, ctx.out, f"gates_{slug(run.name)}", title=labels.get(str(run), run.name))
    return paths or f"no readable gates.pt ({len(skipped)} unreadable)"
