"""Engines: plain functions that take a config and return results.

May import: model, geo, data, synthetic, runtime, safeio, core.
"""
