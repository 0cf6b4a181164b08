"""Federated data from a directory of per-client `.npz` files.

One file per client: the client id is the file stem (`alice.npz` -> 'alice'),
the file holds a label array `y` and either one feature array `x` or several
named feature arrays, all with one row per example.

Trade-off: the files are read eagerly and concatenated into memory, then
served by `from_arrays`, whose dataset function is serializable (TFF can build
the datasets from client ids) and slices one client per dataset. Reading
lazily per client (e.g. `tf.numpy_function(np.load, ...)`) would not be
serializable into a TFF computation. For data larger than memory, write it
once to TFF's SQLite format (`fedtff.data.write_sql_client_data`) and read it
with `tff.simulation.datasets.load_and_parse_sql_client_data`, which is both
lazy and serializable.
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np
import tensorflow_federated as tff

from fedtff.data import client_data

LABEL_KEY = 'y'
FEATURE_KEY = 'x'


def _client_files(path: str) -> List[str]:
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is not a directory of per-client .npz files.')
  names = sorted(name for name in os.listdir(path) if name.endswith('.npz'))
  if not names:
    raise ValueError(f'{path} holds no .npz files; expected one per client.')
  return [os.path.join(path, name) for name in names]


def _read_client(filename: str) -> Dict[str, np.ndarray]:
  with np.load(filename, allow_pickle=False) as arrays:
    columns = {name: arrays[name] for name in arrays.files}
  if LABEL_KEY not in columns:
    raise ValueError(
        f'{filename} has no label array {LABEL_KEY!r}; it holds {sorted(columns)}.')
  lengths = {name: (len(a) if a.ndim else None) for name, a in columns.items()}
  if None in lengths.values() or len(set(lengths.values())) != 1:
    raise ValueError(
        f'{filename} holds arrays of different lengths (or scalars): {lengths}.')
  return columns


def _check_same_arrays(first: str, first_columns: Dict[str, np.ndarray],
                       filename: str, columns: Dict[str, np.ndarray]) -> None:
  if set(columns) != set(first_columns):
    raise ValueError(
        f'{filename} holds arrays {sorted(columns)} but {first} holds '
        f'{sorted(first_columns)}.')
  for name, array in columns.items():
    expected = first_columns[name]
    if array.dtype != expected.dtype or array.shape[1:] != expected.shape[1:]:
      raise ValueError(
          f'Array {name!r} of {filename} has dtype {array.dtype} and row shape '
          f'{array.shape[1:]}, but that of {first} has {expected.dtype} and '
          f'{expected.shape[1:]}.')


def load_npz_dir(path: str) -> client_data.FederatedArrays:
  """Reads every client's `.npz` file into `FederatedArrays` (see module docstring).

  Features are the array `x` when the files hold just `x` and `y`, otherwise
  a dict of every array but `y`.

  Raises:
    FileNotFoundError: If `path` is not a directory.
    ValueError: If it holds no `.npz` file, a file has no `y`, a file's arrays
      differ in length, or files differ in array names, dtypes or row shapes.
  """
  files = _client_files(path)
  clients = [_read_client(filename) for filename in files]
  for filename, columns in zip(files[1:], clients[1:]):
    _check_same_arrays(files[0], clients[0], filename, columns)
  merged = {name: np.concatenate([c[name] for c in clients]) for name in clients[0]}
  labels = merged.pop(LABEL_KEY)
  features = merged[FEATURE_KEY] if set(merged) == {FEATURE_KEY} else dict(sorted(merged.items()))
  offsets = np.cumsum([0] + [len(c[LABEL_KEY]) for c in clients])
  partition = [np.arange(a, b) for a, b in zip(offsets[:-1], offsets[1:])]
  ids = [os.path.basename(f)[:-len('.npz')] for f in files]
  return client_data.FederatedArrays(features, labels, partition, ids)


def from_npz_dir(path: str, *, allow_empty_clients: bool = False
                ) -> tff.simulation.datasets.ClientData:
  """A `ClientData` with one client per `.npz` file of `path`, ids the file stems.

  Elements are `OrderedDict(x=..., y=...)` as in `from_arrays` (`x` a dict
  when the files hold several feature arrays).

  Raises:
    As `load_npz_dir`, and ValueError for a file with no examples unless
    `allow_empty_clients`.
  """
  return load_npz_dir(path).to_client_data(allow_empty_clients=allow_empty_clients)
