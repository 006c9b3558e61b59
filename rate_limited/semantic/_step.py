"""``SemanticStep``: a SemanticCache bound to one Runner's store, as the engine uses it.

The engine calls it twice, whatever shape the engine takes:

* ``await step.lookup(calls, loop)`` once per run, after the exact store was read and
  before any call is admitted. Every unfinished call that can be compared is embedded (in
  the embedder's batches, in a worker thread, so the loop and Ctrl-C stay responsive)
  and searched in the index. A close enough entry whose outcome is still in the store
  answers the call: it succeeds without being sent, its ``semantic`` says with what. A
  call close to an *earlier call of the same run* waits for that call instead (it is
  returned in the set the engine must not admit): when the earlier one succeeds it takes
  its answer, when it fails the follower is sent after all.
* ``step.settled(call)`` when a call ends: a paid-for success is added to the index (the
  writes go out together, at the end of the loop's pass), and the calls waiting for it
  are answered or released.

Nothing here fails a run. An embedder or an index that raises leaves the calls it was for
to be sent as usual, with a ``SemanticCacheWarning`` (never answered silently).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rate_limited.exceptions import ConfigurationError, SemanticCacheWarning
from rate_limited.outcomes import Status
from rate_limited.semantic._cache import SemanticCache
from rate_limited.semantic._embed import embed_texts, numpy_module
from rate_limited.semantic._index import Candidate, Partition
from rate_limited.semantic._index import similarity as clip_similarity
from rate_limited.semantic._match import SemanticMatch, SemanticStats
from rate_limited.semantic._text import redact

if TYPE_CHECKING:
    import numpy

    from rate_limited.calls import Call
    from rate_limited.stores import Store, StoredOutcome

__all__ = ["SemanticStats", "SemanticStep"]

logger = logging.getLogger("rate_limited")

_BLOCK = 256  # calls of one partition compared with each other at once


@dataclasses.dataclass(slots=True)
class _Probe:
    """One looked-up call: where it is compared, its text, its vector."""

    call: Call
    partition: str
    text: str  # redacted, normalized: what the guards and the index see
    vector: numpy.ndarray[Any, Any]


def warn(message: str) -> None:
    """A SemanticCacheWarning; if a filter makes it an error, it is logged instead (it is
    raised on the engine's thread, which must go on)."""
    try:
        warnings.warn(message, SemanticCacheWarning, stacklevel=2)
    except Exception:
        logger.error("%s", message)


class SemanticStep:
    """The semantic cache of one Runner: ``lookup`` before admission, ``settled`` after."""

    @classmethod
    def bind(cls, cache: object, store: Store | None, *, refresh: bool) -> SemanticStep:
        """``Runner(semantic_cache=cache, store=store, refresh=refresh)``'s step, or a
        ``ConfigurationError`` saying what is missing."""
        if not isinstance(cache, SemanticCache):
            raise ConfigurationError(
                f"semantic_cache must be a rate_limited.semantic.SemanticCache or None, got "
                f"{cache!r}."
            )
        if store is None:
            raise ConfigurationError(
                "semantic_cache= answers calls with the stored outcomes of earlier ones, so it "
                "needs a store: pass store='runs.db' (kept across kernel restarts), "
                "'redis://...' or 'memory://' (this process only)."
            )
        return cls(cache, store, lookups=not refresh)

    def __init__(self, cache: SemanticCache, store: Store, *, lookups: bool = True) -> None:
        self.cache = cache
        self.store = store
        #: False (``refresh=True``): nothing is answered, successes are still indexed.
        self.lookups = lookups
        self.index = cache.index(store)
        #: This run's counters.
        self.stats = SemanticStats()
        self._probes: dict[Call, _Probe] = {}
        self._followers: dict[Call, list[tuple[Call, float]]] = {}
        self._pending: list[_Probe] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False

    def check(self, call: Call) -> None:
        """At ``schedule()``: a ``text=`` that can't split this call is an error now."""
        self.cache.split(call)

    # -- before admission -----------------------------------------------------------------
    async def lookup(self, calls: Sequence[Call], loop: asyncio.AbstractEventLoop) -> set[Call]:
        """Answer what the cache can; return the calls that wait for an earlier one."""
        self._loop = loop
        self.stats = SemanticStats()
        self._probes, self._followers = {}, {}
        groups = self._unfinished_by_key(calls)
        texts: list[tuple[Call, str, str]] = []
        failed: list[str] = []
        for group in groups.values():
            try:
                found = self.cache.split(group[0])
            except ConfigurationError as exc:
                failed.append(str(exc))
                continue
            if found is None:
                self.stats.skipped += len(group)
            else:
                compared, partition = found
                texts.append((group[0], self.cache.normalized(redact(compared)), partition))
                self.stats.looked_up += len(group)
        if failed:
            warn(f"{len(failed)} calls were sent without a semantic lookup: {failed[0]}")
        if not texts:
            return set()
        try:
            vectors = await self._embed([text for _, text, _ in texts], loop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.looked_up = 0
            warn(
                f"the semantic cache's embedder failed ({type(exc).__name__}: {exc}); "
                f"{len(texts)} calls are sent without a semantic lookup"
            )
            return set()
        probes = [
            _Probe(call, partition, text, vector)
            for (call, text, partition), vector in zip(texts, vectors, strict=True)
        ]
        self._probes = {probe.call: probe for probe in probes}
        if not self.lookups:
            return set()
        stored = self._stored_candidates(probes)
        waiting: set[Call] = set()
        by_partition: dict[str, list[int]] = {}
        for i, probe in enumerate(probes):
            by_partition.setdefault(probe.partition, []).append(i)
        for rows in by_partition.values():
            self._decide([probes[i] for i in rows], [stored[i] for i in rows], groups, waiting)
        return waiting

    @staticmethod
    def _unfinished_by_key(calls: Sequence[Call]) -> dict[str, list[Call]]:
        groups: dict[str, list[Call]] = {}
        for call in calls:
            status = call.status
            if call.key is not None and not status.is_final and status is not Status.RUNNING:
                groups.setdefault(call.key, []).append(call)
        return groups

    async def _embed(
        self, texts: list[str], loop: asyncio.AbstractEventLoop
    ) -> numpy.ndarray[Any, Any]:
        """Unit vectors of ``texts`` (each distinct text once), a batch per worker job."""
        np = numpy_module()
        unique = list(dict.fromkeys(texts))
        embedder = self.cache.embedder
        size = embedder.batch_size
        parts = []
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            parts.append(await loop.run_in_executor(None, embed_texts, embedder, batch))
        matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
        dimensions = {part.shape[1] for part in parts}
        if len(dimensions) > 1:
            raise ValueError(f"the embedder returned vectors of sizes {sorted(dimensions)}")
        row = {text: i for i, text in enumerate(unique)}
        result: numpy.ndarray[Any, Any] = matrix[[row[text] for text in texts]]
        return result

    def _stored_candidates(self, probes: list[_Probe]) -> list[list[tuple[Candidate, Any]]]:
        """Per probe, the index entries close enough that pass the guards, closest first,
        each with its stored outcome (entries whose outcome is gone are left out)."""
        np = numpy_module()
        cache = self.cache
        found: list[list[Candidate]] = [[] for _ in probes]
        by_partition: dict[str, list[int]] = {}
        for i, probe in enumerate(probes):
            by_partition.setdefault(probe.partition, []).append(i)
        try:
            for partition, rows in by_partition.items():
                vectors = np.stack([probes[i].vector for i in rows])
                for i, candidates in zip(
                    rows, self.index.search(partition, vectors, cache.candidates), strict=True
                ):
                    found[i] = [
                        c
                        for c in candidates
                        if c.similarity >= cache.threshold
                        and cache.passes_guards(probes[i].text, cache.normalized(c.text))
                    ]
            keys = list({c.key for candidates in found for c in candidates})
            records: dict[str, StoredOutcome] = self.store.get_many(keys) if keys else {}
        except Exception as exc:
            warn(
                f"the semantic index could not be searched ({type(exc).__name__}: {exc}); "
                "calls are only compared with each other in this run"
            )
            return [[] for _ in probes]
        finally:
            for problem in self.index.take_problems()[:3]:
                warn(problem)
        return [
            [
                (c, records[c.key])
                for c in candidates
                if c.key in records and records[c.key].status == "succeeded"
            ]
            for candidates in found
        ]

    def _decide(
        self,
        probes: list[_Probe],
        stored: list[list[tuple[Candidate, Any]]],
        groups: dict[str, list[Call]],
        waiting: set[Call],
    ) -> None:
        """In schedule order: answered from the store, waiting for an earlier call of this
        run, or sent (and then a leader others may wait for)."""
        np = numpy_module()
        cache = self.cache
        leaders = Partition()  # this run's sent calls of the partition, by key
        by_key: dict[str, _Probe] = {}
        for start in range(0, len(probes), _BLOCK):
            block = probes[start : start + _BLOCK]
            matrix = np.stack([p.vector for p in block])
            earlier = leaders.search(matrix, cache.candidates)
            within = matrix @ matrix.T
            block_leaders: list[int] = []
            for j, probe in enumerate(block):
                group = groups[probe.call.key]  # type: ignore[index]
                hit = stored[start + j][0] if stored[start + j] else None
                if hit is not None:
                    self._answer_from_store(group, *hit)
                    continue
                options = [(c.similarity, by_key[c.key]) for c in earlier[j]]
                options += [(clip_similarity(within[j, i]), block[i]) for i in block_leaders]
                leader = self._closest(probe, options)
                if leader is not None:
                    self._followers.setdefault(leader[1].call, []).append((probe.call, leader[0]))
                    waiting.add(probe.call)
                    continue
                block_leaders.append(j)
            for j in block_leaders:
                leaders.add(block[j].call.key, block[j].text, block[j].vector)  # type: ignore[arg-type]
                by_key[block[j].call.key] = block[j]  # type: ignore[index]

    def _closest(
        self, probe: _Probe, options: list[tuple[float, _Probe]]
    ) -> tuple[float, _Probe] | None:
        cache = self.cache
        options.sort(key=lambda option: -option[0])
        for similarity, other in options:
            if similarity < cache.threshold:
                return None
            if cache.passes_guards(probe.text, other.text):
                return similarity, other
        return None

    def _answer_from_store(self, group: list[Call], candidate: Candidate, record: Any) -> None:
        saved = dict(record.usage)
        match = SemanticMatch(candidate.key, candidate.text, candidate.similarity, saved)
        for call in group:
            call.result = record.result
            call.status = Status.SUCCEEDED
            call.from_store = True
            call.usage = {}
            call.semantic = match
            self.stats.count_hit(record.usage)
            self._probes.pop(call, None)

    # -- after a call ends ------------------------------------------------------------------
    def settled(self, call: Call) -> tuple[list[Call], list[Call]]:
        """``call`` ended: index it if it paid for a success. Returns the calls waiting for
        it that it answered (now succeeded) and those it could not (to be sent)."""
        probe = self._probes.pop(call, None)
        followers = self._followers.pop(call, ())
        if call.status is not Status.SUCCEEDED:
            return [], [follower for follower, _ in followers]
        if probe is not None and call.semantic is None:
            self._pending.append(probe)
            if not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self.flush)
        answered = []
        usage = dict(call.usage or {})
        for follower, similarity in followers:
            text = probe.text if probe is not None else ""
            follower.result = call.result
            follower.status = Status.SUCCEEDED
            follower.semantic = SemanticMatch(call.key or "", text, similarity, dict(usage))
            self._probes.pop(follower, None)
            self.stats.count_hit(usage)
            answered.append(follower)
        return answered, []

    def flush(self) -> None:
        """Write the entries of the calls that succeeded since the last flush."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        np = numpy_module()
        by_partition: dict[str, list[_Probe]] = {}
        for probe in pending:
            by_partition.setdefault(probe.partition, []).append(probe)
        try:
            for partition, probes in by_partition.items():
                entries = [(p.call.key or "", p.text) for p in probes]
                self.index.add(partition, entries, np.stack([p.vector for p in probes]))
        except Exception as exc:
            warn(
                f"could not add {len(pending)} entries to the semantic index "
                f"({type(exc).__name__}: {exc}); later runs won't find them"
            )

    def close(self) -> None:
        """Write what is pending and close the index (when the Runner owns the store)."""
        self.flush()
        self.index.close()
