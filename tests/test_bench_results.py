"""benchmarks/_common.replace_section: a script's ``--write`` replaces its own part of
benchmarks/RESULTS.md and keeps everything else, the notes written by hand included; and
benchmarks/shared.py's ``--only`` writes only the parts it ran.

Every test works on a copy of the real RESULTS.md (nothing here runs a benchmark): the file
as it is must round-trip unchanged when a part is rewritten with its own text.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from benchmarks import _common, shared
from benchmarks._common import NOTES_MARK, replace_section

RESULTS = Path(_common.RESULTS_FILE).read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, list[_common._Part]]:
    """The file's sections by heading, each as its parts (lead first)."""
    lines = text.splitlines()
    starts = _common._headings(lines, "## ")
    ends = [*starts[1:], len(lines)]
    return {
        lines[s].removeprefix("## "): _common._parts(lines[s + 1 : e])
        for s, e in zip(starts, ends, strict=True)
    }


SECTIONS = _sections(RESULTS)


def _part(section: str, title: str | None) -> _common._Part:
    return next(p for p in SECTIONS[section] if p.title == title)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A copy of benchmarks/RESULTS.md."""
    copy = tmp_path / "RESULTS.md"
    copy.write_text(RESULTS, encoding="utf-8")
    return copy


def _write(path: Path, section: str, part: _common._Part, text: str | None = None) -> None:
    """Write ``part`` of ``section`` as a script does, with ``text`` (default: its own)."""
    text = part.text if text is None else text
    if part.title is None:
        replace_section(section, text, path)
    else:
        replace_section(section, f"{part.title}\n\n{text}", path, lead=False)


@pytest.mark.parametrize(
    ("section", "title"),
    [
        pytest.param(section, part.title, id=f"{section}: {part.title or 'lead'}")
        for section, parts in SECTIONS.items()
        for part in parts
    ],
)
def test_every_part_round_trips(results: Path, section: str, title: str | None) -> None:
    """A part rewritten with its own text leaves the file as it was; a part that had no
    notes mark yet gets one (after its text), and nothing else changes."""
    part = _part(section, title)
    _write(results, section, part)
    expected = RESULTS
    if part.notes is None:
        at = RESULTS.index(part.text, RESULTS.index(f"## {section}\n")) + len(part.text)
        expected = f"{RESULTS[:at]}\n\n{NOTES_MARK}{RESULTS[at:]}"
    assert results.read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("section", ["Overhead", "Shared quota"])
def test_sections_of_the_scripts_here_are_marked(section: str) -> None:
    """Every part of the sections two scripts write has its mark: their notes are safe."""
    assert all(part.notes is not None for part in SECTIONS[section])


def test_only_one_subsection_is_replaced(results: Path) -> None:
    """``shared.py --only overhead --write``: that subsection's text changes, its notes and
    the section's lead and other subsections stay, and so do the other sections."""
    part = _part("Shared quota", shared.PARTS["overhead"][0])
    assert part.notes and "Before and after this session's" in part.notes
    _write(results, "Shared quota", part, "A new table.")
    assert results.read_text(encoding="utf-8") == RESULTS.replace(part.text, "A new table.")


def test_a_full_write_keeps_every_note(results: Path) -> None:
    """A full run rewrites the lead and every subsection of its section: the notes under
    each one's mark are kept, in place."""
    parts = SECTIONS["Shared quota"]
    body = "\n\n".join(["New preamble.", *(f"{p.title}\n\nNew {p.title}." for p in parts[1:])])
    replace_section("Shared quota", body, results)
    after = _sections(results.read_text(encoding="utf-8"))
    assert [p.title for p in after["Shared quota"]] == [p.title for p in parts]
    assert [p.notes for p in after["Shared quota"]] == [p.notes for p in parts]
    assert after["Shared quota"][0].text == "New preamble."
    assert after["Shared quota"][2].text == f"New {parts[2].title}."
    for name in SECTIONS.keys() - {"Shared quota"}:
        assert [vars(p) for p in after[name]] == [vars(p) for p in SECTIONS[name]]


def test_overhead_and_ledger_scripts_coexist(results: Path) -> None:
    """overhead.py writes the Overhead section's lead, ledger.py its subsection: neither
    drops the other's text or the notes under either."""
    ledger = _part("Overhead", "### Ledger micro-benchmark")
    replace_section("Overhead", "overhead.py's new table", results)
    replace_section("Overhead", f"{ledger.title}\n\nledger.py's new table", results, lead=False)
    after = _sections(results.read_text(encoding="utf-8"))["Overhead"]
    assert [(p.title, p.text) for p in after] == [
        (None, "overhead.py's new table"),
        (ledger.title, "ledger.py's new table"),
    ]
    assert [p.notes for p in after] == [p.notes for p in SECTIONS["Overhead"]]
    assert after[0].notes and after[0].notes.startswith("**What the realistic async row says**")


def test_new_parts_and_sections(tmp_path: Path) -> None:
    """A subsection new to the section goes after the one the body has before it (else at
    the section's end); a section new to the file at the file's end; a missing file is
    made with the common header."""
    path = tmp_path / "RESULTS.md"
    replace_section("A", "### One\n\nfirst", path, lead=False)
    replace_section("B", "lead of B\n\n### Two\n\nsecond", path)
    path.write_text(
        path.read_text(encoding="utf-8").replace(NOTES_MARK, f"{NOTES_MARK}\n\nnote", 1),
        encoding="utf-8",
    )
    replace_section("A", "### Zero\n\nzero", path, lead=False)
    replace_section("A", "### One\n\nfirst again\n\n### Half\n\nhalf", path, lead=False)
    assert path.read_text(encoding="utf-8") == (
        f"{_common.RESULTS_HEADER}\n\n"
        f"## A\n\n### One\n\nfirst again\n\n{NOTES_MARK}\n\nnote\n\n"
        f"### Half\n\nhalf\n\n{NOTES_MARK}\n\n### Zero\n\nzero\n\n{NOTES_MARK}\n\n"
        f"## B\n\nlead of B\n\n{NOTES_MARK}\n\n### Two\n\nsecond\n\n{NOTES_MARK}\n"
    )


