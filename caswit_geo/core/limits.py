"""Declared bounds of the values a file can set (checkpoint headers, class tables, input specs).

A dataclass declares each field's bounds next to the field::

    num_classes: int = bounded(19, Int(1, 255))

and calls :func:`check_fields` from ``__post_init__``: every field is
converted and checked, and a value out of bounds raises a one-line
``ConfigError`` naming the field and what it accepts. A field declared
without bounds is refused as well, so a new field cannot slip through
unchecked: adding a field means adding one line.

Checks only accept what JSON can hold (numbers, text, lists, objects), never
bools for numbers, NaN or infinities, and return plain Python values.

Settings of a command (the engine config dataclasses) declare numeric bounds
with keywords, and every engine calls :func:`check_settings` first, before
it opens a file or builds a model; the error names the command-line flag::

    batch_size: int = bounded(8, ge=1)
    min_area: float | None = bounded(None, ge=0)   # None = not given, never checked

    --min-area must be a finite number >= 0, got nan

``check_settings`` refuses NaN and infinities in every float field (bounded
or not), checks tuples of numbers value by value, and a field redefined in
a subclass (a new default) keeps its base class's bounds unless it declares
its own. Nothing here imports more than the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import MISSING, field, fields
from typing import Any, Callable

from caswit_geo.core.errors import ConfigError

Check = Callable[[Any, str], Any]


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Int:
    """A whole number in ``lo..hi``, optionally a multiple of ``multiple``."""

    def __init__(self, lo: int, hi: int, multiple: int = 1) -> None:
        self.lo, self.hi, self.multiple = lo, hi, multiple

    def describe(self) -> str:
        step = f", a multiple of {self.multiple}" if self.multiple > 1 else ""
        return f"an integer in {self.lo}..{self.hi}{step}"

    def __call__(self, value: Any, name: str) -> int:
        number = value
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        if isinstance(number, bool) or not isinstance(number, numbers.Integral):
            raise ConfigError(f"{name} must be {self.describe()}, got {short_repr(value)}")
        number = int(number)
        if not self.lo <= number <= self.hi or number % self.multiple:
            raise ConfigError(f"{name} must be {self.describe()}, got {number}")
        return number


class Real:
    """A finite number in ``lo..hi``; ``lo_open``/``hi_open`` exclude the ends."""

    def __init__(self, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def describe(self) -> str:
        return f"a finite number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"

    def __call__(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{name} must be {self.describe()}, got {short_repr(value)}")
        number = float(value)
        low_ok = number > self.lo if self.lo_open else number >= self.lo
        high_ok = number < self.hi if self.hi_open else number <= self.hi
        if not (math.isfinite(number) and low_ok and high_ok):
            raise ConfigError(f"{name} must be {self.describe()}, got {number}")
        return number


class Flag:
    """``true`` or ``false``."""

    def __call__(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {short_repr(value)}")
        return value


class Text:
    """Printable text of 1..``max_len`` characters, optionally one of ``choices``."""

    def __init__(self, max_len: int = 64, choices: tuple[str, ...] | None = None) -> None:
        self.max_len, self.choices = max_len, choices

    def __call__(self, value: Any, name: str) -> str:
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{name} must be one of {', '.join(self.choices)}; got {short_repr(value)}")
            return value
        if not isinstance(value, str) or not 0 < len(value) <= self.max_len or not value.isprintable():
            raise ConfigError(f"{name} must be printable text of 1 to {self.max_len} characters, got {short_repr(value)}")
        return value


class Seq:
    """A list of ``min_len``..``max_len`` items, each checked by ``item``; returned as a tuple."""

    def __init__(self, item: Check, min_len: int, max_len: int) -> None:
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def __call__(self, value: Any, name: str) -> tuple:
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
            raise ConfigError(f"{name} must be a list, got {short_repr(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            size = str(self.min_len) if self.min_len == self.max_len else f"{self.min_len} to {self.max_len}"
            raise ConfigError(f"{name} must hold {size} values, got {len(value)}: {short_repr(value)}")
        return tuple(self.item(v, f"{name}[{i}]") for i, v in enumerate(value))


class Maybe:
    """``None`` (JSON null), or a value ``check`` accepts."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def __call__(self, value: Any, name: str) -> Any:
        return None if value is None else self.check(value, name)


