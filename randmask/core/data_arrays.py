"""The one check of a data file's arrays (numpy only, no torch), shared by the models' loaders
(randmask.experiments.data) and the human study's CIFAR-10 reader (study.sets), so that what participants see and what
the models were given pass the same rules: uint8 images of the data set's shape, as many integer labels from
0 to 9, at least one image."""
from __future__ import annotations

import os

import numpy as np

from randmask.core.datasets import DATASETS, NUM_CLASSES
from randmask.core.errors import DataError


def validate_arrays(x: np.ndarray, y: np.ndarray, dataset: str, source: str | os.PathLike,
                    layout: str = "NHWC") -> None:
    """Raise one DataError naming `source` for the first problem of images `x` (in `layout`) and labels `y`."""
    c, h, w = DATASETS[dataset]
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8:
        raise DataError(f"{source}: images are {x.dtype}, expected uint8 pixels (0-255)")
    if layout == "NHWC":
        want = (h, w) if c == 1 and x.ndim == 3 else (h, w, c)
    else:
        want = (c, h, w)
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
        raise DataError(f"{source}: images have shape {tuple(x.shape)}, expected N×{'×'.join(map(str, want))} "
                        f"for {dataset}")
    if not (y.ndim == 1 and (y.dtype.kind in "iu")):
        raise DataError(f"{source}: labels are {y.dtype} of shape {tuple(y.shape)}, expected one integer per image")
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{source} holds no images")
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if len(bad):
        raise DataError(f"{source}: label {int(y[bad[0]])} of image {int(bad[0])} is outside 0-{NUM_CLASSES - 1} "
                        f"({len(bad)} such label(s))")
