"""Scene geometry: parcels, towns, streets, buildings, fields, water and trees.

The mosaic is cut into rectangular land parcels (guillotine splits, sides in
``[parcel_min, parcel_max]`` px). Parcels nearest to one or two random town
centres are urban, about ``urban_share`` of the area; the others are rural.

- Urban parcels are city blocks ringed by 10-12 px streets: *built* blocks
  (paved ground, buildings along the block edges set back 3-7 px from the
  street, sometimes a large courtyard building) or grass blocks (parks,
  see :func:`choose_kinds`).
- Rural parcels are cropland (furrowed fields), forest, lakes in grass, or
  grass (meadows). 30 % of rural parcel edges carry an 8-12 px road, 25 % a
  5 px hedge; 15 % of crop and meadow parcels hold a farmyard (paved, 1-3
  buildings). Roads from 10 px wide have a dashed centre line, in town and
  country alike, so a road in a tile does not tell the two apart.
- Every grass parcel, urban or rural, gets decorations from one
  distribution: a pond (20 %) and clumps of trees (Poisson, mean 0.5),
  kept 16 px from the parcel edge so the grass stays one patch.
- A river (half of the mosaics, 10-22 px wide) crosses the mosaic; roads
  cross it on bridges, buildings are never placed on it.

Grass is then named park or meadow by the rule in :mod:`.rule` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caswit_geo.synthetic.classes import BUILDING, CROPLAND, MEADOW, PAVED, ROAD, TREES, WATER
from caswit_geo.synthetic.rule import name_grass
from caswit_geo.synthetic.settings import SyntheticConfig
from caswit_geo.synthetic.textures import value_noise

STREET_WIDTH = 12  # px, 6 m at 0.5 m: the widest road, what blocks are set back from
ROAD_WIDTHS = (8, 10, 12)  # country roads take any, town streets the two widest
HEDGE_WIDTH = 5
DECORATION_MARGIN = 16  # px between a pond or tree clump and its parcel edge
GRASS = MEADOW  # grass before the rule names it

ROOF_COLOURS = 6  # palette size, see render.ROOF_PALETTE
CROP_COLOURS = 5  # see render.CROP_PALETTE


@dataclass(frozen=True)
class Rect:
    """Pixel rectangle [r0, r1) x [c0, c1)."""

    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def height(self) -> int:
        return self.r1 - self.r0

    @property
    def width(self) -> int:
        return self.c1 - self.c0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def inset(self, d: int) -> "Rect":
        return Rect(self.r0 + d, self.c0 + d, self.r1 - d, self.c1 - d)


@dataclass(frozen=True)
class Roof:
    rect: Rect
    gable: bool  # two sloped halves and a ridge, else flat with a parapet
    colour: int  # index into the roof palette


@dataclass(frozen=True)
class Field:
    rect: Rect
    colour: int  # index into the crop palette
    angle: float  # direction of the furrows, radians
    period: float  # px between furrows
    phase: float


@dataclass
class Parcel:
    rect: Rect
    urban: bool
    kind: str  # built | park | meadow | forest | lake | crop


@dataclass
class Layout:
    labels: np.ndarray  # (H, W) uint8 class ids, grass named by the rule
    markings: np.ndarray  # (H, W) bool painted road lines
    roofs: list[Roof] = field(default_factory=list)
    fields: list[Field] = field(default_factory=list)
    parcels: list[Parcel] = field(default_factory=list)
    ring_fractions: np.ndarray | None = None  # building share of each grass patch's ring


def split_parcels(rect: Rect, lo: int, hi: int, rng: np.random.Generator) -> list[Rect]:
    """Guillotine-split ``rect`` until every side is at most ``hi``; sides stay >= ``lo``."""
    if rect.height <= hi and rect.width <= hi:
        return [rect]
    if rect.height >= rect.width:
        cut = rect.r0 + int(rng.integers(lo, rect.height - lo + 1))
        parts = [Rect(rect.r0, rect.c0, cut, rect.c1), Rect(cut, rect.c0, rect.r1, rect.c1)]
    else:
        cut = rect.c0 + int(rng.integers(lo, rect.width - lo + 1))
        parts = [Rect(rect.r0, rect.c0, rect.r1, cut), Rect(rect.r0, cut, rect.r1, rect.c1)]
    return [p for part in parts for p in split_parcels(part, lo, hi, rng)]


def choose_towns(rects: list[Rect], size: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: the parcels nearest to 1-2 town centres, about ``share`` of the area (+-0.15)."""
    n_towns = 1 if rng.random() < 0.6 else 2
    centres = rng.uniform(0.15, 0.85, size=(n_towns, 2)) * size
    target = float(np.clip(share + rng.uniform(-0.15, 0.15), 0.0, 1.0)) if share > 0 else 0.0
    mid = np.array([[(r.r0 + r.r1) / 2, (r.c0 + r.c1) / 2] for r in rects])
    dist = np.linalg.norm(mid[:, None, :] - centres[None], axis=2).min(axis=1)
    dist *= rng.uniform(0.85, 1.15, size=len(rects))  # ragged town edge
    area = np.array([r.height * r.width for r in rects], np.float64)
    order = np.argsort(dist, kind="stable")
    before = np.cumsum(area[order]) - area[order]  # urban area before adding each parcel
    urban = np.zeros(len(rects), bool)
    urban[order[before < target * area.sum()]] = True
    return urban