def test_headings_in_fenced_code_do_not_count(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    body = "```\n## not a section\n### not a subsection\n```"
    replace_section("A", body, path)
    replace_section("A", body, path)
    assert path.read_text(encoding="utf-8").count("## not a section") == 1
    assert [p.title for p in _sections(path.read_text(encoding="utf-8"))["A"]] == [None]


@pytest.mark.parametrize(
    ("body", "lead", "message"),
    [
        pytest.param("text\n\n### A\n\na", False, "text before its first ###", id="lead-text"),
        pytest.param("### A\n\na\n\n### A\n\nb", True, "more than once", id="same-title"),
        pytest.param(f"a\n{NOTES_MARK}\nb\n{NOTES_MARK}", True, "2 times", id="two-marks"),
        pytest.param(f"a\n\n{NOTES_MARK}\n\nb", True, "written by hand", id="notes"),
    ],
)
def test_bad_bodies(tmp_path: Path, body: str, lead: bool, message: str) -> None:
    path = tmp_path / "RESULTS.md"
    with pytest.raises(ValueError, match=message):
        replace_section("A", body, path, lead=lead)
    assert not path.exists()


# -- benchmarks/shared.py ----------------------------------------------------------------------
def test_shared_generates_its_explanations_as_written() -> None:
    """The paragraphs under the overhead and Dask tables come from the figures: given the
    current ones, the script writes what RESULTS.md says."""
    overhead = _part("Shared quota", shared.PARTS["overhead"][0])
    assert overhead.text.endswith(shared.overhead_verdict([122e-6, 139e-6], 159e-6))
    dask = _part("Shared quota", shared.PARTS["dask"][0])
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in dask.text.splitlines()
        if line.startswith(("| none", "| one worker"))
    ]
    assert len(rows) == 2
    assert dask.text.endswith("\n\n" + shared.dask_verdict(rows))


@pytest.mark.parametrize(
    ("runner", "presets", "verdict"),
    [
        pytest.param([1e-4, 2e-4], 2.9e-4, "**met on both paths**", id="both"),
        pytest.param([1e-4, 3e-4], 2e-4, "**met on the presets' path, not", id="presets"),
        pytest.param([1e-4, 2e-4], 4e-4, "**met on the Runner's path, not", id="runner"),
        pytest.param([5e-4, 2e-4], 4e-4, "**not met**", id="neither"),
    ],
)  # fmt: skip
def test_overhead_verdict(runner: list[float], presets: float, verdict: str) -> None:
    assert verdict in shared.overhead_verdict(runner, presets)


def test_dask_verdict_says_what_a_run_without_kill_sent_twice() -> None:
    row = ["none", "10,000/10,000", "yes", "10,003", "10,000", "3", "1", "0", "0", "0", "9 s"]
    assert shared.dask_verdict([row]).startswith("Without a kill, 3 requests were sent")


@pytest.mark.parametrize(
    ("only", "chosen"),
    [
        pytest.param("overhead", ["overhead"], id="one"),
        pytest.param("dask, quota", ["quota", "dask"], id="section-order"),
    ],
)
def test_parts_chosen(only: str, chosen: list[str]) -> None:
    assert shared.parts_chosen(only) == chosen


@pytest.mark.parametrize("only", ["overheads", "", "quota,nope"])
def test_parts_chosen_refuses_unknown_parts(only: str) -> None:
    """A misspelt part is an error before anything runs (it wrote an empty section)."""
    with pytest.raises(SystemExit):
        shared.main(["--only", only, "--write"])


def test_shared_only_writes_the_parts_it_ran(
    results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``shared.py --only kill,dask --write``, measurements stubbed: those two subsections
    get the new tables, each with the date, machine and command of this run; the section's
    preamble, its other subsections and every note stay as they were."""
    monkeypatch.setattr(shared, "replace_section", functools.partial(replace_section, path=results))
    for name in ("kill", "dask"):
        title, _ = shared.PARTS[name]
        monkeypatch.setitem(shared.PARTS, name, (title, lambda url, n=name: f"new {n} for {url}"))
    monkeypatch.setattr(shared, "preamble", lambda script, argv: ["Command:", " ".join(argv), ""])
    argv = ["--only", "kill,dask", "--redis", "redis://h/0", "--write"]
    assert shared.main(argv) == 0
    after = _sections(results.read_text(encoding="utf-8"))["Shared quota"]
    before = SECTIONS["Shared quota"]
    command = "Command:\n--only kill,dask --redis redis://h/0"
    for old, new in zip(before, after, strict=True):
        assert (new.title, new.notes) == (old.title, old.notes)
        if old.title == shared.PARTS["kill"][0]:
            assert new.text == f"{command}\n\nnew kill for redis://h/0"
        elif old.title == shared.PARTS["dask"][0]:
            assert new.text == f"{command}\n\nnew dask for redis://h/0"
        else:
            assert new.text == old.text
