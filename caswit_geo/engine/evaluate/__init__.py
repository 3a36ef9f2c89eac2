"""``eval``: scores of a model on a split, or of a map against a reference raster.

- ``evaluation``: the engine (``evaluate``, ``evaluate_rasters``);
- ``metrics``: confusion matrices and the scores IGN's code computes;
- ``report``: JSON, CSV and the confusion-matrix PNG.
"""
