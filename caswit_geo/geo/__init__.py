"""Geospatial pieces: tile grids and context windows (pure), raster IO, vectors."""
