"""The example notebooks run top to bottom in a real Jupyter kernel, against the MockProvider.

* Every notebook in ``notebooks/`` is executed with nbclient (kernel ``python3``, a time
  limit per cell): no cell may fail. The committed files carry no outputs.
* The executed notebook, rendered to HTML by nbconvert (a static render: no kernel, no
  widget manager), shows each run's dashboard as text in its final state.
* ``interrupt_and_resume.ipynb`` is also driven the way a user would: its long cell is
  interrupted with ``interrupt_kernel()`` while calls are in flight; the cell must end
  normally with a partial result (checked inside the kernel), the resume cell must finish
  the run, and after a kernel restart a new Runner must get every call from the store
  without sending a request.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")
pytest.importorskip("openai")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 60  # seconds per cell; each notebook takes 10-15 s
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Kernels inherit it: the interrupt notebook keeps its store here, not in /tmp."""
    monkeypatch.setenv("RATE_LIMITED_DEMO_DIR", str(tmp_path))
    return tmp_path


def new_client(nb: Any, cwd: Path) -> Any:
    return nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )


def test_there_are_notebooks() -> None:
    assert {p.name for p in ALL} >= {
        "quickstart.ipynb",
        "dataframe_enrichment.ipynb",
        "interrupt_and_resume.ipynb",
    }


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in ALL])
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in ALL])
def test_notebook_runs_without_errors(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    new_client(nb, tmp_path).execute()  # raises CellExecutionError on the first error
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == []
    dashboards = [
        output.data["text/plain"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "display_data"
        and output.data.get("text/plain", "").startswith("rate_limited ·")
    ]
    page = visible_text(nb)
    for dashboard in dashboards:
        assert "application/vnd.jupyter.widget-view+json" not in dashboard
        for line in dashboard.splitlines():
            assert line in page, f"{line!r} is not in the HTML of {path.name}"
    if path.name == "quickstart.ipynb":
        assert [d.splitlines()[:2] for d in dashboards] == [
            ["rate_limited · done", "60 / 60 calls · 100%"],
            ["rate_limited · done", "160 / 160 calls · 100%"],
        ]
        assert "requests_per_second: 20 used / 20" in page


def visible_text(nb: Any) -> str:
    """The text a browser shows of the notebook rendered to HTML by nbconvert, with no
    JavaScript running (scripts and styles left out, tags stripped, spaces collapsed)."""
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S | re.I)
    lines = html.unescape(re.sub(r"<div\b[^>]*>", "\n", body))
    lines = re.sub(r"<[^>]+>", "", lines)
    return "\n".join(" ".join(line.split()) for line in lines.splitlines())


# -- interrupting the kernel mid-run -------------------------------------------------------------
def printed(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def tagged(nb: Any, tag: str) -> tuple[Any, int]:
    for index, cell in enumerate(nb.cells):
        if tag in cell.metadata.get("tags", []):
            return cell, index
    raise AssertionError(f"no cell tagged {tag!r}")


async def run_code(client: Any, nb: Any, source: str) -> str:
    """Run extra code in the notebook's kernel (as a cell appended to it); its stdout."""
    cell = nbformat.v4.new_code_cell(source)
    nb.cells.append(cell)
    await client.async_execute_cell(cell, len(nb.cells) - 1)
    return printed(cell)


async def interrupt_scenario(nb: Any, cwd: Path) -> dict[str, Any]:
    client = new_client(nb, cwd)
    seen: dict[str, Any] = {}
    async with client.async_setup_kernel():
        for tag in ("setup", "fresh-start"):
            cell, index = tagged(nb, tag)
            await client.async_execute_cell(cell, index)
        cell, index = tagged(nb, "long-run")
        running = asyncio.ensure_future(client.async_execute_cell(cell, index))
        await asyncio.sleep(2.5)  # 200 calls of ~0.45 s, 8 at a time: ~11 s in all
        assert not running.done(), "the long cell ended before the interrupt"
        await client.km.interrupt_kernel()
        await running  # the cell ends normally: no KeyboardInterrupt
        seen["long_cell_errors"] = [o for o in cell.outputs if o.output_type == "error"]
        seen["partial"] = json.loads(
            await run_code(
                client, nb, "import json\nprint(json.dumps([result.interrupted, result.counts()]))"
            )
        )
        cell, index = tagged(nb, "inspect")
        await client.async_execute_cell(cell, index)
        cell, index = tagged(nb, "resume")
        await client.async_execute_cell(cell, index)
        seen["resumed"] = json.loads(
            await run_code(client, nb, "print(json.dumps([result.interrupted, result.counts()]))")
        )

        # A kernel restart: the new kernel's MockProvider has seen no request at all.
        await client.km.restart_kernel()
        await client.kc.wait_for_ready(timeout=60)
        cell, index = tagged(nb, "setup")
        await client.async_execute_cell(cell, index)
        cell, index = tagged(nb, "after-restart")
        await client.async_execute_cell(cell, index)
        seen["after_restart"] = json.loads(
            await run_code(
                client,
                nb,
                "import json\nprint(json.dumps([again.interrupted, again.counts(), from_store, "
                "mock.stats().requests]))",
            )
        )
    return seen


def test_interrupt_kernel_mid_run_then_resume_and_restart(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / "interrupt_and_resume.ipynb", as_version=4)
    seen = asyncio.run(interrupt_scenario(nb, tmp_path))
    assert seen["long_cell_errors"] == []

    interrupted, counts = seen["partial"]
    assert interrupted is True
    assert 0 < counts.get("succeeded", 0) < 200
    assert sum(counts.values()) == 200

    interrupted, counts = seen["resumed"]
    assert interrupted is False and counts == {"succeeded": 200}

    interrupted, counts, from_store, requests = seen["after_restart"]
    assert interrupted is False and counts == {"succeeded": 200}
    assert from_store == 200 and requests == 0
