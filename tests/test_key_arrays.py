"""Call keys of numpy and pandas values (``_key_arrays``): by content, dtype, shape, labels."""

from __future__ import annotations

from typing import Any

import pytest

from rate_limited._keys import call_key


def complete(prompt: str, model: str = "m") -> str:
    return prompt


def test_dataframe_chunks_get_different_keys() -> None:
    """Four ``df.iloc[a:b]`` chunks once got one key (by type): one request, four copies
    of the first chunk's result."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"value": range(100), "label": [f"row {i}" for i in range(100)]})
    chunks = [frame.iloc[start : start + 25] for start in range(0, 100, 25)]
    assert len({call_key(complete, (chunk,)) for chunk in chunks}) == 4
    assert call_key(complete, (chunks[1],)) == call_key(complete, (frame.iloc[25:50].copy(),))
    renamed = chunks[0].rename(columns={"value": "other"})
    reindexed = chunks[0].set_axis(range(100, 125))
    as_float = chunks[0].astype({"value": float})
    keys = {call_key(complete, (df,)) for df in (chunks[0], renamed, reindexed, as_float)}
    assert len(keys) == 4  # column labels, index and dtypes count too
    nested = pd.DataFrame({"cells": [[1, 2], {"a": 1}]})  # unhashable cells: by their values
    assert call_key(complete, (nested,)) != call_key(
        complete, (pd.DataFrame({"cells": [[1, 2], {"a": 2}]}),)
    )


def test_series_index_and_arrays_count_by_content_dtype_and_shape() -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    assert call_key(complete, (pd.Series([1, 2], name="a"),)) != call_key(
        complete, (pd.Series([1, 2], name="b"),)
    )
    assert call_key(complete, (pd.Index([1, 2]),)) != call_key(complete, (pd.Index([1, 3]),))
    arrays = [
        np.arange(6),
        np.arange(6).reshape(2, 3),
        np.arange(6).astype(np.int32),
        np.arange(6).astype(float),
        np.arange(1, 7),
    ]
    assert len({call_key(complete, (array,)) for array in arrays}) == 5
    assert call_key(complete, (np.arange(6)[::2],)) == call_key(complete, (np.array([0, 2, 4]),))
    masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    assert call_key(complete, (masked,)) != call_key(complete, (np.ma.masked_array([1, 2, 3]),))
    assert call_key(complete, (np.array([{"a": 1}], dtype=object),)) != call_key(
        complete, (np.array([{"a": 2}], dtype=object),)
    )


def test_a_store_gives_each_dataframe_chunk_its_own_result() -> None:
    pd = pytest.importorskip("pandas")
    from rate_limited import Runner

    sent = []

    def total(chunk: Any) -> int:
        sent.append(len(chunk))
        return int(chunk["value"].sum())

    frame = pd.DataFrame({"value": range(100)})
    with Runner(total, [], store="memory://", progress=False) as runner:
        for start in range(0, 100, 25):
            runner.schedule(frame.iloc[start : start + 25])
        assert runner.run().results == [300, 925, 1550, 2175]
    assert len(sent) == 4
