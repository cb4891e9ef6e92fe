"""Build the proc test programs (the *.c next to this file) with the system's C compiler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(out: Path) -> dict[str, Path] | None:
    """{name: executable} of every workload, built into out; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    built = {}
    for src in sorted(HERE.glob("*.c")):
        exe = out / src.stem
        # frame pointers and no tail calls: the recursion stays visible in user stacks
        subprocess.run([cc, "-O0", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-pthread",
                        "-o", str(exe), str(src)], check=True)
        built[src.stem] = exe
    return built
