"""Server-state checkpoints that a crash can never corrupt.

A checkpoint is `<dir>/round-<N>.npz` holding the flattened server state (every
leaf as a numpy array) plus the round number and the run's elapsed seconds.
It is written to a temporary file, fsynced and renamed into place, so a
`kill -9` mid-write leaves the previous checkpoint intact; partial files are
ignored and removed on the next start. A checkpoint damaged after it was
written (truncated, emptied, overwritten) is named, set aside as
`<name>.damaged`, and the newest intact one is restored instead.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tempfile
import zipfile
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from absl import logging

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

_PATTERN = re.compile(r'round-(\d+)\.npz$')
_ROUND_KEY, _ELAPSED_KEY, _META_PREFIX = '__round__', '__elapsed_s__', '__meta__'


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
         keep: int = 2, metadata: Optional[Mapping[str, str]] = None) -> str:
  """Atomically writes `state` after `round_num`.

  Args:
    directory: The checkpoint directory (created if needed).
    round_num: The round the state is after.
    state: The server state.
    elapsed_s: The run's training seconds so far.
    keep: Keep the newest `keep` checkpoints (this one included) and delete
      older ones; 0 keeps every checkpoint.
    metadata: Strings saved with the state (e.g. the privacy ledger), given
      back by `restore_latest` as `Restored.metadata`.
  """
  if keep < 0:
    raise ValueError(f'keep must be 0 (keep every checkpoint) or positive, got {keep}.')
  os.makedirs(directory, exist_ok=True)
  arrays = {f'leaf_{i:05d}': np.asarray(leaf) for i, leaf in enumerate(tf.nest.flatten(state))}
  arrays[_ROUND_KEY] = np.asarray(round_num)
  arrays[_ELAPSED_KEY] = np.asarray(elapsed_s)
  arrays.update({_META_PREFIX + key: np.asarray(value) for key, value in (metadata or {}).items()})
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
  for old_round in (rounds(directory)[:-keep] if keep else []):
    os.remove(_path(directory, old_round))
  return _path(directory, round_num)


def rounds(directory: str) -> list:
  """The rounds that have a checkpoint in `directory`, ascending."""
  found = [_PATTERN.search(p) for p in glob.glob(os.path.join(directory, 'round-*.npz'))]
  return sorted(int(m.group(1)) for m in found if m)


def _restore_leaf(template_leaf: Any, array: np.ndarray) -> Any:
  """Gives a loaded array the Python or numpy type the state had."""
  if isinstance(template_leaf, np.generic):
    return template_leaf.dtype.type(array.item())
  if isinstance(template_leaf, (bytes, str, bool, int, float)):
    return type(template_leaf)(array.item())
  return array


def state_specs(process: Any) -> Any:
  """The `tf.TensorSpec`s of a TFF process's state, read off its type signature
  (None for a process without one). A dimension TFF types as unknown, such as
  the number of levels of DP-FTRL's tree (TF Privacy's `TreeState`), changes
  from round to round."""
  initialize = getattr(process, 'initialize', None)
  signature = getattr(initialize, 'type_signature', None)
  if signature is None:
    return None
  return tff.types.type_to_tf_tensor_specs(signature.result.member)


def _check_leaf(index: int, template_leaf: Any, array: np.ndarray, spec: Any = None) -> None:
  expected = np.shape(template_leaf)
  if spec is not None and spec.shape.rank == array.ndim and spec.shape.is_compatible_with(
      array.shape):
    return
  if array.shape != expected:
    raise CheckpointMismatchError(
        f'Checkpoint leaf {index} has shape {array.shape}, the process state expects '
        f'{expected}; was the checkpoint written with another model or algorithm?')


class DamagedCheckpointError(ValueError):
  """No checkpoint in a directory could be read."""


class Restored(NamedTuple):
  """A restored checkpoint: the state, its round and the run's elapsed seconds.

  `damaged` lists the newer checkpoint files that could not be read (each
  renamed to `<name>.damaged`) and why; `metadata` holds the strings saved
  with the state.
  """
  state: Any
  round_num: int
  elapsed_s: float
  damaged: Tuple[str, ...] = ()
  metadata: Dict[str, str] = {}


def _load(path: str, template: Any, specs: Any = None) -> Restored:
  """Reads one checkpoint into `template`'s structure (every array read in full)."""
  with np.load(path, allow_pickle=False) as saved:
    template_leaves = tf.nest.flatten(template)
    spec_leaves = tf.nest.flatten(specs) if specs is not None else [None] * len(template_leaves)
    if len(spec_leaves) != len(template_leaves):
      raise CheckpointMismatchError(
          f'Reading checkpoint {path}: the state specs have {len(spec_leaves)} leaves, the '
          f'process state has {len(template_leaves)}; pass state_specs of the same process.')
    keys = sorted(k for k in saved.files if k.startswith('leaf_'))
    if len(keys) != len(template_leaves):
      raise CheckpointMismatchError(
          f'Checkpoint {path} holds {len(keys)} state leaves, the process state has '
          f'{len(template_leaves)}; was it written with another model or algorithm?')
    leaves = []
    for index, (key, template_leaf, spec) in enumerate(zip(keys, template_leaves, spec_leaves)):
      _check_leaf(index, template_leaf, saved[key], spec)
      leaves.append(_restore_leaf(template_leaf, saved[key]))
    state = tf.nest.pack_sequence_as(template, leaves)
    metadata = {k[len(_META_PREFIX):]: str(saved[k]) for k in saved.files
                if k.startswith(_META_PREFIX)}
    return Restored(state, int(saved[_ROUND_KEY]), float(saved[_ELAPSED_KEY]), (), metadata)


def _why_unreadable(error: Exception) -> str:
  if isinstance(error, ValueError) and 'pickled' in str(error):
    return 'not a checkpoint (random or foreign bytes)'
  if isinstance(error, (EOFError, zipfile.BadZipFile)) or 'zip' in str(error).lower():
    return f'truncated or not a zip archive ({error or type(error).__name__})'
  return f'{type(error).__name__}: {error}'


def restore_latest(directory: str, template: Any, *, specs: Any = None) -> Optional[Restored]:
  """Returns the newest checkpoint that can be read, or None if there is none.

  A checkpoint that cannot be read (truncated, empty, foreign bytes) is
  renamed to `<name>.damaged`, logged with the file named, and the next older
  one is tried.

  Args:
    directory: The checkpoint directory.
    template: A state of the same process (e.g. `process.initialize()`),
      whose structure the saved leaves are packed into.
    specs: The state's `tf.TensorSpec`s (`state_specs`), if some leaves'
      shapes may change from round to round: a leaf then fits if its shape is
      compatible with its spec's; otherwise it must have the template's shape.

  Raises:
    CheckpointMismatchError: If a readable checkpoint does not fit `template`.
    DamagedCheckpointError: If checkpoints exist but none can be read.
  """
  damaged = []
  for round_num in reversed(rounds(directory)):
    path = _path(directory, round_num)
    try:
      restored = _load(path, template, specs)
    except CheckpointMismatchError:
      raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
      damaged.append(f'{path}: {_why_unreadable(e)}')
      logging.warning('Checkpoint %s cannot be read (%s); kept as %s.damaged, trying an older '
                      'one.', path, _why_unreadable(e), os.path.basename(path))
      os.replace(path, path + '.damaged')
      continue
    return restored._replace(damaged=tuple(damaged))
  if damaged:
    raise DamagedCheckpointError(
        f'No checkpoint in {directory} can be read ({"; ".join(damaged)}); pass --overwrite to '
        'start the run over.')
  return None
