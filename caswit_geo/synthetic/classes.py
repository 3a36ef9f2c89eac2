"""The synthetic land-cover nomenclature: ids, names, colours, and which classes need context."""

from __future__ import annotations

from caswit_geo.core.spec import ClassInfo, ClassTable

BUILDING = 0
ROAD = 1
PAVED = 2
WATER = 3
TREES = 4
CROPLAND = 5
PARK = 6
MEADOW = 7

_CLASSES = [
    (BUILDING, "building", (219, 14, 154)),
    (ROAD, "road", (110, 110, 110)),
    (PAVED, "paved", (248, 180, 120)),
    (WATER, "water", (21, 83, 174)),
    (TREES, "trees", (25, 110, 38)),
    (CROPLAND, "cropland", (255, 230, 120)),
    (PARK, "park", (120, 230, 90)),
    (MEADOW, "meadow", (190, 215, 150)),
]

# Park and meadow share one grass texture process; only the surroundings of a
# grass patch decide between them (rule in ``synthetic/rule.py``).
CONTEXT_CLASSES: tuple[int, ...] = (PARK, MEADOW)
# Decided by what the HR tile shows: shapes, fine structures, textures.
HR_CLASSES: tuple[int, ...] = (BUILDING, ROAD, PAVED, WATER, TREES, CROPLAND)


def synthetic_classes() -> ClassTable:
    return ClassTable([ClassInfo(i, name, color) for i, name, color in _CLASSES])
