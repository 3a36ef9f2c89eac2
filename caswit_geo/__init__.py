"""caswit-geo: land-cover maps from aerial orthophotos with CASWiT."""

__version__ = "0.1.0"

from .build import build_model  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["__version__", "build_model", "load_checkpoint", "save_checkpoint"]
