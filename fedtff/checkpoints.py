"""Server-state checkpoints that a crash can never corrupt.

A checkpoint is `<dir>/round-<N>.npz` holding the flattened server state (every
leaf as a numpy array) plus the round number and the run's elapsed seconds.
It is written to a temporary file, fsynced and renamed into place, so a
`kill -9` mid-write leaves the previous checkpoint intact; partial files are
ignored and removed on the next start.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tempfile
from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

_PATTERN = re.compile(r'round-(\d+)\.npz$')
_ROUND_KEY, _ELAPSED_KEY = '__round__', '__elapsed_s__'


class CheckpointMismatchError(ValueError):
  """A checkpoint whose structure differs from the process's state."""


def _path(directory: str, round_num: int) -> str:
  return os.path.join(directory, f'round-{round_num:06d}.npz')


def _fsync_dir(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def save(directory: str, round_num: int, state: Any, *, elapsed_s: float,
         keep: int = 2) -> str:
  """Atomically writes `state` after `round_num`; keeps the newest `keep` files."""
  os.makedirs(directory, exist_ok=True)
  arrays = {f'leaf_{i:05d}': np.asarray(leaf) for i, leaf in enumerate(tf.nest.flatten(state))}
  arrays[_ROUND_KEY] = np.asarray(round_num)
  arrays[_ELAPSED_KEY] = np.asarray(elapsed_s)
  # The zip is built in memory and written in one call: np.savez straight into a
  # file that fails mid-write (a full disk) leaves a half-closed ZipFile whose
  # __del__ reports a second error after ours.
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path = _path(directory, round_num)
  try:
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  except OSError as e:
    raise OSError(e.errno, f'Cannot write the checkpoint {path} ({e.strerror})') from None
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buffer.getbuffer())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
    _fsync_dir(directory)
  except BaseException as e:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    if isinstance(e, OSError):
      raise OSError(e.errno, f'Cannot write the checkpoint {path} ({e.strerror})') from None
    raise
  for old_round in rounds(directory)[:-keep]:
    os.remove(_path(directory, old_round))
  return _path(directory, round_num)


def rounds(directory: str) -> list:
  """The rounds that have a checkpoint in `directory`, ascending."""
  found = [_PATTERN.search(p) for p in glob.glob(os.path.join(directory, 'round-*.npz'))]
  return sorted(int(m.group(1)) for m in found if m)


def remove_partial_files(directory: str) -> None:
  """Deletes temporary files that an interrupted `save` left behind."""
  for path in glob.glob(os.path.join(directory, '.tmp-*')):
    os.remove(path)


def _restore_leaf(template_leaf: Any, array: np.ndarray) -> Any:
  """Gives a loaded array the Python or numpy type the state had."""
  if isinstance(template_leaf, np.generic):
    return template_leaf.dtype.type(array.item())
  if isinstance(template_leaf, (bytes, str, bool, int, float)):
    return type(template_leaf)(array.item())
  return array


def _check_leaf(index: int, template_leaf: Any, array: np.ndarray) -> None:
  expected = np.shape(template_leaf)
  if array.shape != expected:
    raise CheckpointMismatchError(
        f'Checkpoint leaf {index} has shape {array.shape}, the process state expects '
        f'{expected}; was the checkpoint written with another model or algorithm?')


def restore_latest(directory: str, template: Any) -> Optional[Tuple[Any, int, float]]:
  """Returns `(state, round_num, elapsed_s)` of the newest checkpoint, or None.

  Args:
    directory: The checkpoint directory.
    template: A state of the same process (e.g. `process.initialize()`),
      whose structure the saved leaves are packed into.

  Raises:
    CheckpointMismatchError: If the checkpoint does not fit `template`.
  """
  available = rounds(directory)
  if not available:
    return None
  with np.load(_path(directory, available[-1]), allow_pickle=False) as saved:
    template_leaves = tf.nest.flatten(template)
    keys = sorted(k for k in saved.files if k.startswith('leaf_'))
    if len(keys) != len(template_leaves):
      raise CheckpointMismatchError(
          f'Checkpoint holds {len(keys)} state leaves, the process state has '
          f'{len(template_leaves)}; was it written with another model or algorithm?')
    leaves = []
    for index, (key, template_leaf) in enumerate(zip(keys, template_leaves)):
      _check_leaf(index, template_leaf, saved[key])
      leaves.append(_restore_leaf(template_leaf, saved[key]))
    state = tf.nest.pack_sequence_as(template, leaves)
    return state, int(saved[_ROUND_KEY]), float(saved[_ELAPSED_KEY])
