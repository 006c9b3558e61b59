"""Every Python block of README.md runs as written, in order, against the MockProvider.

A newcomer copies the README's blocks one after the other into a notebook or a script;
so does this test: the blocks run top to bottom in one namespace, in an empty working
directory, with nothing changed but the environment the clients read their base URL and
key from (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``, ``ANTHROPIC_BASE_URL`` /
``ANTHROPIC_API_KEY``), pointing at a MockProvider on 127.0.0.1. A failing block is
reported with its line in README.md (its code is compiled under that file name and
line, so the traceback shows README's own lines).

Conventions, for whoever adds a section:

* A Python block is a fence tagged ``python`` (or ``py``); it must run as written after
  the blocks before it. Define what it needs in it, or in an earlier block.
* Every fence has a language tag (``bash``, ``text``, ...), so no Python hides in an
  untagged one.
* A Python block that needs an optional dependency not every CI job installs (the
  semantic cache's local model needs PyTorch) is preceded by
  ``<!-- readme: requires module[, module] -->``: where one is missing, the block is
  left out and the test, after running all the others, is reported skipped, naming it.
* A Python block that must not run at all (say, it needs a real API key) is preceded by
  ``<!-- readme: skip (why) -->``; the reason is required. Use it sparingly.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rate_limited.testing import BatchSettings, MockProvider
from tests.shared import closed_after_test
from tests.stores.conftest import redis_url  # noqa: F401 - the session's redis-server

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON = ("python", "py")
SKIP = re.compile(r"^<!--\s*readme:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*$")
REQUIRES = re.compile(r"^<!--\s*readme:\s*requires\s+(?P<modules>[\w., ]+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    #: Line of the opening fence (1-based).
    line: int
    #: The info string's first word: "python", "bash", ... ("" if none).
    language: str
    source: str
    #: Why it is not run, from a ``<!-- readme: skip (...) -->`` line just before it.
    skip: str | None
    #: Modules it needs, from a ``<!-- readme: requires ... -->`` line just before it.
    requires: tuple[str, ...] = ()

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON


def read_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        words = opening["info"].split()
        language = words[0].lower() if words else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not re.match(
            rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]
        ):
            body.append(lines[end])
            end += 1
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = SKIP.match(previous.strip())
        skip = marker["reason"].strip() if marker else None
        needs = REQUIRES.match(previous.strip())
        requires = tuple(m.strip() for m in needs["modules"].split(",")) if needs else ()
        blocks.append(Block(index + 1, language, "\n".join(body) + "\n", skip, requires))
        index = end + 1
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def test_the_reader_finds_every_block_and_marker() -> None:
    text = "\n".join(
        [
            "Intro",
            "```python",
            "x = 1",
            "```",
            "<!-- readme: skip (needs a real key) -->",
            "",
            "```py",
            "call_the_real_api()",
            "```",
            "````bash",
            "echo '```'",
            "````",
            "```",
            "plain",
            "```",
            "<!-- readme: requires torch, sentence_transformers -->",
            "```python",
            "import torch",
            "```",
        ]
    )
    blocks = read_blocks(text)
    assert [(b.line, b.language, b.skip, b.requires) for b in blocks] == [
        (2, "python", None, ()),
        (7, "py", "needs a real key", ()),
        (10, "bash", None, ()),
        (13, "", None, ()),
        (17, "python", None, ("torch", "sentence_transformers")),
    ]
    assert blocks[0].source == "x = 1\n" and blocks[2].source == "echo '```'\n"


def test_every_block_is_tagged_and_every_skip_gives_a_reason() -> None:
    untagged = [b.line for b in BLOCKS if not b.language]
    assert untagged == [], f"README.md: tag these fences with their language: {untagged}"
    for block in BLOCKS:
        if block.skip is not None or block.requires:
            assert block.is_python, f"line {block.line}: only Python blocks are skipped"
        if block.skip is not None:
            assert block.skip, f"line {block.line}: say why the block is skipped"
    python = [b for b in BLOCKS if b.is_python]
    assert len(python) >= 10
    assert sum(b.skip is None for b in python) >= len(python) - 2  # skips stay rare


@pytest.fixture
def mock_environment(
    make_provider: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> Any:
    """A MockProvider, the environment variables the SDKs read (and ``REDIS_URL``, the
    shared ledger's server), an empty directory; the sync SDK clients made meanwhile are
    closed when the test ends."""
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    # Batches that end at once: the README's batch example polls a real clock.
    instant = BatchSettings(validating_seconds=0, seconds_per_request=0, finalizing_seconds=0)
    provider = make_provider(
        rpm=1000, tpm=500_000, input_tpm=100_000, output_tpm=50_000, batch=instant
    )
    monkeypatch.setenv("OPENAI_BASE_URL", provider.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-readme-test")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    for client_class in (openai.OpenAI, anthropic.Anthropic):
        _closed_after_test_when_made(client_class, monkeypatch)
    return provider


def _closed_after_test_when_made(client_class: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``client_class`` (a sync SDK client) made until the test ends is closed then
    (``tests.shared.closed_after_test``), as a user's script closes them by exiting.

    The blocks make several (``client = openai.OpenAI()``, ``ChatCompletions(openai.OpenAI(),
    ...)``) and rebind their names. A client dropped with its pool of keep-alive sockets
    waits in a reference cycle for the collector, which may finalize the sockets before the
    client that would close them (often on 3.13): an unclosed-socket ResourceWarning each,
    failing whichever later test collected them (CI's burst of 13-15, all made by the Quick
    start's Runner threads). The async clients are left alone: the README's one answers
    in-process (no socket), and closing one needs its loop."""
    made = client_class.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        closed_after_test(self)

    monkeypatch.setattr(client_class, "__init__", init)


@pytest.mark.slow
def test_every_python_block_runs_as_written(mock_environment: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    ran = 0
    left_out: list[str] = []
    try:
        for block in BLOCKS:
            if not block.is_python or block.skip is not None:
                continue
            missing = [m for m in block.requires if importlib.util.find_spec(m) is None]
            if missing:
                left_out.append(f"line {block.line} (needs {', '.join(missing)})")
                continue
            # Compiled at its own line of README.md: tracebacks show the README's lines.
            code = compile("\n" * block.line + block.source, str(README), "exec")
            try:
                exec(code, namespace)
            except Exception as exc:
                raise AssertionError(
                    f"the README.md block at line {block.line} failed: {type(exc).__name__}: {exc}"
                ) from exc
            ran += 1
    finally:
        _close_runners(namespace)
    assert ran + len(left_out) == sum(b.is_python and b.skip is None for b in BLOCKS)
    # They did talk to the provider (and nothing else could have answered).
    assert mock_environment.stats().requests > 0
    assert mock_environment.stats().rejected == 0
    if left_out:
        pytest.skip(f"{ran} README blocks ran; not run here: {'; '.join(left_out)}")


def _close_runners(namespace: dict[str, Any]) -> None:
    """Stop the loop threads of the Runners the blocks left behind (a user's process
    would simply exit)."""
    from rate_limited import Runner

    for value in namespace.values():
        if isinstance(value, Runner):
            value.close()


def dask_block(redis: str, prefix: str) -> tuple[Block, str]:
    """README's Dask block and its code with the cluster's Redis host made the one of the
    URL ``redis``, the ledger's name and the store's prefix ``prefix``."""
    [block] = [b for b in BLOCKS if b.is_python and "rate_limited.dask" in b.source]
    host = redis.removeprefix("redis://").rpartition("/")[0]
    code = (
        block.source.replace("scheduler-host:6379/1", f"{host}/0?prefix={prefix}")
        .replace("scheduler-host:6379", host)
        .replace("name=team-key", f"name={prefix}")
    )
    assert "scheduler-host" not in code
    return block, code


def _count_made() -> int:
    """How many ``per_process`` objects this process holds (run on each Dask worker)."""
    from rate_limited import _per_process

    return len(_per_process._objects)


@pytest.mark.slow
def test_the_dask_block_shares_one_client_per_worker_process(
    redis_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README's Dask block (skipped above: it names a cluster's Redis host), run as a
    notebook runs it, in ``__main__`` (so Dask pickles its functions by value), on worker
    processes, with that host made this test's Redis and the SDK's URL a MockProvider's:
    every partition succeeds, and each worker process made one OpenAI client for all the
    partitions it ran (a client per partition before ``per_process``)."""
    import uuid

    distributed = pytest.importorskip("distributed")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    block, code = dask_block(redis_url, f"readme-dask-{uuid.uuid4().hex[:8]}")
    (tmp_path / "prompts.parquet").mkdir()  # 6 files: 6 partitions
    for part in range(6):
        prompts = [f"prompt {i}" for i in range(part * 10, part * 10 + 10)]
        pd.DataFrame({"prompt": prompts}).to_parquet(tmp_path / f"prompts.parquet/{part}.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RATE_LIMITED_STORE_SECRET", "readme-dask-secret")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    with MockProvider(rpm=6_000, tpm=1_000_000) as mp:
        monkeypatch.setenv("OPENAI_BASE_URL", mp.base_url)  # read by the workers too
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
            ) as cluster,
            distributed.Client(cluster) as dask_client,
        ):
            try:
                exec(compile("\n" * block.line + code, str(README), "exec"), namespace)
                out = namespace["out"].compute()
                made = dask_client.run(_count_made)
                dask_client.run(namespace["openai_client"].close)  # as the README says
            finally:
                if "openai_client" in namespace:
                    namespace["openai_client"].close()  # the one apply() made here
    assert namespace["ddf"].npartitions == 6
    assert (out["status"] == "succeeded").all() and len(out) == 60
    assert {"cost_usd", "model"} <= set(out.columns)  # the preset's columns
    assert mp.stats().requests == 60
    assert sorted(made.values()) in ([1, 1], [0, 1])  # a client per process, not per partition
