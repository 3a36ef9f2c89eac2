"""Numeric bounds of settings: declared once beside each dataclass field, checked in one place.

A config field states its bounds where it is defined::

    batch_size: int = bounded(8, ge=1)
    min_area: float | None = bounded(None, ge=0)  # None = not given, never checked

and every engine calls :func:`check_settings` on its config first, before it
opens a file or builds a model. The check refuses NaN and infinities in
every float field (bounded or not; a field may allow them with
``finite=False``), and values outside a field's bounds, naming the
command-line flag::

    --min-area must be a finite number >= 0, got nan

Tuples of numbers (``mean``, ``bands``) are checked value by value. A field
redefined in a subclass (a new default) keeps the bounds of its base class
unless it declares its own. Nothing here imports more than the standard
library: configs stay cheap to import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_KEY = "caswit_bounds"


@dataclass(frozen=True)
class Bounds:
    """Allowed values of a number: ``ge <= x``, ``gt < x``, ``x <= le``, ``x < lt``, ``x % multiple_of == 0``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    finite: bool = True
    flag: str | None = None  # None: "--" + the field name with dashes

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        text = " and ".join(parts)
        if self.multiple_of:
            text += (" and " if text else "") + f"a multiple of {self.multiple_of}"
        return text

    def allows(self, x: float) -> bool:
        return not (
            (self.ge is not None and not x >= self.ge)
            or (self.gt is not None and not x > self.gt)
            or (self.le is not None and not x <= self.le)
            or (self.lt is not None and not x < self.lt)
            or (self.multiple_of and x % self.multiple_of)
        )


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds) -> Any:
    """A dataclass field with bounds (keywords of :class:`Bounds`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: Bounds(**bounds)})


def check_number(flag: str, value: Any, bounds: Bounds | None = None, **kw) -> None:
    """Raise ConfigError naming ``flag`` unless ``value`` (a number, or a tuple of them) is allowed."""
    bounds = bounds or Bounds(**kw)
    values = value if isinstance(value, (tuple, list)) else (value,)
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue  # not a number: the field's type check is elsewhere
        is_int = isinstance(x, int)
        # NaN fails every comparison: refused by any bound, and by default anyway
        if (not is_int and bounds.finite and not math.isfinite(x)) or not bounds.allows(x):
            kind = "an integer" if is_int else ("a finite number" if bounds.finite else "a number")
            rule = bounds.describe()
            got = ",".join(_show(v) for v in values) if len(values) > 1 else _show(x)
            raise ConfigError(f"{flag} must be {kind}{' ' + rule if rule else ''}, got {got}")


def check_settings(config: Any) -> None:
    """Check every numeric field of the dataclass ``config`` (see the module docstring)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        bounds = field_bounds(type(config), f.name) or Bounds()
        check_number(bounds.flag or "--" + f.name.replace("_", "-"), value, bounds)


def field_bounds(cls: type, name: str) -> Bounds | None:
    """The bounds of field ``name``: its own, else those of the nearest base class that declares some."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and _KEY in f.metadata:
            return f.metadata[_KEY]
    return None


def _show(x: Any) -> str:
    return repr(x) if isinstance(x, float) and math.isfinite(x) else str(x)
