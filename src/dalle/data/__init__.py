"""Datasets: the built-in shapes, image-caption folders, tar shards and pre-encoded token files.
:func:`open_data` picks one from a ``--data`` value; every stage reads it through
:class:`ImageTextData`."""

from dalle.data.sources import FolderData, ImageTextData, ShapesData, ShardData, open_data

__all__ = ["FolderData", "ImageTextData", "ShapesData", "ShardData", "open_data"]
