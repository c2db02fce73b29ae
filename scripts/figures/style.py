"""Common figure style: paper column widths, 7-9 pt fonts, the fixed palette, saving PNG + PDF.

Every figure function takes a :class:`Palette` built once from the whole results table, so a label
keeps one colour, one marker and one legend position across all figures of a call (zoology's rule:
never let colours shuffle between panels of the same paper).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (CI, clusters, ssh)

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

SINGLE_COL = 3.3  # inches: one column of a two-column paper
DOUBLE_COL = 7.0

# The NIAH heatmap colormap of gkamradt/LLMTest_NeedleInAHaystack (red -> yellow -> green).
NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])

FAMILY_ORDER = ("transformer", "sliding_window", "hybrid", "mamba", "gated_deltanet")
FAMILY_MARKERS = {"transformer": "o", "sliding_window": "v", "hybrid": "^", "mamba": "s", "gated_deltanet": "P",
                  "mamba2": "D", "gla": "X", "retention": "*"}
# Legend order of positional rules: these in the order they are usually introduced, then every other rule
# the positional registry knows (a new rule file needs no edit here), then rules only the rows name.
POS_ORDER = ("none", "alibi", "rope", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope")
STAGE_ORDER = ("pretrain", "extend", "duo_gates")

# Colour-blind-safe qualitative colours (Okabe-Ito, then tab10 leftovers), handed out in legend order;
# the pale yellow comes late because it is hard to see on white.
LABEL_COLORS = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#8c564b",
    "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#F0E442", "#1f77b4", "#2ca02c", "#d62728",
)
# One colour per cache policy (the ``cache_policy`` column; its budgets share it), fixed across sweeps.
CACHE_ORDER = ("full", "state", "sink_window", "duo", "quest")
CACHE_COLORS = {
    "full": "#000000", "sink_window": "#E69F00", "duo": "#009E73", "quest": "#CC79A7",
    "state": "#0072B2",
}
_EXTRA_CACHE_COLORS = ("#56B4E9", "#D55E00", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf")

# Log axes labelled 0.25, 1, 16 rather than 2.5x10^-1: easier to read at 7 pt.
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9, "lines.linewidth": 1.2,
    "lines.markersize": 3.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "legend.frameon": False,
    "figure.constrained_layout.use": True, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays editable in the paper
}


def _order_key(order: tuple[str, ...], value: object) -> tuple[int, str]:
    s = "" if value is None else str(value)
    return (order.index(s) if s in order else len(order), s)


def pos_order() -> tuple[str, ...]:
    """POS_ORDER, then the registered rules it does not list, in registration order."""
    from pipeline.results.identity import rule_functions

    return POS_ORDER + tuple(r for r in rule_functions() if r not in POS_ORDER)


def label_sort_key(row: dict) -> tuple:
    """Legend order from a row's identity columns: family, positional rule and factor, attention pattern,
    cache policy, then the label columns (budgets of one policy in their label order)."""
    factor = row.get("pos_factor")
    factor = float(factor) if isinstance(factor, (int, float)) and not math.isnan(factor) else 0.0
    return (_order_key(FAMILY_ORDER, row.get("model")), _order_key(pos_order(), row.get("pos_rule")), factor,
            str(row.get("attention")), _order_key(CACHE_ORDER, row.get("cache_policy")), str(row.get("cache")))


@dataclass
class Palette:
    """Label -> colour / marker, and the legend order, fixed for every figure of one call."""

    order: list[str]
    family: dict[str, str] = field(default_factory=dict)  # label -> model family
    cache_order: list[str] = field(default_factory=list)

    def color(self, label: str) -> str:
        # labels outside the table (a curve whose run has no rows) get a stable, if shared, colour
        i = self.order.index(label) if label in self.order else len(self.order) + zlib.crc32(label.encode())
        return LABEL_COLORS[i % len(LABEL_COLORS)]

    def marker(self, label: str) -> str:
        return FAMILY_MARKERS.get(self.family.get(label, ""), "D")

    def rank(self, label: str) -> int:
        return self.order.index(label) if label in self.order else len(self.order)

    def sort(self, labels: Iterable[str]) -> list[str]:
        return sorted(set(labels), key=lambda s: (self.rank(s), s))

    def cache_color(self, policy: object) -> str:
        """The colour of a cache policy (a ``cache_policy`` value)."""
        name = str(policy)
        if name in CACHE_COLORS:
            return CACHE_COLORS[name]
        extra = [c for c in self.cache_order if c not in CACHE_COLORS]
        i = extra.index(name) if name in extra else len(extra)
        return _EXTRA_CACHE_COLORS[i % len(_EXTRA_CACHE_COLORS)]


@contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(RC):
        yield


def stage_linestyle(stage: object, stages: Iterable[object]) -> str:
    """Fine-tuned (extend / duo_gates / finetuned=True) solid, zero-shot dashed, when both exist."""
    present = {str(s) for s in stages if s is not None and str(s) not in ("nan", "None")}
    if len(present) < 2:
        return "-"
    return "--" if str(stage) in ("pretrain", "False", "zero-shot") else "-"


MAX_SLUG = 80  # characters of a file name's stem: longer ones keep their start and a hash of the rest


def slug(text: object) -> str:
    """A file-name-safe version of a label: ``transformer/rope/full/sink_window(4+64)`` -> ..., at most
    MAX_SLUG characters (distinct texts stay distinct: the cut part is replaced by its hash)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "x"
    if len(name) > MAX_SLUG:
        name = f"{name[:MAX_SLUG - 9].rstrip('_')}_{zlib.crc32(name.encode()):08x}"
    return name


# What ``save`` writes; ``save_options`` changes it for one render (tests: PNG only, low dpi).
SAVE_OPTIONS: dict = {"formats": ("png", "pdf"), "dpi": 300}


@contextmanager
def save_options(formats: Iterable[str] = ("png", "pdf"), dpi: int = 300) -> Iterator[None]:
    old = dict(SAVE_OPTIONS)
    SAVE_OPTIONS.update(formats=tuple(formats), dpi=dpi)
    try:
        yield
    finally:
        SAVE_OPTIONS.update(old)


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.<fmt>`` for each format of SAVE_OPTIONS, close the figure, return the paths."""
    formats, dpi = SAVE_OPTIONS["formats"], SAVE_OPTIONS["dpi"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{slug(name)}.{fmt}"
        fig.savefig(path, dpi=dpi if fmt == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def legend_below(fig: Figure, handles: list, labels: list[str], ncol: int | None = None) -> None:
    """One legend under all panels (keeps the axes at full width in a narrow column)."""
    if not handles:
        return
    # As many columns as fit the figure width (7 pt text is ~0.05 in a character), so the saved
    # figure keeps its column width; the figure grows in height by the legend's rows instead.
    entry = 0.35 + 0.052 * max(len(s) for s in labels)
    ncol = ncol or max(1, min(len(labels), int(fig.get_figwidth() // entry)))
    fig.set_figheight(fig.get_figheight() + 0.16 * math.ceil(len(labels) / ncol) + 0.05)
    # "outside": constrained layout shrinks the axes to make room, so nothing overlaps the xlabel.
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=2.2, columnspacing=1.0)
