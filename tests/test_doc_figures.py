"""Every figure README.md and docs/ show has its source rows (docs/results/<study>/ with COMMANDS.md) and the
command that draws it from them (docs/figures.yaml); the slow test redraws each and compares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import doc_figures  # noqa: E402


def test_every_page_figure_has_its_rows_and_command():
    figures = doc_figures.load_manifest()
    assert not doc_figures.problems(figures), "\n".join(doc_figures.problems(figures))
    shown = doc_figures.page_images()
    assert "docs/accuracy_vs_length.png" in shown and "docs/figures/streaming_llm_nll_bos.png" in shown
    drawn = [f for f in figures if not f.pending]
    assert drawn, "no figure is drawn from committed rows"


def test_the_check_finds_an_unlisted_image_and_missing_rows(tmp_path):
    (tmp_path / "docs" / "results" / "s").mkdir(parents=True)
    (tmp_path / "docs" / "a.png").write_bytes(b"png")
    (tmp_path / "docs" / "b.png").write_bytes(b"png")
    (tmp_path / "README.md").write_text("![a](docs/a.png)\n![b](docs/b.png) ![web](https://x/y.png)\n")
    listed = [doc_figures.DocFigure("docs/a.png", "docs/results/s", "python scripts/plot.py docs/results/s "
                                    "--out {out}", "a.png")]
    found = doc_figures.problems(listed, tmp_path)
    assert any("docs/b.png (shown in README.md) is not in" in p for p in found)
    assert any("no rows under docs/results/s" in p for p in found) and any("COMMANDS.md" in p for p in found)
    (tmp_path / "docs" / "results" / "s" / "results.jsonl").write_text("{}\n")
    (tmp_path / "docs" / "results" / "s" / "COMMANDS.md").write_text("python train.py\n")
    listed[0].command = "python scripts/plot.py outputs/ --out {out}"  # not the committed rows
    found = doc_figures.problems(listed, tmp_path)
    assert len(found) == 2 and "must read docs/results/s" in found[1]


@pytest.mark.slow
@pytest.mark.parametrize("figure", [f.figure for f in doc_figures.load_manifest() if not f.pending])
def test_each_figure_is_what_its_rows_draw(figure, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    entry = next(f for f in doc_figures.load_manifest() if f.figure == figure)
    redrawn = mpimg.imread(doc_figures.regenerate(entry, tmp_path / "again.png"))
    committed = mpimg.imread(ROOT / figure)
    assert redrawn.shape == committed.shape
    assert float(np.abs(redrawn - committed).mean()) < 0.01
