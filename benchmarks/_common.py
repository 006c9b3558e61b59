"""Shared helpers for the benchmark scripts in this folder.

Why: the rewrite and rate_limited 0.4 (from PyPI) have the same import name, so a
side-by-side benchmark has to run each one in its own interpreter: the new package in the
project's virtualenv (``sys.executable``), 0.4 in ``benchmarks/.venv04``. This module
creates that second virtualenv once (reused afterwards), runs a worker script in a given
interpreter in isolated mode (``-I``: neither the working directory nor the script's
folder is on ``sys.path``, so 0.4's interpreter cannot import the checkout), collects the
one JSON line the worker prints, and writes a script's own section of ``RESULTS.md``.

Standard library only, so that any benchmark script can import it before anything else.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
RESULTS_HEADER = "# Benchmark results"
VENV04_DIR = BENCH_DIR / ".venv04"
VERSION_04 = "0.4.0"

#: Default seconds one worker process may take before it is killed.
DEFAULT_TIMEOUT = 300.0


class WorkerError(RuntimeError):
    """A worker process crashed, timed out or printed no JSON result."""


# -- interpreters ---------------------------------------------------------------------------------
def venv_python(venv_dir: Path) -> Path:
    """The interpreter of a virtualenv (POSIX or Windows layout)."""
    posix = venv_dir / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv_dir / "Scripts" / "python.exe"


def _installed_version(python: Path, distribution: str) -> str | None:
    """The version of ``distribution`` installed for ``python``, or None if it is not."""
    code = (
        "import importlib.metadata as m, sys\n"
        "try:\n"
        f"    print(m.version({distribution!r}))\n"
        "except m.PackageNotFoundError:\n"
        "    sys.exit(3)\n"
    )
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv04(venv_dir: Path = VENV04_DIR, *, quiet: bool = False) -> Path:
    """Create (once) a virtualenv with rate_limited 0.4.0 and tqdm; return its python.

    An existing virtualenv is reused when it already has rate_limited 0.4.0 and tqdm;
    otherwise it is (re)created and filled with ``pip install rate_limited==0.4.0 tqdm``.
    """
    python = venv_python(venv_dir)
    if (
        python.exists()
        and _installed_version(python, "rate_limited") == VERSION_04
        and _installed_version(python, "tqdm") is not None
    ):
        return python
    if not quiet:
        print(f"creating {venv_dir.relative_to(REPO_ROOT)} with rate_limited=={VERSION_04} ...")
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        f"rate_limited=={VERSION_04}",
        "tqdm",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or _installed_version(python, "rate_limited") != VERSION_04:
        raise RuntimeError(
            f"could not install rate_limited=={VERSION_04} into {venv_dir}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return python


def ensure_packages(python: str | Path, packages: Sequence[str], *, quiet: bool = False) -> None:
    """Install into ``python``'s environment those of ``packages`` (distribution names) it
    lacks, with its own pip (e.g. ``openai`` into the 0.4 virtualenv)."""
    missing = [p for p in packages if _installed_version(Path(python), p) is None]
    if not missing:
        return
    if not quiet:
        print(f"installing {' '.join(missing)} for {python} ...")
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    done = subprocess.run([*command, *missing], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not install {missing}:\n{done.stdout}\n{done.stderr}")


def preamble(script: str, argv: Sequence[str]) -> list[str]:
    """The first lines of a RESULTS.md section: date, machine, and the command to rerun."""
    machine = machine_info()
    return [
        f"Date: {today()}. Machine: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"{machine['implementation']} {machine['python']}, {machine['os']}.",
        "",
        "Command (from the repository root):",
        "",
        "```",
        command_line(script, argv),
        "```",
        "",
    ]


# -- workers --------------------------------------------------------------------------------------
def run_worker(
    python: str | Path,
    script: str | Path,
    args: Sequence[str] = (),
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``python -I script *args`` and return the JSON object it prints last on stdout.

    stderr (progress bars, warnings) goes to an unlinked temporary file rather than a pipe
    or the terminal, so it costs the worker next to nothing; it is shown in the
    ``WorkerError`` raised when the worker exits non-zero, times out or prints no JSON.
    The working directory defaults to the system's temporary directory, so that nothing
    from the checkout can be picked up even by accident.
    """
    # Paths are made absolute: the worker runs in another working directory.
    if os.sep in str(python):
        python = Path(python).absolute()
    command = [str(python), "-I", str(Path(script).absolute()), *args]
    workdir = str(cwd) if cwd is not None else tempfile.gettempdir()
    with tempfile.TemporaryFile(prefix="bench_overhead_", mode="w+b") as err:
        try:
            done = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                timeout=timeout,
                check=False,
            )
        except OSError as exc:
            raise WorkerError(f"cannot start worker: {shlex.join(command)}: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise WorkerError(
                f"worker timed out after {timeout:g} s: {shlex.join(command)}\n{_tail(err)}"
            ) from exc
        stdout = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise WorkerError(
                f"worker exited with code {done.returncode}: {shlex.join(command)}\n"
                f"--- stdout ---\n{stdout[-2000:]}\n--- stderr ---\n{_tail(err)}"
            )
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                try:
                    result: dict[str, Any] = json.loads(line)
                except json.JSONDecodeError:
                    break
                return result
        raise WorkerError(
            f"worker printed no JSON result: {shlex.join(command)}\n"
            f"--- stdout ---\n{stdout[-2000:]}\n--- stderr ---\n{_tail(err)}"
        )


