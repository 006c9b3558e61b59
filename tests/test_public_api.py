"""The public surface: ``__all__`` is exactly what the package exports, 0.4's paths work."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
from typing import Any

import pytest
from packaging.version import Version

import rate_limited

EXPORTED_DUNDERS = {"__version__"}
FUTURE_ANNOTATIONS = importlib.import_module("__future__").annotations


def public_names(module: Any) -> list[str]:
    """Names a user can reach on the module, as httpx's test of its ``__all__`` counts them:
    not private, not a submodule, not the ``annotations`` of ``from __future__``."""
    return sorted(
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name in EXPORTED_DUNDERS)
        and not inspect.ismodule(value)
        and value is not FUTURE_ANNOTATIONS
    )


def test_all_lists_exactly_the_public_names() -> None:
    assert rate_limited.__all__ == public_names(rate_limited)


def test_all_is_sorted_without_duplicates() -> None:
    assert rate_limited.__all__ == sorted(set(rate_limited.__all__))


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, Any] = {}
    exec("from rate_limited import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(rate_limited.__all__)


@pytest.mark.parametrize("name", rate_limited.__all__)
def test_every_exported_name_is_defined(name: str) -> None:
    assert getattr(rate_limited, name) is not None


@pytest.mark.parametrize(
    ("module", "name"),
    [
        pytest.param("rate_limited.runner", "Runner", id="runner.Runner"),
        pytest.param("rate_limited.resources", "Resource", id="resources.Resource"),
        pytest.param("rate_limited.exceptions", "ValidationError", id="exceptions.ValidationError"),
        pytest.param("rate_limited.calls", "Call", id="calls.Call"),
    ],
)
def test_04_import_paths(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name)
    assert value is getattr(rate_limited, name)


def test_04_call_api_is_there() -> None:
    from rate_limited.calls import Call

    assert callable(Call.get_argument)
    assert isinstance(inspect.getattr_static(Call, "num_retries"), property)


def test_exceptions_derive_from_the_package_base_and_are_exported() -> None:
    from rate_limited import exceptions, stores

    for name in exceptions.__all__:
        error = getattr(exceptions, name)
        if issubclass(error, Warning):
            assert issubclass(error, rate_limited.RateLimitedWarning), name
            assert issubclass(error, UserWarning), name
        else:
            assert issubclass(error, rate_limited.RateLimitedError), name
        reachable = getattr(rate_limited, name, None) or getattr(stores, name, None)
        assert reachable is error, f"{name} is not exported from rate_limited or its stores"


def test_04_base_exception_alias_is_the_package_base() -> None:
    from rate_limited import exceptions

    assert exceptions.BaseException is rate_limited.RateLimitedError


def test_py_typed_ships() -> None:
    marker = importlib.resources.files("rate_limited").joinpath("py.typed")
    assert marker.is_file()


def test_version_is_a_pep_440_string() -> None:
    assert isinstance(rate_limited.__version__, str)
    assert str(Version(rate_limited.__version__)) == rate_limited.__version__


def test_public_classes_and_functions_are_named_as_imported() -> None:
    import dataclasses
    import inspect

    import rate_limited

    for name in rate_limited.__all__:
        obj = getattr(rate_limited, name)
        if (isinstance(obj, type) or inspect.isfunction(obj)) and not dataclasses.is_dataclass(obj):
            assert obj.__module__ == "rate_limited", name
    assert repr(rate_limited.Runner) == "<class 'rate_limited.Runner'>"