def neighbours(rects: list[Rect]) -> list[list[int]]:
    """Indexes of the parcels sharing a stretch of edge with each parcel."""
    out: list[list[int]] = [[] for _ in rects]
    for i, a in enumerate(rects):
        for j in range(i + 1, len(rects)):
            b = rects[j]
            rows = min(a.r1, b.r1) - max(a.r0, b.r0)
            cols = min(a.c1, b.c1) - max(a.c0, b.c0)
            if (rows > 0 and cols == 0) or (cols > 0 and rows == 0):
                out[i].append(j)
                out[j].append(i)
    return out


def choose_kinds(rects: list[Rect], urban: np.ndarray, config: SyntheticConfig, rng: np.random.Generator) -> list[str]:
    """Parcel kinds, kept clear of the rule's threshold.

    A park is a town block whose short side is at most ``park_max_width``,
    with two thirds or more of its neighbours in town and none a park; a
    rural grass parcel (meadow or lake) never borders a town. So parks are
    ringed by built blocks that a tile's context window reaches, and meadows
    by countryside. The rule still decides every label; this only makes
    most patches clear-cut cases.
    """
    near = neighbours(rects)
    kinds = [""] * len(rects)
    for i in rng.permutation(len(rects)):  # random order, so no corner of the town is favoured
        if urban[i]:
            town = sum(bool(urban[j]) for j in near[i])
            free = (
                3 * town >= 2 * len(near[i])
                and not any(kinds[j] == "park" for j in near[i])
                and min(rects[i].height, rects[i].width) <= config.park_max_width
            )
            kinds[i] = "park" if free and rng.random() < config.park_share else "built"
        else:
            by_town = any(urban[j] for j in near[i])
            if not by_town and rng.random() < config.meadow_share:
                kinds[i] = "meadow"
            else:
                kinds[i] = str(rng.choice(["crop", "forest", "lake"], p=[0.45, 0.25, 0.3]))
                if by_town and kinds[i] == "lake":  # lakes lie in grass
                    kinds[i] = "crop"
    return kinds