def _tail(file: Any, limit: int = 4000) -> str:
    """The last ``limit`` characters written to a binary temporary file."""
    file.flush()
    file.seek(0)
    text: str = file.read().decode(errors="replace")
    # tqdm redraws its bar with carriage returns: keep only each line's last state.
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(lines)[-limit:] or "(empty)"


# -- statistics and reporting ---------------------------------------------------------------------
def best(values: Sequence[float]) -> float:
    """The lowest value (for times and bytes: the least disturbed repeat)."""
    return min(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine_info() -> dict[str, str]:
    """What the results were measured on: CPUs usable, Python, OS, CPU model."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(cpus),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": model,
    }


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    """How this run was started, with paths relative to the repository root."""

    def relative(path: str | Path) -> str:
        absolute = Path(path).absolute()
        try:
            return str(absolute.relative_to(REPO_ROOT))
        except ValueError:
            return str(path)

    return shlex.join([relative(sys.executable), relative(script), *argv])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with columns padded to line up in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


#: The line that ends the generated text of a part of RESULTS.md (a section's lead or a
#: ``### `` subsection): what follows it, up to the part's end, is notes written by hand,
#: which ``replace_section`` keeps when a script rewrites the part.
NOTES_MARK = "<!-- notes below: kept by --write -->"


class _Part:
    """A part of a ``## `` section: its lead (``title`` None) or a ``### `` subsection;
    ``text``: the generated text (no title), ``notes``: what follows ``NOTES_MARK``
    (None: the part has no mark, "" a mark and no notes)."""

    def __init__(self, title: str | None, lines: list[str]) -> None:
        self.title = title
        marks = [i for i, line in enumerate(lines) if line.strip() == NOTES_MARK]
        if len(marks) > 1:
            raise ValueError(f"{title or 'the lead'} has {NOTES_MARK!r} {len(marks)} times")
        cut = marks[0] if marks else len(lines)
        self.text = "\n".join(lines[:cut]).strip("\n")
        self.notes = "\n".join(lines[cut + 1 :]).strip("\n") if marks else None

    def render(self) -> str:
        """The part's text, the mark and its notes, each a paragraph apart."""
        mark = NOTES_MARK if self.notes is not None else None
        return "\n\n".join(b for b in (self.title, self.text, mark, self.notes) if b)


def _headings(lines: list[str], prefix: str) -> list[int]:
    """Indexes of the lines that start with ``prefix`` (``"## "``), outside fenced code."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith(prefix):
            found.append(i)
    return found


def _parts(lines: list[str]) -> list[_Part]:
    """A section's body (the lines after its ``## `` line) as its lead and subsections."""
    starts = _headings(lines, "### ")
    bounds = [0, *starts, len(lines)]
    parts = [_Part(None, lines[: bounds[1]])]
    for start, end in zip(starts, bounds[2:], strict=True):
        parts.append(_Part(lines[start].rstrip(), lines[start + 1 : end]))
    titles = [part.title for part in parts]
    repeated = sorted({t for t in titles if t is not None and titles.count(t) > 1})
    if repeated:
        raise ValueError(f"subsection(s) {repeated} appear more than once in one section")
    return parts


def replace_section(
    heading: str, body: str, path: Path = RESULTS_FILE, *, lead: bool = True
) -> None:
    """Write a script's ``body`` into the ``## heading`` section of ``path``.

    ``body`` is the section's lead (its text before any ``### `` heading) and any
    ``### `` subsections. Each of them replaces the generated text of the same part of the
    section, and nothing else: the section's other subsections (another script's, such as
    ``ledger.py``'s in "Overhead", or those a run of part of a benchmark did not measure)
    are kept, and so are the notes of each part replaced: the lines after its
    ``NOTES_MARK``, which every part written here ends with. With ``lead=False`` the body
    is subsections only and the section's lead is kept. A subsection new to the section
    goes after the one ``body`` has before it (or at the section's end); a missing
    section is appended, a missing file created with the common header. The other
    sections are kept as they are. Headings inside fenced code do not count.
    """
    title = f"## {heading}"
    given = _parts(body.strip("\n").splitlines())
    if any(part.notes is not None for part in given):
        raise ValueError(f"the body holds {NOTES_MARK!r}: notes are written by hand only")
    if not lead:
        if given[0].text:
            raise ValueError(f"lead=False, but the body has text before its first ### heading: "
                             f"{given[0].text[:60]!r}")  # fmt: skip
        given = given[1:]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = f"{RESULTS_HEADER}\n"
    lines = text.splitlines()
    sections = _headings(lines, "## ")
    start = next((i for i in sections if lines[i].rstrip() == title), None)
    if start is None:
        before, old, after = text.rstrip("\n"), [_Part(None, [])], ""
    else:
        end = next((i for i in sections if i > start), len(lines))
        before = "\n".join(lines[:start]).rstrip("\n")
        old = _parts(lines[start + 1 : end])
        after = "\n".join(lines[end:]).strip("\n")
    previous: int | None = None  # where the part of ``given`` placed last is
    for part in given:
        at = next((i for i, p in enumerate(old) if p.title == part.title), None)
        if at is None:
            at = len(old) if previous is None else previous + 1
            old.insert(at, _Part(part.title, []))
        old[at].text = part.text
        if old[at].notes is None:
            old[at].notes = ""  # marked: notes written below the mark are kept
        previous = at
    rendered = "\n\n".join(p.render() for p in old if p.title is not None or p.text or p.notes)
    section = f"{title}\n\n{rendered}".rstrip("\n") + "\n"
    parts = [before + "\n\n" if before else "", section]
    if after:
        parts.append("\n" + after + "\n")
    path.write_text("".join(parts), encoding="utf-8")
