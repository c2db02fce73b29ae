"""Regenerate the figures of README.md and docs/ from the rows committed under docs/results/ (docs/figures.yaml).

    python scripts/doc_figures.py            # redraw every figure whose rows are committed
    python scripts/doc_figures.py --check    # only check: every page's image listed, its rows and COMMANDS.md there

Each entry of docs/figures.yaml names a figure, the rows it is drawn from (a folder of JSONL rows with a
COMMANDS.md saying how they were produced) and the command that draws it into ``{out}``. A figure whose
rows are not committed yet carries ``pending: <why>`` and is left as it is (and listed as such).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "docs" / "figures.yaml"
PAGES = ("README.md", "docs/*.md")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.(?:png|svg|jpg|pdf))\)")


@dataclass
class DocFigure:
    figure: str  # repository-relative path of the image a page shows
    rows: str  # the folder of committed rows it is drawn from
    command: str  # draws it into {out}
    file: str  # the name the command writes into {out}
    pending: str | None = None  # why its rows are not committed yet

    def argv(self, out: Path) -> list[str]:
        argv = shlex.split(self.command.replace("{out}", str(out)))
        return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def load_manifest(path: Path = MANIFEST) -> list[DocFigure]:
    entries = yaml.safe_load(path.read_text())
    return [DocFigure(figure=e["figure"], rows=e["rows"], command=e["command"],
                      file=e.get("file") or Path(e["figure"]).name, pending=e.get("pending")) for e in entries]


def page_images(root: Path = ROOT) -> dict[str, list[str]]:
    """Repository-relative image path -> the pages showing it (links resolved against each page's folder)."""
    out: dict[str, list[str]] = {}
    for pattern in PAGES:
        for page in sorted(root.glob(pattern)):
            for link in IMAGE.findall(page.read_text()):
                if "://" in link:
                    continue
                path = (page.parent / link).resolve().relative_to(root.resolve()).as_posix()
                out.setdefault(path, []).append(page.relative_to(root).as_posix())
    return out


def problems(figures: list[DocFigure], root: Path = ROOT) -> list[str]:
    """What is wrong with the list: a page image not in it, a figure without its rows, command or COMMANDS.md."""
    found = []
    listed = {f.figure for f in figures}
    for image, pages in page_images(root).items():
        if image not in listed:
            found.append(f"{image} (shown in {', '.join(pages)}) is not in docs/figures.yaml")
    for f in figures:
        if not (root / f.figure).is_file():
            found.append(f"{f.figure}: no such file")
        if "{out}" not in f.command or f.rows not in shlex.split(f.command):
            found.append(f"{f.figure}: its command must read {f.rows} and write into {{out}}: {f.command}")
        if f.pending:
            continue
        rows = root / f.rows
        if not any(rows.glob("**/*.jsonl")):
            found.append(f"{f.figure}: no rows under {f.rows} (or say why with `pending:`)")
        if not (rows / "COMMANDS.md").is_file():
            found.append(f"{f.figure}: {f.rows}/COMMANDS.md (the commands that produced the rows) is missing")
    return found


def regenerate(f: DocFigure, target: Path, root: Path = ROOT) -> Path:
    """Run the figure's command into a scratch folder and copy what it drew to ``target``."""
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.run(f.argv(Path(scratch)), cwd=root, capture_output=True, text=True)
        drawn = Path(scratch) / f.file
        if proc.returncode != 0 or not drawn.is_file():
            raise RuntimeError(f"{f.figure}: `{f.command}` exited {proc.returncode} without writing {f.file}:\n"
                               f"{(proc.stdout + proc.stderr)[-2000:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check docs/figures.yaml against the pages and rows")
    args = ap.parse_args(argv)
    figures = load_manifest()
    found = problems(figures)
    for p in found:
        print(f"error: {p}")
    for f in figures:
        if f.pending:
            print(f"pending  {f.figure}: {f.pending}")
        elif not args.check and not found:
            print(f"drawn    {regenerate(f, ROOT / f.figure).relative_to(ROOT)} from {f.rows}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
