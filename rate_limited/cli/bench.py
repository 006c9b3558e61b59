"""``rate-limited bench [NAME] ...``: runs ``benchmarks/NAME.py`` of a source checkout.

The benchmarks are not installed with the package; ``--help`` says what each one
touches (a virtualenv with rate_limited 0.4 from PyPI, MockProviders, RESULTS.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bench", "bench_help"]


BENCH_USAGE = "rate-limited bench [NAME] [OPTIONS]"
BENCH_DESCRIPTION = """\
Run benchmarks/NAME.py of a source checkout (default: utilization) with this
interpreter, from the repository root, passing OPTIONS on. The benchmarks are not
installed with the package: run this from a git clone, in the virtualenv where the
clone is installed.

What it touches:
  - a benchmark that compares with rate_limited 0.4 (marked below) installs
    rate_limited 0.4.0 and its helpers (tqdm, openai) from PyPI into
    benchmarks/.venv04 the first time, and reuses that virtualenv after;
  - it starts MockProviders (and, for stores, a redis-server) on 127.0.0.1 and
    writes temporary files; it calls no real API and needs no key;
  - with --write, it replaces its own section of benchmarks/RESULTS.md."""


def _bench_dirs() -> list[Path]:
    return [
        Path.cwd() / "benchmarks",
        Path(__file__).resolve().parents[2] / "benchmarks",
    ]


def _bench_scripts() -> dict[str, Path]:
    """The benchmark scripts of the checkout, by name (the first folder that has any)."""
    for folder in _bench_dirs():
        scripts = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")}
        if scripts:
            return scripts
    return {}


def _bench_summary(script: Path) -> tuple[str, bool]:
    """The first line of a benchmark's docstring, and whether it installs 0.4 (it calls
    ``ensure_venv04``, the helper that does)."""
    source = script.read_text(encoding="utf-8")
    try:
        doc = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        doc = ""
    return (doc.splitlines() or [""])[0], "ensure_venv04" in source


def bench_help(name: str | None) -> str:
    """``rate-limited bench --help`` (and ``bench NAME --help``, with NAME's options)."""
    scripts = _bench_scripts()
    usage = BENCH_USAGE if name is None else f"rate-limited bench {name} [OPTIONS]"
    lines = [f"usage: {usage}", "", BENCH_DESCRIPTION, ""]
    if not scripts:
        lines.append("No benchmarks/ folder here: run this from a git clone of the repository.")
        return "\n".join(lines)
    lines += [
        "Benchmarks (* installs rate_limited 0.4.0 from PyPI into benchmarks/.venv04 on",
        "first use; rate-limited bench NAME --help shows NAME's options):",
    ]
    for stem, path in scripts.items():
        summary, installs = _bench_summary(path)
        lines.append(f"  {stem:<12} {'*' if installs else ' '} {summary}")
    script = scripts.get(name) if name is not None else None
    if script is not None:
        done = subprocess.run(
            [sys.executable, str(script), "--help"],
            capture_output=True,
            text=True,
            cwd=script.parent.parent,
            check=False,
        )
        own = done.stdout.splitlines()
        # Its own usage line names the script file; the options are what is useful here.
        start = next(
            (i for i, line in enumerate(own) if line.rstrip().endswith(("options:", "arguments:"))),
            None,
        )
        if start is not None:
            lines += ["", f"Options of benchmarks/{script.name}:", *own[start + 1 :]]
    return "\n".join(lines)


def bench(argv: Sequence[str]) -> int:
    """Run ``benchmarks/<name>.py`` of the source checkout with this interpreter."""
    name = argv[0] if argv and not argv[0].startswith("-") else None
    rest = list(argv[1:] if name is not None else argv)
    if "-h" in rest or "--help" in rest:
        print(bench_help(name))
        return 0
    name = name or "utilization"
    script = _bench_scripts().get(name)
    if script is None:
        print(
            f"benchmarks/{name}.py not found: the benchmarks live in the source checkout "
            "(git clone the repository and run this from it). See rate-limited bench --help.",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *rest], cwd=script.parent.parent)
