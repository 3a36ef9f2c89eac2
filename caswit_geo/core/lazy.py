"""Names a package exports but imports on first use (PEP 562), so that importing it stays light."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``homes[name]`` (a module path) when ``name`` is first used."""

    def __getattr__(name: str) -> object:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