class Keys:
    """An object whose keys are among ``checks`` (each optional), every value checked."""

    def __init__(self, **checks: Check) -> None:
        self.checks = checks

    def __call__(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be an object, got {short_repr(value)}")
        unknown = sorted(str(k) for k in value if k not in self.checks)
        if unknown:
            raise ConfigError(f"{name}: unknown key {unknown[0]!r} (allowed: {', '.join(self.checks)})")
        return {k: self.checks[k](v, f"{name}.{k}") for k, v in value.items()}


def bounded(
    default: Any = MISSING,
    check: Check | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    **numeric,
):
    """A dataclass field with its bounds: a ``check`` (``Int``, ``Real``, ``Text``...) or numeric
    keywords of :class:`Number` (``ge``, ``gt``, ``le``, ``lt``, ``multiple_of``, ``finite``).

    ``flag``: the name errors use for the field (default ``--`` + its name with dashes).
    """
    if check is None:
        if not numeric and flag is None:
            raise TypeError("bounded() needs a check or numeric bounds")
        check = Number(**numeric)
    elif numeric:
        raise TypeError("bounded() takes a check or numeric bounds, not both")
    metadata = {"check": check, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Convert and check every field of the dataclass ``obj`` in place (frozen ones too)."""
    for f in fields(obj):
        check = f.metadata.get("check")
        if check is None:
            raise TypeError(f"{type(obj).__name__}.{f.name} declares no bounds (use bounded())")
        value = check(getattr(obj, f.name), f"{prefix}{f.name}")
        object.__setattr__(obj, f.name, value)


def from_mapping(cls: type, data: Any, what: str):
    """``cls(**data)`` for a dict from a file: unknown keys refused by name; missing keys take the defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be an object, got {short_repr(data)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{what}: unknown key {unknown[0]!r}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
    if required:
        raise ConfigError(f"{what}: key {required[0]!r} is missing")
    try:
        return cls(**data)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


class Number:
    """A number (or a list of them, each checked): ``ge <= x``, ``gt < x``, ``x <= le``, ``x < lt``,
    ``x % multiple_of == 0``; NaN and infinities refused unless ``finite=False``. Used for settings."""

    def __init__(self, ge=None, gt=None, le=None, lt=None, multiple_of: int | None = None, finite: bool = True):
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.multiple_of, self.finite = multiple_of, finite

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

    def __call__(self, value: Any, name: str) -> Any:
        values = value if isinstance(value, (tuple, list)) else (value,)
        for x in values:
            if isinstance(x, bool) or not isinstance(x, numbers.Real):
                continue  # not a number: the field's type is checked where it is parsed
            is_int = isinstance(x, numbers.Integral)
            # NaN fails every comparison: refused by any bound, and by default anyway
            if (not is_int and self.finite and not math.isfinite(x)) or not self.allows(x):
                kind = "an integer" if is_int else ("a finite number" if self.finite else "a number")
                rule = self.describe()
                got = ",".join(_number(v) for v in values) if len(values) > 1 else _number(x)
                raise ConfigError(f"{name} must be {kind}{' ' + rule if rule else ''}, got {got}")
        return value


def check_number(flag: str, value: Any, **bounds) -> None:
    """Raise ConfigError naming ``flag`` unless ``value`` (a number, or a tuple of them) is allowed."""
    Number(**bounds)(value, flag)


def check_settings(config: Any) -> None:
    """Check every numeric field of the settings dataclass ``config`` (see the module docstring)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        check, flag = field_check(type(config), f.name)
        name = flag or "--" + f.name.replace("_", "-")
        (check if check is not None else Number())(value, name)


def field_check(cls: type, name: str) -> tuple[Check | None, str | None]:
    """(check, flag) of field ``name``: its own, else those of the nearest base class that declares some."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and "check" in f.metadata:
            return f.metadata["check"], f.metadata.get("flag")
    return None, None


def _number(x: Any) -> str:
    return repr(x) if isinstance(x, float) and math.isfinite(x) else str(x)
