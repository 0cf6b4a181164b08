"""`tff.simulation.datasets.ClientData` built from arrays held in memory.

The datasets are built by a serializable `tf.data` function of the client id,
so TFF can construct them inside its runtime from ids
(`ClientData.dataset_computation`) instead of receiving each client's data
from Python every round.
"""

from __future__ import annotations

import collections
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

Features = Union[np.ndarray, Mapping[str, np.ndarray]]


def _num_rows(features: Features, labels: np.ndarray) -> int:
  arrays = dict(features) if isinstance(features, Mapping) else {'x': features}
  lengths = {name: len(array) for name, array in arrays.items()}
  lengths['labels'] = len(labels)
  if len(set(lengths.values())) != 1:
    raise ValueError(
        f'Feature and label arrays must have the same length, got {lengths}.')
  return len(labels)


def _check_indices(client_indices: Sequence[Sequence[int]], num_rows: int,
                   allow_empty: bool) -> None:
  for position, indices in enumerate(client_indices):
    indices = np.asarray(indices)
    if not allow_empty and indices.size == 0:
      raise ValueError(
          f'Client {position} has no examples; pass allow_empty_clients=True '
          'to keep empty clients.')
    if indices.size and (indices.min() < 0 or indices.max() >= num_rows):
      raise ValueError(
          f'Client {position} has example indices outside [0, {num_rows}).')


def _gather(array: np.ndarray, order: np.ndarray) -> np.ndarray:
  gathered = np.asarray(array)[order]
  if gathered.dtype == np.float64:
    gathered = gathered.astype(np.float32)
  if gathered.dtype == np.int64:
    gathered = gathered.astype(np.int32)
  return gathered


def from_arrays(features: Features,
                labels: np.ndarray,
                client_indices: Sequence[Sequence[int]],
                *,
                client_ids: Optional[Sequence[str]] = None,
                allow_empty_clients: bool = False
               ) -> tff.simulation.datasets.ClientData:
  """Returns a `ClientData` whose client `k` holds rows `client_indices[k]`.

  Each element is an `OrderedDict(x=..., y=...)`, where `x` is one row of
  `features` (or a dict of rows when `features` is a dict of arrays) and `y`
  the label. float64 arrays become float32 and int64 arrays int32.

  Args:
    features: An array, or a dict of arrays, with one row per example.
    labels: An array with one label per example.
    client_indices: For each client, the row indices of its examples.
    client_ids: Client names; defaults to '0', '1', ...
    allow_empty_clients: Whether a client may hold no examples.

  Raises:
    ValueError: If the arrays differ in length, an index is out of range, a
      client is empty and that is not allowed, or the ids do not match.
  """
  num_rows = _num_rows(features, labels)
  _check_indices(client_indices, num_rows, allow_empty_clients)
  if client_ids is None:
    client_ids = [str(k) for k in range(len(client_indices))]
  client_ids = [str(client_id) for client_id in client_ids]
  if len(client_ids) != len(client_indices) or len(set(client_ids)) != len(client_ids):
    raise ValueError(
        f'Expected {len(client_indices)} distinct client ids, got {client_ids!r:.200}.')
  order = np.concatenate([np.asarray(i, dtype=np.int64) for i in client_indices])
  offsets = np.cumsum([0] + [len(i) for i in client_indices]).astype(np.int64)
  columns = collections.OrderedDict(
      x=(collections.OrderedDict((k, _gather(v, order)) for k, v in features.items())
         if isinstance(features, Mapping) else _gather(features, order)),
      y=_gather(labels, order))

  def serializable_dataset_fn(client_id):
    ids = tf.constant(client_ids)
    position = tf.reshape(tf.where(tf.equal(ids, client_id)), [-1])[0]
    bounds = tf.constant(offsets)
    start, stop = bounds[position], bounds[position + 1]
    rows = tf.nest.map_structure(lambda a: tf.constant(a)[start:stop], columns)
    return tf.data.Dataset.from_tensor_slices(rows)

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      client_ids, serializable_dataset_fn)
