"""Centralized datasets that ship with the installed packages (no download)."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 8x8 handwritten digits, offline.

  Returns:
    `(features, labels)`: float32 `[1797, 64]` pixel values scaled from 0-16
    to [0, 1], and int32 labels 0-9.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  features = (digits.data / 16.0).astype(np.float32)
  return features, digits.target.astype(np.int32)
