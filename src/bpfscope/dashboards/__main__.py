"""python -m bpfscope.dashboards [--out DIR] [--check]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import check, write


def _default_dir() -> Path:
    # In a source checkout (src layout) the dashboards live at <repo>/grafana/dashboards.
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():
        return repo / "grafana" / "dashboards"
    return Path.cwd() / "grafana" / "dashboards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpfscope.dashboards",
                                     description="Generate bpfscope's Grafana dashboards (JSON) from Python.")
    parser.add_argument("--out", type=Path, default=None, help="directory of the JSON files "
                        "(default: grafana/dashboards of this checkout)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a JSON file is missing or differs from the generated one")
    args = parser.parse_args(argv)
    out = args.out or _default_dir()
    if args.check:
        problems = check(out)
        for line in problems:
            print(f"bpfscope dashboards: {line}", file=sys.stderr)
        if problems:
            print("bpfscope dashboards: run `python -m bpfscope.dashboards` and commit the result", file=sys.stderr)
            return 1
        print(f"bpfscope dashboards: {out} is up to date")
        return 0
    for path in write(out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