def blob(rect: Rect, centre: tuple[float, float], radii: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Bool mask over ``rect``: an ellipse with a wavy edge (lakes, ponds, tree clumps)."""
    rows = np.arange(rect.r0, rect.r1, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(rect.c0, rect.c1, dtype=np.float32)[None, :] + 0.5
    d = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2
    wobble = value_noise((rect.height, rect.width), max(min(radii) / 2, 4.0), rng)
    return d + 0.35 * wobble < 1.0


def _decorate_grass(labels: np.ndarray, rect: Rect, rng: np.random.Generator) -> None:
    """Pond and tree clumps inside a grass parcel: one distribution for parks and meadows."""
    room = rect.inset(DECORATION_MARGIN)
    if room.height < 24 or room.width < 24:
        return
    n_ponds = int(rng.random() < 0.2)
    n_clumps = int(rng.poisson(0.5))
    for cls, count, rmin, rmax in ((WATER, n_ponds, 12, 30), (TREES, n_clumps, 8, 26)):
        for _ in range(count):
            ry = min(rng.uniform(rmin, rmax), room.height / 2)
            rx = min(rng.uniform(rmin, rmax), room.width / 2)
            cy = rng.uniform(room.r0 + ry, room.r1 - ry)
            cx = rng.uniform(room.c0 + rx, room.c1 - rx)
            # shrunk by 1.35 so that the wobble (up to 35 %) stays in the room
            mask = blob(room, (cy, cx), (ry / 1.35, rx / 1.35), rng)
            view = labels[room.slices]
            if (view[mask] == GRASS).all():  # never over a farmyard
                view[mask] = cls


def _farmyard(rect: Rect, rng: np.random.Generator) -> Rect | None:
    side = int(rng.integers(56, 91))
    room = rect.inset(DECORATION_MARGIN)
    if room.height < side or room.width < side:
        return None
    r0 = int(rng.integers(room.r0, room.r1 - side + 1))
    c0 = int(rng.integers(room.c0, room.c1 - side + 1))
    return Rect(r0, c0, r0 + side, c0 + side)


def _roof(rect: Rect, rng: np.random.Generator, gable_p: float = 0.6) -> Roof:
    return Roof(rect, bool(rng.random() < gable_p), int(rng.integers(0, ROOF_COLOURS)))


def block_buildings(inner: Rect, rng: np.random.Generator) -> list[Roof]:
    """Buildings along the edges of a city block's buildable area, sometimes one in the courtyard."""
    depth = int(rng.integers(18, 35))
    roofs: list[Roof] = []

    def run(a0: int, a1: int, make) -> None:
        a = a0
        while a1 - a >= 12:
            length = min(int(rng.integers(16, 51)), a1 - a)
            roofs.append(_roof(make(a, a + length), rng))
            a += length + int(rng.integers(0, 11))

    run(inner.c0, inner.c1, lambda a, b: Rect(inner.r0, a, inner.r0 + depth, b))
    if inner.height >= 2 * depth + 12:
        run(inner.c0, inner.c1, lambda a, b: Rect(inner.r1 - depth, a, inner.r1, b))
        run(inner.r0 + depth + 6, inner.r1 - depth - 6, lambda a, b: Rect(a, inner.c0, b, inner.c0 + depth))
        run(inner.r0 + depth + 6, inner.r1 - depth - 6, lambda a, b: Rect(a, inner.c1 - depth, b, inner.c1))
        court = inner.inset(depth + 14)
        if court.height >= 24 and court.width >= 24 and rng.random() < 0.5:
            h = int(rng.integers(20, court.height + 1))
            w = int(rng.integers(20, court.width + 1))
            r0 = int(rng.integers(court.r0, court.r1 - h + 1))
            c0 = int(rng.integers(court.c0, court.c1 - w + 1))
            roofs.append(_roof(Rect(r0, c0, r0 + h, c0 + w), rng, gable_p=0.0))
    return roofs


def yard_buildings(yard: Rect, rng: np.random.Generator) -> list[Roof]:
    """1-3 farm buildings at least 10 px inside the yard (their shadows stay on the yard)."""
    room = yard.inset(10)
    roofs: list[Roof] = []
    taken = np.zeros((room.height, room.width), bool)
    for _ in range(int(rng.integers(1, 4))):
        h = int(rng.integers(14, min(35, room.height) + 1))
        w = int(rng.integers(14, min(35, room.width) + 1))
        r0 = int(rng.integers(0, room.height - h + 1))
        c0 = int(rng.integers(0, room.width - w + 1))
        if taken[max(r0 - 4, 0) : r0 + h + 4, max(c0 - 4, 0) : c0 + w + 4].any():
            continue
        taken[r0 : r0 + h, c0 : c0 + w] = True
        roofs.append(_roof(Rect(room.r0 + r0, room.c0 + c0, room.r0 + r0 + h, room.c0 + c0 + w), rng))
    return roofs


def _edges(rect: Rect, size: int) -> list[tuple[str, int, int, int]]:
    """Inner edges of a parcel as (axis, position, start, end); mosaic borders left out."""
    out = []
    if rect.r0 > 0:
        out.append(("row", rect.r0, rect.c0, rect.c1))
    if rect.r1 < size:
        out.append(("row", rect.r1, rect.c0, rect.c1))
    if rect.c0 > 0:
        out.append(("col", rect.c0, rect.r0, rect.r1))
    if rect.c1 < size:
        out.append(("col", rect.c1, rect.r0, rect.r1))
    return out


def _band(edge: tuple[str, int, int, int], width: int, extend: int) -> tuple[slice, slice]:
    """Slices of a ``width`` px band centred on an edge, ``extend`` px longer at both ends."""
    axis, pos, a, b = edge
    across = slice(max(pos - width // 2, 0), pos - width // 2 + width)
    along = slice(max(a - extend, 0), b + extend)
    return (across, along) if axis == "row" else (along, across)


def _road(labels: np.ndarray, markings: np.ndarray, edge: tuple[str, int, int, int], width: int) -> None:
    """A road centred on a parcel edge; from 10 px on, a dashed centre line (town or country alike)."""
    labels[_band(edge, width, width // 2)] = ROAD
    if width < 10:
        return
    axis, pos, a, b = edge
    dashes = (np.arange(a, b) // 8) % 2 == 0  # 4 m dashes, 4 m gaps
    dashes[:STREET_WIDTH] = dashes[-STREET_WIDTH:] = False  # none across crossings
    line = markings[pos - 1 : pos + 1, a:b] if axis == "row" else markings[a:b, pos - 1 : pos + 1].T
    line[:, dashes] = True


def _river(labels: np.ndarray, rng: np.random.Generator) -> None:
    size = labels.shape[0]
    t = np.arange(size, dtype=np.float64) + 0.5
    centre = rng.uniform(0.25, 0.75) * size
    for _ in range(2):  # two meanders of different wavelengths
        wavelength = rng.uniform(0.6, 1.6) * size
        amplitude, phase = rng.uniform(0.03, 0.08) * size, rng.uniform(0, 2 * np.pi)
        centre = centre + amplitude * np.sin(2 * np.pi * t / wavelength + phase)
    half = rng.uniform(5, 11)
    across = np.arange(size, dtype=np.float64)[:, None] + 0.5
    water = np.abs(across - centre[None, :]) < half  # (across, along)
    labels[water if rng.random() < 0.5 else water.T] = WATER


def make_layout(config: SyntheticConfig, rng: np.random.Generator) -> Layout:
    """The class map of one ``config.size`` square mosaic, plus what the renderer needs to draw it."""
    size = config.size
    labels = np.full((size, size), CROPLAND, np.uint8)
    markings = np.zeros((size, size), bool)
    rects = split_parcels(Rect(0, 0, size, size), config.parcel_min, config.parcel_max, rng)
    urban = choose_towns(rects, size, config.urban_share, rng)
    kinds = choose_kinds(rects, urban, config, rng)
    parcels, fields, yards = [], [], []
    for rect, is_urban, kind in zip(rects, urban, kinds):
        parcels.append(Parcel(rect, bool(is_urban), kind))
        view = labels[rect.slices]
        if kind == "built":
            view[:] = PAVED
        elif kind in ("park", "meadow", "lake"):
            view[:] = GRASS
        elif kind == "forest":
            view[:] = TREES
        else:
            fields.append(Field(rect, int(rng.integers(0, CROP_COLOURS)), float(rng.uniform(0, np.pi)),
                                float(rng.uniform(5, 12)), float(rng.uniform(0, 2 * np.pi))))
        if kind in ("crop", "meadow") and rng.random() < 0.15:
            yard = _farmyard(rect, rng)
            if yard is not None:
                labels[yard.slices] = PAVED
                yards.append(yard)
        if kind == "lake":
            ry, rx = rng.uniform(0.25, 0.42) * rect.height, rng.uniform(0.25, 0.42) * rect.width
            centre = ((rect.r0 + rect.r1) / 2, (rect.c0 + rect.c1) / 2)
            view[blob(rect, centre, (ry, rx), rng)] = WATER
        elif kind in ("park", "meadow"):
            _decorate_grass(labels, rect, rng)

    if rng.random() < 0.5:
        _river(labels, rng)

    # rural roads and hedges first: where a rural parcel meets a town, the street wins
    for parcel in parcels:
        if parcel.urban:
            continue
        for edge in _edges(parcel.rect, size):
            u = rng.random()
            if u < 0.3:
                _road(labels, markings, edge, int(rng.choice(ROAD_WIDTHS)))
            elif u < 0.55:
                band = labels[_band(edge, HEDGE_WIDTH, 0)]
                band[band != WATER] = TREES
    for parcel in parcels:
        if parcel.urban:
            for edge in _edges(parcel.rect, size):
                _road(labels, markings, edge, int(rng.choice(ROAD_WIDTHS[1:])))

    roofs: list[Roof] = []
    for parcel in parcels:
        if parcel.kind == "built":
            inner = parcel.rect.inset(STREET_WIDTH // 2 + int(rng.integers(3, 8)))
            roofs += block_buildings(inner, rng)
    for yard in yards:
        roofs += yard_buildings(yard, rng)
    # a building stands on paved ground only (a river or road may have cut the block)
    roofs = [roof for roof in roofs if (labels[roof.rect.slices] == PAVED).all()]
    for roof in roofs:
        labels[roof.rect.slices] = BUILDING

    labels, fractions = name_grass(labels, config.rule_distance, config.rule_min_building_fraction)
    return Layout(labels, markings, roofs, fields, parcels, fractions)
