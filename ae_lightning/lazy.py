"""Importing when first used: packages whose names are imported at their first use, so that importing one
part does not import all, and objects named by a dotted path (a config's `class_path`)."""

from collections.abc import Callable
from importlib import import_module
from typing import Any


def import_object(path: str) -> Any:
    """The object at a dotted import path (`torch.optim.Adam`), or None when there is none."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(import_module(module_name), name, None)
    except (ImportError, ValueError):
        return None


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
