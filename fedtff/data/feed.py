"""Files that TFF's runtime reads client rows from, instead of graph constants.

TFF builds client datasets inside its runtime from client ids
(`ClientData.dataset_computation`). A dataset function over arrays in memory,
traced into TFF's graph, can only embed every client's rows as constants: the
computation then carries all rows, and TFF sends it to its worker on every
call, so each round costs time in proportion to the whole dataset, not to the
cohort (docs/data.md, "Feeding clients to TFF").

`ClientFiles` writes the rows once, one raw binary file per client (named by
the client's position), holding the client's rows of every array in turn
(feature arrays, then labels). A client's dataset reads its file with
`tf.io.read_file`, cuts it into arrays with `tf.strings.substr`, decodes
them with `tf.io.decode_raw` and serves them with `from_tensor_slices`: the
elements are those `from_tensor_slices` gives on the arrays, in the same
order. (One file for all clients would not do: `FixedLengthRecordDataset`
reads through the bytes before a record instead of seeking, so a client's
read would cost time in proportion to its offset.)

Where the files live:

* by default, in one directory per process, `<tmp>/fedtff-feed-<pid>-<random>`
  (`tempfile.gettempdir()`), created on first use and removed when the process
  exits (`atexit`). The process holds an exclusive `flock` on the directory's
  `.lock` file while it lives, and the kernel drops it when the process dies,
  however it dies; the next process to create its own feed directory removes
  every other one whose lock it can take (owner dead, e.g. killed by SIGKILL);
* with `directory=`, in that directory, which fedtff never removes: a cache
  that processes share (the files' directory is named by a hash of the rows
  and the partition, so equal data is written once) and that TFF workers on
  other machines can read if it is on a shared filesystem.

The files are written when TFF first traces the dataset function, into a
temporary directory next to their final one, which is renamed into place
only when every file is complete (`os.rename`, atomic on POSIX): a reader
never sees a half-written set. An existing set is reused only if every file
has the right size. The TFF worker must see the same path: true for fedtff's
local worker and for workers on this machine; for workers on other machines
pass a shared `directory`, or use `feed='constants'`.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import glob
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any, List, Optional, Tuple

import numpy as np
import tensorflow as tf

# The dtypes `tf.io.decode_raw` reads (it has no uint32 or uint64).
_RAW_DTYPES = frozenset(np.dtype(t) for t in (
    np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.bool_, np.complex64, np.complex128))
_PREFIX = 'fedtff-feed-'
_LOCK = '.lock'
_UNLOCKED_GRACE_S = 60.0  # A directory younger than this may not be locked yet.
_process_dir: Optional[str] = None
_process_lock_file = None  # Open for as long as the process lives: it holds the flock.
_process_dir_lock = threading.Lock()


def process_directory() -> str:
  """This process's feed directory, created on first call and removed at exit."""
  global _process_dir, _process_lock_file
  with _process_dir_lock:
    if _process_dir is None:
      # Locked before it gets its name, so no other process finds it unlocked.
      unnamed = tempfile.mkdtemp(prefix=f'.{_PREFIX}{os.getpid()}-')
      _process_lock_file = open(os.path.join(unnamed, _LOCK), 'wb')  # pylint: disable=consider-using-with
      fcntl.flock(_process_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      directory = os.path.join(os.path.dirname(unnamed), os.path.basename(unnamed)[1:])
      os.rename(unnamed, directory)
      atexit.register(_remove_process_directory, directory, os.getpid())
      _process_dir = directory
      remove_stale_directories()
    return _process_dir


def _remove_process_directory(path: str, owner_pid: int) -> None:
  if os.getpid() == owner_pid:  # Not in a forked child that runs atexit handlers.
    shutil.rmtree(path, ignore_errors=True)


def _unlocked_and_abandoned(path: str) -> bool:
  try:
    if time.time() - os.path.getmtime(path) < _UNLOCKED_GRACE_S:
      return False
    os.kill(int(os.path.basename(path).lstrip('.')[len(_PREFIX):].split('-')[0]), 0)
  except (OSError, ValueError) as e:
    return isinstance(e, ProcessLookupError)
  return False  # The process lives (or reuses the id): keep it.


def remove_stale_directories(parent: Optional[str] = None) -> List[str]:
  """Removes the feed directories of processes that are gone; returns them.

  A directory is stale when its `.lock` can be locked (its owner died), or
  when it has no `.lock` (left by a version of this module without locks, or
  by a crash before the lock was taken), is older than a minute and no
  process has the id in its name. Directories still under their hidden
  temporary name (`.fedtff-feed-*`, a crash between creating and naming
  them) are included.
  """
  removed = []
  parent = parent or tempfile.gettempdir()
  # Hidden names are directories not yet renamed into place (a crash in between).
  for path in glob.glob(os.path.join(parent, f'{_PREFIX}*')) + glob.glob(
      os.path.join(parent, f'.{_PREFIX}*')):
    if path == _process_dir or not os.path.isdir(path):
      continue
    try:
      with open(os.path.join(path, _LOCK), 'rb') as lock:
        try:
          fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          continue  # Its process is alive.
        shutil.rmtree(path, ignore_errors=True)
    except FileNotFoundError:
      if not _unlocked_and_abandoned(path):
        continue
      shutil.rmtree(path, ignore_errors=True)
    except OSError:
      continue  # Another user's directory, say.
    removed.append(path)
  return removed


@dataclasses.dataclass(frozen=True)
class _Region:
  dtype: np.dtype
  row_shape: Tuple[int, ...]

  @property
  def row_bytes(self) -> int:
    return int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))


