"""Benchmark runner: ``python -m bench NAME [--json]``.

Imports ``bench.NAME`` and calls its ``run() -> dict``. With ``--json`` it prints exactly one
JSON object (for CI and the docs); otherwise a two-column table. An unknown name exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

import bench


def available() -> list[str]:
    """Benchmark module names in this package (modules starting with ``_`` are not benchmarks)."""
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(result: dict[str, Any]) -> str:
    """A readable two-column rendering of a result dict."""
    width = max((len(k) for k in result), default=0)
    return "\n".join(f"{key:<{width}}  {_format(value)}" for key, value in result.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run a OneGate benchmark.")
    parser.add_argument("name", help="benchmark to run (a module of the bench package)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    names = available()
    if args.name not in names:
        print(
            f"python -m bench: unknown benchmark {args.name!r}; available: {', '.join(names) or '(none)'}",
            file=sys.stderr,
        )
        return 2
    run = getattr(importlib.import_module(f"bench.{args.name}"), "run", None)
    if not callable(run):
        print(f"python -m bench: bench.{args.name} has no run() function", file=sys.stderr)
        return 2
    result = run()
    if not isinstance(result, dict):
        print(
            f"python -m bench: bench.{args.name}.run() returned {type(result).__name__}, not dict",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
