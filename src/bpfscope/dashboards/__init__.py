"""Grafana dashboards, generated from Python with grafana-foundation-sdk.

`python -m bpfscope.dashboards` writes grafana/dashboards/<uid>.json; `--check` fails when
the committed JSON differs from what the code generates. Adding a domain's dashboard: write
a module with a UID and a build() (see system.py) and append it to DASHBOARDS.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import fuse, network, overview, process, stack, system
from .common import render

DASHBOARDS = (overview, system, network, stack, process, fuse)  # overview first: it is Grafana's home dashboard


def generate() -> dict[str, dict]:
    """File name -> dashboard JSON model, for every registered dashboard."""
    out: dict[str, dict] = {}
    for module in DASHBOARDS:
        model = render(module.build())
        if model.get("uid") != module.UID:
            raise ValueError(f"{module.__name__}: uid {model.get('uid')!r} != UID {module.UID!r}")
        out[f"{module.UID}.json"] = model
    return out


def to_text(model: dict) -> str:
    # Stable text (sorted keys, fixed indent) so a diff shows only what changed.
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in generate().items():
        path = out_dir / name
        path.write_text(to_text(model), encoding="utf-8")
        written.append(path)
    return written


def check(out_dir: Path) -> list[str]:
    """One line per dashboard file that is missing or differs from the generated one."""
    problems = []
    for name, model in generate().items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != to_text(model):
            problems.append(f"{path}: differs from the generated dashboard")
    return problems
