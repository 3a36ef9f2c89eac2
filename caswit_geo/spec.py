"""What a model expects of its input and what its output classes mean.

Both travel inside every checkpoint (see ``checkpoint.py``) so that predict,
eval and train agree on band selection, value scaling and normalisation, and
so that the class raster can carry names and colours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ConfigError

IGNORE_INDEX = 255

# ImageNet statistics on [0, 1] values: the statistics Swin was pretrained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass
class InputSpec:
    """Band selection, scaling and normalisation of the imagery.

    ``bands`` are 1-based raster band indexes. Values are divided by ``scale``
    (255 for 8-bit, e.g. 65535 or a sensor maximum for 16-bit imagery), then
    normalised per band with ``mean`` and ``std`` (on the scaled values).
    Normalisation is global (stored statistics), never per tile, so tiles
    never show seams from it.
    """

    bands: tuple[int, ...] = (1, 2, 3)
    scale: float = 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tile_size: int = 512
    context_factor: int = 2
    gsd: float | None = 0.2  # ground sampling distance in CRS units (m); None = unknown

    def __post_init__(self) -> None:
        self.bands = tuple(int(b) for b in self.bands)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if not self.bands or min(self.bands) < 1:
            raise ConfigError(f"bands must be 1-based band indexes, got {list(self.bands)}")
        if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ConfigError(
                f"mean/std need one value per band ({len(self.bands)} bands), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if self.scale <= 0 or any(s <= 0 for s in self.std):
            raise ConfigError("scale and std must be positive")
        if self.context_factor < 1:
            raise ConfigError(f"context factor must be >= 1, got {self.context_factor}")

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) or (B, C, H, W) raw band values -> float32 model input."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (x.astype(np.float32) / np.float32(self.scale) - mean) / std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(**d)


@dataclass
class ClassTable:
    """Class ids, names and colours; ``weights`` are loss weights (0 = not trained)."""

    classes: list[ClassInfo] = field(default_factory=list)
    weights: list[float] | None = None

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ConfigError(f"class ids must be 0..K-1 in order, got {ids}")
        if len(ids) > 255:
            raise ConfigError("at most 255 classes (255 is nodata / ignore)")
        if self.weights is not None and len(self.weights) != len(ids):
            raise ConfigError(f"{len(self.weights)} class weights for {len(ids)} classes")

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
    def from_dict(cls, d: dict) -> "ClassTable":
        classes = [ClassInfo(int(c["id"]), str(c["name"]), tuple(int(v) for v in c["color"])) for c in d["classes"]]
        return cls(classes, d.get("weights"))

    @classmethod
    def generic(cls, num_classes: int) -> "ClassTable":
        """``class_0`` ... with distinct colours, for models built without a class table."""
        rng = np.random.default_rng(0)
        colors = rng.integers(0, 256, size=(num_classes, 3))
        return cls([ClassInfo(i, f"class_{i}", tuple(int(v) for v in colors[i])) for i in range(num_classes)])


# The 19 COSIA classes of FLAIR-HUB: names and colours of IGN's QGIS style
# flair-hub-qgis-style-cosia-num.qml (DATASETS.md). IGN's training config
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
