"""Geospatial pieces: tile grids and context windows (pure), raster IO, vectors.

May import: runtime, safeio, core.
"""
