"""python -m bpfscope.collector: run the collector service alone."""

from __future__ import annotations

import argparse
import sys

from bpfscope.collector.server import DEFAULT_LISTEN, ServeError, serve

DEFAULT_DB = "sqlite:////var/lib/bpfscope/bpfscope.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpfscope.collector",
                                     description="bpfscope collector: stores record batches, serves queries.")
    parser.add_argument("--db", default=DEFAULT_DB,
                        help=f"SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default {DEFAULT_DB})")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT or [IPv6]:PORT (default {DEFAULT_LISTEN})")
    parser.add_argument("--retention", default="7d", help="delete records older than this (e.g. 2h, 7d; off = keep)")
    parser.add_argument("--max-rows", type=int, default=None, help="keep at most this many records (0 = no limit)")
    args = parser.parse_args(argv)
    try:
        serve(args.db, listen=args.listen, retention=args.retention, max_rows=args.max_rows)
    except ServeError as exc:
        print(f"bpfscope collector: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
