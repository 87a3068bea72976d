"""Datasets: prepare sharded HDF5 from text, CSV or .npy, validate them, and read them.

`python -m mpirnn.data prepare|validate|info` is the command line (the format: docs/data.md).
"""
