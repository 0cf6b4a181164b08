"""`tff.simulation.datasets.ClientData` built from arrays held in memory.

The datasets are built by a serializable `tf.data` function of the client id,
so TFF can construct them inside its runtime from ids
(`ClientData.dataset_computation`) instead of receiving each client's data
from Python every round.

Building a `ClientData` creates one dataset (TFF reads the element spec off
the first client); every other client's dataset is created only when asked
for. The rows are held once, as eager tensors. Called eagerly, the dataset
function slices one client's rows, so a dataset costs time and memory in
proportion to the client, not to the whole array. Traced in a `tf.function`
(`client_dataset_fn`), it captures those tensors without copying them. Traced
in a legacy graph, as TFF's `dataset_computation` is, it reads the client's
rows from the client's file, written once (`feed='file'`, the default;
`fedtff.data.feed`), or embeds every row in the graph as constants
(`feed='constants'`), which TFF then sends to its worker on every call and
which limits that path to arrays well under TensorFlow's 2 GB graph limit.
docs/data.md ("Feeding clients to TFF") compares the two.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.data import feed as feed_lib

Features = Union[np.ndarray, Mapping[str, np.ndarray]]
ClientData = tff.simulation.datasets.ClientData
FEEDS = ('file', 'constants')


def _num_rows(features: Features, labels: np.ndarray) -> int:
  arrays = dict(features) if isinstance(features, Mapping) else {'x': features}
  lengths = {name: len(array) for name, array in arrays.items()}
  lengths['labels'] = len(labels)
  if len(set(lengths.values())) != 1:
    raise ValueError(
        f'Feature and label arrays must have the same length, got {lengths}.')
  return len(labels)


def _check_indices(client_indices: Sequence[Sequence[int]], num_rows: int,
                   allow_empty: bool, client_ids: Sequence[str]) -> None:
  for client_id, indices in zip(client_ids, client_indices):
    indices = np.asarray(indices)
    if not allow_empty and indices.size == 0:
      raise ValueError(
          f'Client {client_id} has no examples; pass allow_empty_clients=True '
          'to keep empty clients.')
    if indices.size and (indices.min() < 0 or indices.max() >= num_rows):
      raise ValueError(
          f'Client {client_id} has example indices outside [0, {num_rows}).')


def _gather(array: np.ndarray, order: np.ndarray) -> np.ndarray:
  gathered = np.asarray(array)[order]
  if gathered.dtype == np.float64:
    gathered = gathered.astype(np.float32)
  if gathered.dtype == np.int64:
    gathered = gathered.astype(np.int32)
  return gathered


def _checked_ids(client_ids: Optional[Sequence[Any]], num_clients: int) -> List[str]:
  if client_ids is None:
    return [str(k) for k in range(num_clients)]
  client_ids = [str(client_id) for client_id in client_ids]
  if len(client_ids) != num_clients or len(set(client_ids)) != len(client_ids):
    raise ValueError(
        f'Expected {num_clients} distinct client ids, got {client_ids!r:.200}.')
  return client_ids


def _python_id(client_id: Any) -> str:
  if tf.is_tensor(client_id):
    client_id = client_id.numpy()
  return client_id.decode() if isinstance(client_id, bytes) else str(client_id)


def from_arrays(features: Features,
                labels: np.ndarray,
                client_indices: Sequence[Sequence[int]],
                *,
                client_ids: Optional[Sequence[str]] = None,
                allow_empty_clients: bool = False,
                feed: str = 'file',
                feed_dir: Optional[str] = None) -> ClientData:
  """Returns a `ClientData` whose client `k` holds rows `client_indices[k]`.

  Each element is an `OrderedDict(x=..., y=...)`, where `x` is one row of
  `features` (or a dict of rows when `features` is a dict of arrays) and `y`
  the label. float64 arrays become float32 and int64 arrays int32.

  `feed` only matters inside TFF computations (`dataset_computation`); the
  datasets are the same either way, element for element. With 'file' the
  rows are written once, when TFF first traces the dataset function, to one
  file per client that the TFF worker reads (`fedtff.data.feed`: under
  `feed_dir`, or in a per-process temporary directory removed at exit); the
  worker must see that path (this machine, or a shared `feed_dir`).
  Arrays whose dtype `tf.io.decode_raw` cannot read (strings, uint32,
  uint64) use constants. With 'constants' every row is embedded in the
  computation, which TFF sends to its worker on every call: slower at every
  size measured (docs/data.md, "Feeding clients to TFF"), but needs no file.

  Args:
    features: An array, or a dict of arrays, with one row per example.
    labels: An array with one label per example.
    client_indices: For each client, the row indices of its examples.
    client_ids: Client names; defaults to '0', '1', ...
    allow_empty_clients: Whether a client may hold no examples.
    feed: How TFF computations get the rows: 'file' or 'constants'.
    feed_dir: Where to write the files (never removed; reused by every
      process whose data hashes the same); None for a per-process temporary
      directory.

  Raises:
    ValueError: If the arrays differ in length, an index is out of range, a
      client is empty and that is not allowed, the ids do not match, or
      `feed` is unknown.
  """
  if feed not in FEEDS:
    raise ValueError(f'feed must be one of {FEEDS}, got {feed!r}.')
  num_rows = _num_rows(features, labels)
  client_ids = _checked_ids(client_ids, len(client_indices))
  _check_indices(client_indices, num_rows, allow_empty_clients, client_ids)
  order = np.concatenate([np.asarray(i, dtype=np.int64) for i in client_indices])
  offsets = np.cumsum([0] + [len(i) for i in client_indices]).astype(np.int64)
  columns = collections.OrderedDict(
      x=(collections.OrderedDict((k, _gather(v, order)) for k, v in features.items())
         if isinstance(features, Mapping) else _gather(features, order)),
      y=_gather(labels, order))
  use_file = feed == 'file' and not feed_lib.unsupported_reason(tf.nest.flatten(columns))
  columns = tf.nest.map_structure(tf.constant, columns)
  files = (feed_lib.ClientFiles(columns, tf.nest.flatten(columns), offsets, feed_dir)
           if use_file else None)
  return ClientData.from_clients_and_tf_fn(
      client_ids, _dataset_fn(client_ids, offsets, columns, files))


def _dataset_fn(client_ids: List[str], offsets: np.ndarray, columns: Any,
                files: Optional[feed_lib.ClientFiles]) -> Callable[[Any], tf.data.Dataset]:
  """The dataset function over `columns`, eager tensors of every client's rows.

  Eagerly it slices one client's rows. In a `tf.function` it captures the
  eager tensors (no copy into the graph). In a legacy graph, which is how TFF
  traces `dataset_computation`, it reads the client's file from `files` or,
  without them, embeds every client's rows as constants.
  """
  positions = {client_id: k for k, client_id in enumerate(client_ids)}

  def traced_bounds(client_id):
    ids = tf.constant(client_ids)
    position = tf.reshape(tf.where(tf.equal(ids, client_id)), [-1])[0]
    bounds = tf.constant(offsets)
    return position, bounds[position], bounds[position + 1]

  def serializable_dataset_fn(client_id):
    if tf.executing_eagerly():
      k = positions[_python_id(client_id)]
      return tf.data.Dataset.from_tensor_slices(
          tf.nest.map_structure(lambda t: t[offsets[k]:offsets[k + 1]], columns))
    position, start, stop = traced_bounds(client_id)
    with tf.init_scope():
      captured = tf.executing_eagerly()  # In a tf.function: capture the eager tensors.
    if not captured and files is not None:
      return files.dataset(position, stop - start)
    graph_columns = columns if captured else tf.nest.map_structure(
        lambda t: tf.constant(t.numpy()), columns)
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: t[start:stop], graph_columns))

  return serializable_dataset_fn


def client_dataset_fn(client_data: ClientData) -> tf.types.experimental.GenericFunction:
  """Returns `client_id -> dataset`, tracing `client_data`'s dataset function once.

  Use it to build client datasets in Python round after round. In TF 2.14
  every eager `Dataset.map` traces and keeps a new function, so calling
  `client_data.create_tf_dataset_for_client` each round (TFF's parsing and
  most preprocessing map) grows memory by about 70 KB per dataset and spends
  milliseconds tracing; this traces the whole pipeline once as a
  `tf.function` and only runs it afterwards. Inside TFF computations use
  `client_data.dataset_computation` instead.

  Returns:
    A `tf.function` of one string, the client id.
  """
  return tf.function(client_data.serializable_dataset_fn,
                     input_signature=[tf.TensorSpec([], tf.string)])


@dataclasses.dataclass(frozen=True)
class FederatedArrays:
  """Examples held in arrays, and which rows belong to which client.

  The array form of a federated dataset: partitioners, splits and the
  synthetic generators work on it, and `to_client_data()` turns it into a
  `ClientData` for TFF.

  Attributes:
    features: An array, or a dict of arrays, with one row per example.
    labels: One label per example.
    partition: For each client, the row indices of its examples, in order.
    client_ids: One name per client.
  """
  features: Features
  labels: np.ndarray
  partition: Sequence[np.ndarray]
  client_ids: Sequence[str]

  def __post_init__(self):
    num_rows = _num_rows(self.features, self.labels)
    client_ids = _checked_ids(self.client_ids, len(self.partition))
    _check_indices(self.partition, num_rows, True, client_ids)

  @property
  def num_clients(self) -> int:
    return len(self.partition)

  def client(self, client_id: str) -> Tuple[Features, np.ndarray]:
    """Returns `(features, labels)` of one client's examples."""
    if client_id not in self.client_ids:
      raise ValueError(f'Unknown client id {client_id!r}.')
    rows = self.partition[list(self.client_ids).index(client_id)]
    labels = np.asarray(self.labels)[rows]
    if isinstance(self.features, Mapping):
      return {k: np.asarray(v)[rows] for k, v in self.features.items()}, labels
    return np.asarray(self.features)[rows], labels

  def select(self, client_ids: Sequence[str]) -> 'FederatedArrays':
    """Returns the same arrays with only `client_ids`, in that order."""
    lookup = {client_id: k for k, client_id in enumerate(self.client_ids)}
    missing = [c for c in client_ids if c not in lookup]
    if missing:
      raise ValueError(f'Unknown client ids {missing!r:.200}.')
    return dataclasses.replace(
        self, partition=[self.partition[lookup[c]] for c in client_ids],
        client_ids=list(client_ids))

  def to_client_data(self, *, allow_empty_clients: bool = False, feed: str = 'file',
                     feed_dir: Optional[str] = None) -> ClientData:
    """Returns the `ClientData` of `from_arrays` over these arrays."""
    return from_arrays(self.features, self.labels, self.partition,
                       client_ids=self.client_ids,
                       allow_empty_clients=allow_empty_clients, feed=feed, feed_dir=feed_dir)
