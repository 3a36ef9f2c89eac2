"""Engines: plain functions that take a config and return results."""
