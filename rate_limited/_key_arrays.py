"""Call keys of numpy and pandas values: by their content, hashed in bulk.

An array counts by its bytes, dtype and shape (and its mask, for ``numpy.ma``); a pandas
DataFrame, Series or Index by ``pandas.util.hash_pandas_object`` of its rows (index
included) plus its column labels, dtypes and names, so a key costs one vectorised pass,
not a walk over millions of cells. numpy and pandas are imported only when such a value
is met (both are optional). Object arrays, labels and unhashable cells go back through
the general encoder, which the caller hands in as ``canon``: it lives above this module
(``_key_values``), and importing it back here would be an import cycle.
"""

from __future__ import annotations

from typing import Any

from rate_limited._key_form import Canon, Canonicalize, Context, Unkeyable, digest, qualified

__all__ = ["canon_numpy", "canon_pandas"]


def canon_numpy(obj: Any, context: Context, canon: Canonicalize) -> Canon:
    """The canonical form of a numpy array, scalar or dtype."""
    import numpy

    if isinstance(obj, numpy.ndarray):
        kind = qualified(type(obj))
        shape: Canon = list(obj.shape)
        if obj.dtype.hasobject:  # pointers, not values: go through the items
            return ["ndarray-objects", kind, shape, canon(obj.tolist(), context)]
        form: list[Canon] = [
            "ndarray",
            kind,
            str(obj.dtype),
            obj.dtype.str,
            shape,
            digest(numpy.ascontiguousarray(obj).tobytes()),
        ]
        mask = getattr(obj, "mask", None)  # numpy.ma: the mask is part of the value
        if isinstance(mask, numpy.ndarray):
            form.append(digest(numpy.ascontiguousarray(mask).tobytes()))
        return form
    if isinstance(obj, numpy.generic):
        return canon(obj.item(), context)
    if isinstance(obj, numpy.dtype):
        return ["dtype", str(obj), obj.str]
    raise Unkeyable(obj)


def canon_pandas(obj: Any, context: Context, canon: Canonicalize) -> Canon:
    """The canonical form of a pandas DataFrame, Series, Index, array, dtype or scalar."""
    import pandas

    kind = qualified(type(obj))
    if isinstance(obj, pandas.DataFrame):
        labels: Canon = [
            "frame",
            canon(list(obj.columns), context),
            [str(dtype) for dtype in obj.dtypes],
        ]
    elif isinstance(obj, pandas.Series):
        labels = ["series", canon(obj.name, context), str(obj.dtype)]
    elif isinstance(obj, pandas.Index):
        labels = ["index", canon(list(obj.names), context), str(obj.dtype)]
    elif isinstance(obj, pandas.api.extensions.ExtensionArray):
        return ["pandas-array", kind, canon_pandas(pandas.Series(obj), context, canon)]
    elif isinstance(obj, pandas.api.extensions.ExtensionDtype):
        return ["pandas-dtype", kind, str(obj)]
    elif (
        obj is pandas.NA
        or obj is pandas.NaT
        or hasattr(obj, "isoformat")
        or kind
        in (
            "pandas._libs.interval.Interval",
            "pandas._libs.tslibs.period.Period",
        )
    ):
        return ["pandas-scalar", kind, repr(obj)]  # NA, NaT, Timestamp, Timedelta...
    else:
        raise Unkeyable(obj)
    index = (
        []
        if isinstance(obj, pandas.Index)
        else [
            canon(list(obj.index.names), context),
            str(obj.index.dtype),
        ]
    )
    try:
        rows = pandas.util.hash_pandas_object(obj, index=not isinstance(obj, pandas.Index))
        content: Canon = digest(rows.to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): go through the values instead
        values = obj.to_numpy().tolist()
        items = values if isinstance(obj, pandas.Index) else [list(obj.index), values]
        content = ["values", canon(items, context)]
    return ["pandas", kind, labels, *index, len(obj), content]
