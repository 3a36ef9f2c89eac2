"""The class table of a polygon layer's class field, and each polygon's class id.

With a class table (``--classes classes.json``, or the names a class raster
carries), text values are matched to class names and integer values to
class ids. Without one, the field's distinct values are the classes: text
values sorted by name, integer values as given (value v is class v, so
ids 0..max; an unused id is a class without pixels), generic colours.
``--background NAME`` names the class of the pixels of a labelled area that
no polygon covers; without a table it is added to the classes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from caswit_geo.core.errors import InputError
from caswit_geo.core.spec import MAX_CLASSES, ClassInfo, ClassTable


def class_ids(
    values: np.ndarray,
    table: ClassTable | None,
    background: str | None,
    where: str,
    table_source: str = "the class table",
) -> tuple[ClassTable, np.ndarray, int | None]:
    """(class table, (N,) uint8 class id per polygon, background class id or None).

    Args:
        values: the class field's values (str or int), one per polygon.
        table: the classes the values must belong to (None: made from the values).
        background: the class name of uncovered labelled pixels (None: they are ignored).
        where: the file and field, for messages (``--labels x.gpkg, field 'code'``).
        table_source: the table's file, for messages.
    """
    counts = Counter(values.tolist())
    text = any(isinstance(v, str) for v in counts)
    if text and not all(isinstance(v, str) for v in counts):
        raise InputError(f"{where}: mixes text and integer values")
    if table is None:
        table = _table_from_values(counts, text, background, where)
    if text:
        lookup = {c.name: c.id for c in table.classes}
    else:
        lookup = {c.id: c.id for c in table.classes}
    unknown = [(v, n) for v, n in sorted(counts.items(), key=lambda kv: -kv[1]) if v not in lookup]
    if unknown:
        value, n = unknown[0]
        more = f" ({len(unknown) - 1} other unknown values)" if len(unknown) > 1 else ""
        known = ", ".join(f"{c.id} {c.name}" if not text else c.name for c in table.classes[:12])
        raise InputError(
            f"{where}: value {value!r} ({n:,} polygons) is not a class of {table_source} ({known}){more}"
        )
    ids = np.fromiter((lookup[v] for v in values.tolist()), dtype=np.uint8, count=len(values))
    bg = None
    if background is not None:
        names = table.names
        if background not in names:
            raise InputError(f"--background {background!r}: not a class of {table_source} ({', '.join(names[:12])})")
        bg = names.index(background)
    return table, ids, bg


def _table_from_values(counts: Counter, text: bool, background: str | None, where: str) -> ClassTable:
    if text:
        names = sorted(set(counts) | ({background} if background is not None else set()))
        if len(names) > MAX_CLASSES:
            raise InputError(f"{where}: {len(names)} distinct values, at most {MAX_CLASSES} classes")
        generic = ClassTable.generic(len(names))
        return ClassTable([ClassInfo(i, name, c.color) for i, (name, c) in enumerate(zip(names, generic.classes))])
    bad = [v for v in counts if not 0 <= v < MAX_CLASSES]
    if bad:
        raise InputError(f"{where}: value {bad[0]} ({counts[bad[0]]:,} polygons) is not a class id 0..{MAX_CLASSES - 1}")
    k = max(counts) + 1
    names = [str(i) for i in range(k)]
    if background is not None and background not in names:
        if k >= MAX_CLASSES:
            raise InputError(f"--background {background!r}: no class id left (ids 0..{MAX_CLASSES - 1} are taken)")
        names.append(background)
    generic = ClassTable.generic(len(names))
    return ClassTable([ClassInfo(i, name, c.color) for i, (name, c) in enumerate(zip(names, generic.classes))])
