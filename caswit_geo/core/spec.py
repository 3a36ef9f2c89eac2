"""What a model expects of its input and what its output classes mean.

Both travel inside every checkpoint (see ``checkpoint.py``) so that predict,
eval and train agree on band selection, value scaling and normalisation, and
so that the class raster can carry names and colours. :func:`scale_warning`
is the one rule, for predict and train alike, of whether imagery's data type
fits a spec's value scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.limits import Int, Maybe, Real, Seq, Text, bounded, check_fields, from_mapping

IGNORE_INDEX = 255
MAX_CLASSES = 255  # class ids 0..254; 255 is nodata / ignore
MAX_BANDS = 32
MAX_TILE = 2048
MAX_CONTEXT_FACTOR = 8
MAX_CONTEXT_SIDE = 8192  # px of the LR context window (k x T) read for every tile

# ImageNet statistics on [0, 1] values: the statistics Swin was pretrained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassInfo:
    id: int = bounded(check=Int(0, MAX_CLASSES - 1))
    name: str = bounded(check=Text(100))
    color: tuple[int, int, int] = bounded(check=Seq(Int(0, 255), 3, 3))  # RGB

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class InputSpec:
    """Band selection, scaling and normalisation of the imagery.

    ``bands`` are 1-based raster band indexes. Values are divided by ``scale``
    (255 for 8-bit, e.g. 65535 or a sensor maximum for 16-bit imagery), then
    normalised per band with ``mean`` and ``std`` (on the scaled values).
    Normalisation is global (stored statistics), never per tile, so tiles
    never show seams from it.
    """

    bands: tuple[int, ...] = bounded((1, 2, 3), Seq(Int(1, 1024), 1, MAX_BANDS))  # 1-based
    scale: float = bounded(255.0, Real(0, 1e12, lo_open=True))
    mean: tuple[float, ...] = bounded(IMAGENET_MEAN, Seq(Real(-1e6, 1e6), 1, MAX_BANDS))
    std: tuple[float, ...] = bounded(IMAGENET_STD, Seq(Real(0, 1e6, lo_open=True), 1, MAX_BANDS))
    tile_size: int = bounded(512, Int(32, MAX_TILE, multiple=32))
    context_factor: int = bounded(2, Int(1, MAX_CONTEXT_FACTOR))
    gsd: float | None = bounded(0.2, Maybe(Real(0, 1e6, lo_open=True)))  # ground sampling distance, CRS units (m); None = unknown

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ConfigError(
                f"mean/std need one value per band ({len(self.bands)} bands), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if self.context_factor * self.tile_size > MAX_CONTEXT_SIDE:
            raise ConfigError(
                f"context factor {self.context_factor} x tile {self.tile_size} px: the context window "
                f"would exceed {MAX_CONTEXT_SIDE} px"
            )

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) or (B, C, H, W) raw band values -> float32 model input."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        y = x.astype(np.float32)  # the same operations in place: the same values, no temporaries
        y /= np.float32(self.scale)
        y -= mean
        y /= std
        return y

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, what: str = "input spec") -> "InputSpec":
        """Spec of a checkpoint header: unknown keys and values out of bounds are refused."""
        return from_mapping(cls, d, what)


# Integer data types by width: the rule below tells 8-bit imagery from wider imagery by them.
EIGHT_BIT_DTYPES = ("uint8", "int8")
WIDE_INTEGER_DTYPES = ("uint16", "int16", "uint32", "int32", "uint64", "int64")


def scale_warning(dtype: str, scale: float) -> str | None:
    """Why imagery of data type ``dtype`` looks wrongly scaled by ``scale``, or None.

    Wider-than-8-bit integers at a scale of 255 or less, signed ones
    included: a 16-bit raster normalised as 8-bit is almost surely a
    mistake, its values land far above 1. 8-bit imagery at a scale above 255
    never reaches 1. Floating-point imagery can hold any range
    (reflectances, 0..255, ...): never warned about.
    """
    if dtype in WIDE_INTEGER_DTYPES and scale <= 255:
        return f"{dtype} imagery but a value scale of {scale:g} (8-bit or less): its values reach far above 1"
    if dtype in EIGHT_BIT_DTYPES and scale > 255:
        return f"{dtype} imagery but a value scale of {scale:g} (more than 8-bit): values never reach 1"
    return None


@dataclass
class ClassTable:
    """Class ids, names and colours; ``weights`` are loss weights (0 = not trained)."""

    classes: list[ClassInfo] = field(default_factory=list)
    weights: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.classes) > MAX_CLASSES:
            raise ConfigError(f"at most {MAX_CLASSES} classes (255 is nodata / ignore), got {len(self.classes)}")
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ConfigError(f"class ids must be 0..K-1 in order, got {ids[:20]}")
        if self.weights is not None:
            self.weights = list(Seq(Real(0, 1e6), len(ids), len(ids))(self.weights, "class weights"))
            if ids and not any(self.weights):
                raise ConfigError("class weights are all 0: no class would be trained")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table entries, nodata (255) transparent black."""
        cmap = {c.id: (*c.color, 255) for c in self.classes}
        cmap[IGNORE_INDEX] = (0, 0, 0, 0)
        return cmap

    def to_dict(self) -> dict:
        return {
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes],
            "weights": self.weights,
        }

    @classmethod
    def from_dict(cls, d: dict, what: str = "classes") -> "ClassTable":
        """Class table of a header or ``classes.json`` (other keys ignored): ids, names, colours, weights checked."""
        if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
            raise ConfigError(f"{what} must be an object with a list 'classes'")
        if len(d["classes"]) > MAX_CLASSES:
            raise ConfigError(f"{what}: at most {MAX_CLASSES} classes, got {len(d['classes'])}")
        classes = [from_mapping(ClassInfo, c, f"{what}[{i}]") for i, c in enumerate(d["classes"])]
        return cls(classes, d.get("weights"))

    @classmethod
    def generic(cls, num_classes: int) -> "ClassTable":
        """``class_0`` ... with distinct colours, for models built without a class table."""
        rng = np.random.default_rng(0)
        colors = rng.integers(0, 256, size=(num_classes, 3))
        return cls([ClassInfo(i, f"class_{i}", tuple(int(v) for v in colors[i])) for i in range(num_classes)])


