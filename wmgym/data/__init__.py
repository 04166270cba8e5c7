"""Datasets of real-twin episodes: collection and Minari HDF5 storage."""

from wmgym.data.dataset import Episode, read_dataset, read_metadata, write_dataset

__all__ = ["Episode", "read_dataset", "read_metadata", "write_dataset"]