def unsupported_reason(arrays: List[np.ndarray]) -> Optional[str]:
  """Why these arrays cannot be fed from files, or None if they can."""
  for array in arrays:
    if np.dtype(array.dtype.type) not in _RAW_DTYPES:
      return f'tf.io.decode_raw cannot read dtype {array.dtype}'
    if array.ndim and 0 in array.shape[1:]:
      return f'rows of shape {array.shape[1:]} hold no bytes'
  return None


class ClientFiles:
  """One raw binary file per client, and the graph code that reads one.

  Args:
    structure: The nested structure of the arrays (for `pack_sequence_as`).
    arrays: The flattened arrays, one row per example, all of the same
      length, rows ordered client after client.
    offsets: Client `k` holds rows `offsets[k]` to `offsets[k + 1]`.
    directory: Where to write the files; None for `process_directory()`.
  """

  def __init__(self, structure: Any, arrays: List[np.ndarray], offsets: np.ndarray,
               directory: Optional[str] = None):
    arrays = [np.asarray(a) for a in arrays]  # Of an eager tensor: a view, not a copy.
    reason = unsupported_reason(arrays)
    if reason:
      raise ValueError(f'Cannot feed these arrays from files: {reason}.')
    self._structure = structure
    self._regions = [_Region(a.dtype.newbyteorder('<'), a.shape[1:]) for a in arrays]
    # Little-endian and contiguous, as decode_raw reads them; no copy if they already are.
    self._arrays = [np.ascontiguousarray(a, dtype=r.dtype) for a, r in zip(arrays, self._regions)]
    self._offsets = np.asarray(offsets, np.int64)
    self._client_bytes = np.diff(self._offsets) * sum(r.row_bytes for r in self._regions)
    self._directory = directory
    self._lock = threading.Lock()
    self._path: Optional[str] = None

  def _name(self) -> str:
    digest = hashlib.blake2b(self._offsets.tobytes(), digest_size=16)
    for array, region in zip(self._arrays, self._regions):
      digest.update(f'{region.dtype.str}{region.row_shape}{len(array)};'.encode())
      digest.update(memoryview(array).cast('B'))
    return digest.hexdigest()

  def path(self) -> str:
    """The directory of the client files, writing them first if needed."""
    with self._lock:
      if self._path is None:
        parent = self._directory or process_directory()
        path = os.path.join(parent, self._name())
        if not self._complete(path):
          self._write(path)
        self._path = path
      return self._path

  def _complete(self, path: str) -> bool:
    try:
      return all(os.stat(os.path.join(path, str(k))).st_size == size
                 for k, size in enumerate(self._client_bytes))
    except (FileNotFoundError, NotADirectoryError):
      return False

  def _write(self, path: str) -> None:
    """Writes every file into a temporary directory, then renames it to `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f'{path}.{os.getpid()}-{secrets.token_hex(4)}.partial'
    os.mkdir(partial)
    try:
      for k, (start, stop) in enumerate(zip(self._offsets[:-1], self._offsets[1:])):
        with open(os.path.join(partial, str(k)), 'wb') as sink:
          for array in (self._arrays if stop > start else []):  # An empty client: empty file.
            sink.write(memoryview(array[start:stop]).cast('B'))
      if os.path.lexists(path) and not self._complete(path):
        # Incomplete (damaged by hand, say): put it aside first. Another
        # process may have done so already, or completed a set meanwhile.
        stale = partial[:-len('.partial')] + '.stale'
        try:
          os.rename(path, stale)
        except FileNotFoundError:
          pass
        shutil.rmtree(stale, ignore_errors=True)
      try:
        os.rename(partial, path)
      except OSError:  # Another process renamed its complete set into place first.
        if not self._complete(path):
          raise
        shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
      shutil.rmtree(partial, ignore_errors=True)
      raise

  def dataset(self, position: tf.Tensor, count: tf.Tensor) -> tf.data.Dataset:
    """The dataset of the `count` rows of the client at `position` (int64 scalars)."""
    raw = tf.io.read_file(tf.strings.join([self.path() + os.sep, tf.strings.as_string(position)]))
    columns, begin = [], tf.constant(0, tf.int64)
    for region in self._regions:
      length = count * region.row_bytes
      column = tf.io.decode_raw(tf.strings.substr(raw, begin, length), tf.as_dtype(region.dtype))
      columns.append(tf.reshape(column, [-1, *region.row_shape]))
      begin += length
    return tf.data.Dataset.from_tensor_slices(tf.nest.pack_sequence_as(self._structure, columns))
