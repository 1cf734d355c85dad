"""Loss grids: the grid contract (load, validate, save, CSV), simulated worlds with known parameters, and converters for real third-party grids.

The bottom layer: it imports nothing else of bayescale but errors and atomic file writes.
"""
