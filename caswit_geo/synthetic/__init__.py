"""Synthetic georeferenced orthophoto mosaics with land-cover labels.

Real aerial data sets cannot ship with the project, so this generator makes
data on which the value of the LR context can be measured honestly: some
classes are decided by what a tile shows, two only by what lies around it.

Classes (ids in :mod:`.classes`):

- decided by the HR tile: ``building`` (roof rectangles: sloped halves and
  ridge or flat with parapet, shadows to the south-east), ``road`` (4-6 m,
  dashed centre line from 5 m), ``paved`` (yards, farmyards),
  ``water`` (lakes, ponds, rivers), ``trees`` (crowns: forests, hedges,
  clumps), ``cropland`` (furrowed fields: colour, direction and spacing
  vary; one colour is grass green);
- decided by the context only (:data:`CONTEXT_CLASSES`): ``park`` and
  ``meadow``. Both are grass, rendered by one texture process drawn over the
  whole frame before the layout is read; a grass pixel's value never depends
  on which of the two it is.

The rule (exact, applied to the final class map):

    A grass patch is a 4-connected component of grass pixels. Its ring is
    every pixel within Chebyshev distance D = ``rule_distance`` (48 px, 24 m
    at 0.5 m) of the patch and outside it, holes included, clipped to the
    mosaic. The patch is **park** if buildings cover at least
    f = ``rule_min_building_fraction`` (8 %) of its ring, **meadow**
    otherwise (and when the ring is empty).

Parks are town blocks left as grass, at most 210 px (105 m) on their short
side, so a 128 px tile often sees nothing but grass while its 256 px
context window reaches the streets and houses around. The generator keeps
patches away from the threshold (a park borders no park and mostly town
blocks; no rural grass borders a town; farmyards put a few buildings near
some meadows): over 30 default mosaics, 95 % of parks have ring fractions
above 0.15 (a few at the edge of a town fall under 8 % and are meadows),
meadows stay under 0.05. Park and meadow are each about 9 % of the pixels.

Mosaic ``i`` of a split is a pure function of (seed, split, i) and the
scene settings. :func:`generate_dataset` writes the ``tiles`` layout;
:func:`write_sample_mosaic` writes one standalone orthophoto.

May import: geo, runtime, safeio, core.
"""

from caswit_geo.synthetic.classes import (
    BUILDING,
    CONTEXT_CLASSES,
    CROPLAND,
    HR_CLASSES,
    MEADOW,
    PARK,
    PAVED,
    ROAD,
    TREES,
    WATER,
    synthetic_classes,
)
from caswit_geo.synthetic.dataset import DatasetSummary, generate_dataset, mosaic_transform, write_sample_mosaic
from caswit_geo.synthetic.rule import name_grass
from caswit_geo.synthetic.scene import generate_scene, scene_rng
from caswit_geo.synthetic.settings import SPLITS, SyntheticConfig

__all__ = [
    "BUILDING", "ROAD", "PAVED", "WATER", "TREES", "CROPLAND", "PARK", "MEADOW",
    "CONTEXT_CLASSES", "HR_CLASSES", "SPLITS",
    "SyntheticConfig", "DatasetSummary",
    "generate_scene", "generate_dataset", "write_sample_mosaic",
    "scene_rng", "mosaic_transform", "name_grass", "synthetic_classes",
]
