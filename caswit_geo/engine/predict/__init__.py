"""``predict``: orthophoto mosaic -> land-cover class raster (and polygons), as a resumable job.

Reads top to bottom in :func:`predict`, three steps:

1. **plan** (``plan.py``): inputs, outputs, tile grid, units of work, context
   mode; every user error is raised here, before anything is written. Then
   the job folder (``job.py``) is created, or joined after checking that its
   plan is this one, and the destinations are claimed;
2. **run units** (``units.py``): reader, model, writer; each finished unit
   is a part file in the job folder. This is the only step a shard runs;
3. **finalize** (``finalize.py``): assemble the parts into the outputs (COG
   or GeoTIFF), polygons and preview, commit them together, remove the job.

Who runs which units: a plain run (or ``--resume``) runs every unit not
done yet; ``--shard I/N`` runs share I (a contiguous run of units balanced
by weight) and the shard that finds every unit done assembles the outputs;
under ``torchrun`` each rank runs its share of the units left, on its own
GPU, and rank 0 assembles once all ranks are done. ``--finalize`` only
assembles. Tiles follow the paper's protocol (stride = tile, no overlap)
unless ``overlap`` is given, in which case class probabilities are blended
with a Hann window.
"""

from caswit_geo.core.lazy import lazy_names
from caswit_geo.engine.predict.config import FORMATS, PredictConfig, PredictResult

__all__ = ["FORMATS", "JobInterrupted", "PredictConfig", "PredictResult", "predict", "predict_probabilities"]

# Imported on first use (PEP 562): the CLI reads PredictConfig's defaults at start-up, without torch.
_LAZY = {
    "JobInterrupted": "caswit_geo.engine.predict.run",
    "predict": "caswit_geo.engine.predict.run",
    "predict_probabilities": "caswit_geo.engine.predict.units",
}


__getattr__ = lazy_names(__name__, _LAZY)
