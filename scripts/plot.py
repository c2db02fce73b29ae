"""Paper figures from results: every figure type the data supports, PNG + PDF.

    python scripts/plot.py multirun/2026-11-26/12-00-00 [more run dirs / results.jsonl / .parquet]
        [--out figures] [--kind heatmap accuracy ...]

Kinds: every figure kind registered in scripts/figures (``python scripts/plot.py --help`` lists them with
what each draws; a new kind is one module there). Kinds without data are skipped with a message.
Reads local files only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):  # pipeline.results.rows (schema) and the figures package
    if p not in sys.path:
        sys.path.insert(0, p)

from figures import FIGURES, load_results, render  # noqa: E402
from figures.base import describe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    kinds = "\n".join(f"  {k:15s} {describe(k)}" for k in FIGURES.names())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"figure kinds:\n{kinds}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="run dirs, sweep dirs, results.jsonl, collected .parquet/.csv")
    ap.add_argument("--out", default="figures", help="output folder (default: figures)")
    ap.add_argument("--kind", nargs="+", choices=FIGURES.names(), default=None, metavar="KIND",
                    help="figure kinds to draw (default: all)")
    ap.add_argument("--format", nargs="+", default=["png", "pdf"], help="file formats (default: png pdf)")
    ap.add_argument("--dpi", type=int, default=300, help="PNG resolution (default: 300)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[Path] | str]:
    args = parse_args(argv)
    df = load_results(args.results)
    for b in df.attrs.get("bad_lines", []):
        print(f"warning: skipped unreadable line {b['path']}:{b['line']}"
              f"{' (torn last line)' if b['last'] else ''}")
    for b in df.attrs.get("bad_rows", []):
        print(f"warning: skipped row {b['path']}:{b['line']}: {b['reason']}")
    print(f"{len(df)} rows from {len(df.attrs.get('files', []))} file(s)")
    dirs = [p for p in args.results if Path(p).is_dir()]
    if not df.empty:  # the run dirs named in a collected table, where they still exist
        dirs += sorted({d for d in df["run_dir"].dropna().astype(str) if Path(d).is_dir()})
    done = render(df, args.out, args.kind, dirs=dirs, formats=args.format, dpi=args.dpi)
    for kind, result in done.items():
        if isinstance(result, str):
            print(f"  {kind:15s} {'FAILED' if result.startswith('failed:') else 'skipped'}: "
                  f"{result.removeprefix('failed: ')}")
        else:
            pngs = [p for p in result if p.suffix == ".png"]
            print(f"  {kind:15s} {len(pngs)} figure(s): {', '.join(p.name for p in pngs[:4])}"
                  f"{' ...' if len(pngs) > 4 else ''}")
    print(f"figures in {args.out}/ ({', '.join(args.format)})")
    failed = [k for k, r in done.items() if isinstance(r, str) and r.startswith("failed:")]
    if failed:
        sys.exit(f"error: {len(failed)} figure kind(s) failed ({', '.join(failed)}); the others were drawn")
    return done


if __name__ == "__main__":
    main()
