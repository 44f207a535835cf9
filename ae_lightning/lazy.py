"""Packages whose names are imported when first used, so that importing one part does not import all."""

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, modules: dict[str, str]) -> tuple[list[str], Callable[[str], Any], Callable]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose names (keys of `modules`) come from the
    modules named by the values, imported at the first use of a name."""
    names = sorted(modules)

    def getattr_(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(modules[name]), name)

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