# The 19 COSIA classes of FLAIR-HUB: names and colours of IGN's QGIS style
# flair-hub-qgis-style-cosia-num.qml, published with the data set. IGN's training config
# calls class 18 'undefined'; the style, which is what users see in QGIS,
# calls it 'other'. 16, 17 and 18 share one dark grey there.
_FLAIR_CLASSES = [
    ("building", "#ce7079"), ("greenhouse", "#b9e2d4"), ("swimming pool", "#62d0ff"),
    ("impervious surface", "#a6aab7"), ("pervious surface", "#987752"), ("bare soil", "#bbb096"),
    ("water", "#3375a1"), ("snow", "#e9effe"), ("herbaceous vegetation", "#8cd76a"),
    ("agricultural land", "#decf55"), ("plowed land", "#d0a349"), ("vineyard", "#b08290"),
    ("deciduous", "#4c9129"), ("coniferous", "#126421"), ("brushwood", "#b5c335"),
    ("clear cut", "#e48e4d"), ("ligneous", "#222222"), ("mixed", "#222222"), ("other", "#222222"),
]

_URUR_CLASSES = [
    ("others", (0, 0, 0)), ("building", (255, 0, 0)), ("farmland", (255, 255, 0)), ("greenhouse", (0, 255, 255)),
    ("woodland", (0, 160, 0)), ("bareland", (160, 110, 60)), ("water", (0, 0, 255)), ("road", (128, 128, 128)),
]


def _hex_rgb(color: str) -> tuple[int, int, int]:
    """``"#ce7079"`` -> ``(206, 112, 121)``."""
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def flairhub_classes() -> ClassTable:
    """The 19 COSIA classes (0-based, official names and colours); 15..18 get loss weight 0 as in IGN's code."""
    classes = [ClassInfo(i, n, _hex_rgb(c)) for i, (n, c) in enumerate(_FLAIR_CLASSES)]
    return ClassTable(classes, [1.0] * 15 + [0.0] * 4)


def urur_classes() -> ClassTable:
    return ClassTable([ClassInfo(i, n, c) for i, (n, c) in enumerate(_URUR_CLASSES)])
