"""How much of a split is on disk: an error, or with ``allow_missing`` a warning and a record.

A split that names patches or images the tree lacks would otherwise be
scored on the rest, silently changing the benchmark. So a missing entry is
an error naming how many and the first few, unless the user allows it;
then the dataset keeps a :class:`SplitCoverage` that reports and logs show.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from caswit_geo.core.errors import DatasetError

SHOWN = 5  # missing ids named in a message
RECORDED = 100  # missing ids kept in a report


@dataclass(frozen=True)
class SplitCoverage:
    """``requested`` entries of ``source``, of which ``used`` are on disk; ``missing`` their ids (first 100)."""

    source: str
    requested: int
    used: int
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"source": self.source, "requested": self.requested, "used": self.used,
                "missing": self.requested - self.used, "missing_ids": list(self.missing)}


def check_coverage(
    source: str, requested: list[str], missing: list[str], *, allow_missing: bool, where: str, what: str = "patches",
    why: str = "",
) -> SplitCoverage:
    """Raise unless every requested entry is present (or ``allow_missing``: warn); return the coverage.

    ``where``: the tree the entries were looked for in; ``what``: their name ("patches", "images");
    ``why``: what is missing of each, e.g. "no image or no label file".
    """
    requested = list(dict.fromkeys(requested))
    missing = list(dict.fromkeys(missing))
    used = len(requested) - len(missing)
    coverage = SplitCoverage(source, len(requested), used, tuple(missing[:RECORDED]))
    if not missing:
        return coverage
    shown = (f"{why}: " if why else "") + ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    message = f"{source}: {len(missing)} of the {len(requested)} {what} it lists are not in {where} ({shown})"
    if used == 0:
        raise DatasetError(message)
    if not allow_missing:
        raise DatasetError(f"{message}; use --allow-missing to run on the {used} others")
    warnings.warn(f"{message}; running on the {used} others (--allow-missing)", stacklevel=3)
    return coverage
