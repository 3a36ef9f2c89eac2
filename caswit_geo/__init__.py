"""caswit-geo: land-cover maps from aerial orthophotos with CASWiT."""

__version__ = "0.1.0"

from caswit_geo.core.lazy import lazy_names

__all__ = ["__version__", "build_model", "load_checkpoint", "save_checkpoint"]

# Imported on first use (PEP 562): `import caswit_geo` and the CLI's start-up must not load torch.
_LAZY = {
    "build_model": "caswit_geo.model.build",
    "load_checkpoint": "caswit_geo.model.checkpoint",
    "save_checkpoint": "caswit_geo.model.checkpoint",
}


__getattr__ = lazy_names(__name__, _LAZY)
