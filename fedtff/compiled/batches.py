"""Client datasets as padded batches, the input of the compiled engine's rounds.

TFF's client training iterates each client's `tf.data.Dataset`, one optimizer
step per batch, the last batch often partial. The compiled engine runs a whole
round as one TensorFlow graph, so it needs every participating client's
batches as tensors of one shape: each batch is padded to `batch_size` rows and
a mask tells the real rows from the padding, as in FedJAX's padded client
datasets (Ro et al. 2021, arXiv 2108.02117).

`ClientBatches` holds the batches of several clients stacked along one axis,
`PaddedClientData` builds them from a `tff.simulation.datasets.ClientData`
(its preprocessed, batched datasets), reading each client's dataset once and
caching it, `RoundBatches` from a `fedtff.data.RoundClientData`, whose
datasets differ by round, reading the round's clients anew each round, and
`from_datasets` builds them from a list of batched datasets.

Examples of varying shape (e.g. sequences batched with `padded_batch`, whose
batches differ in length) are held padded to the largest shape read, with
each batch's own shape (`ClientBatches.batch_shapes`); `batch_at` cuts a batch
back to its shape in the graph, so the model sees the batch TFF iterates.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=g-direct-tensorflow-import
import tensorflow_federated as tff

from fedtff.data import rounds

ClientData = tff.simulation.datasets.ClientData
_BATCHES_PER_READ = 1 << 20  # Batches of one client per element of the reading pipeline.
_PARALLEL_READS = max(os.cpu_count() or 1, 1)  # Clients that RoundBatches reads at once.


class ClientBatches(NamedTuple):
  """The batches of some clients, padded to one batch size and stacked.

  Client `k` owns batches `first_batch[k]` to `first_batch[k] + num_batches[k] - 1`
  and trains on them in that order. Padding rows repeat the batch's real rows
  (so the model sees only finite inputs) and are masked out of the loss and the
  metrics. Several `ClientBatches` can share `data` and `mask` and differ in
  which clients they select (`select`).

  Attributes:
    data: The datasets' element structure (`(x, y)` or `{'x': ..., 'y': ...}`)
      whose every leaf has shape `[total_batches, batch_size, ...]`.
    mask: bool, `[total_batches, batch_size]`: whether a row is a real example.
    first_batch: int32, `[num_clients]`: each client's first batch in `data`.
    num_batches: int32, `[num_clients]`: each client's number of batches.
    batch_shapes: `()` when every example has one fixed shape; otherwise, in
      `data`'s structure, int32 `[total_batches, rank - 1]`: each batch's
      per-example shape, to which `batch_at` cuts the leaf (padded, in `data`,
      to the largest shape of any batch); `[total_batches, 0]` for a leaf of
      fixed shape.
  """
  data: Any
  mask: tf.Tensor
  first_batch: tf.Tensor
  num_batches: tf.Tensor
  batch_shapes: Any = ()


def has_fixed_shapes(element_spec: Any) -> bool:
  """Whether every leaf of a batched `element_spec` has one fixed per-example shape."""
  return all(spec.shape[1:].is_fully_defined() for spec in tf.nest.flatten(element_spec))


def _shape_columns(spec: tf.TensorSpec) -> int:
  """The columns of a leaf's `ClientBatches.batch_shapes`: none for a fixed shape."""
  return 0 if spec.shape[1:].is_fully_defined() else spec.shape.rank - 1


def _batch_shape_specs(element_spec: Any) -> Any:
  if has_fixed_shapes(element_spec):
    return ()
  return tf.nest.map_structure(
      lambda s: tf.TensorSpec([None, _shape_columns(s)], tf.int32), element_spec)


def batch_at(batches: ClientBatches, index: tf.Tensor) -> Tuple[Any, tf.Tensor]:
  """Batch `index` of `batches` in graph: `(data, mask)`, `[batch_size, ...]` rows.

  A leaf whose examples vary in shape is cut to the batch's own shape, the
  batch its dataset gave; the padding rows are masked as for any batch.
  """
  mask = tf.gather(batches.mask, index)
  if not batches.batch_shapes:
    return tf.nest.map_structure(lambda t: tf.gather(t, index), batches.data), mask

  def leaf_at(leaf, shapes):
    rows = tf.gather(leaf, index)
    if shapes.shape[1] == 0:  # A leaf of fixed shape.
      return rows
    size = tf.concat([tf.shape(rows)[:1], tf.gather(shapes, index)], 0)
    cut = tf.slice(rows, tf.zeros_like(size), size)
    if not tf.executing_eagerly():  # Keeps the fixed dimensions static, for Keras.
      cut.set_shape(rows.shape)
    return cut

  return tf.nest.map_structure(leaf_at, batches.data, batches.batch_shapes), mask


def signature(element_spec: Any) -> ClientBatches:
  """The `tf.TensorSpec`s of any `ClientBatches` of datasets with `element_spec`."""
  return ClientBatches(
      data=tf.nest.map_structure(
          lambda s: tf.TensorSpec([None, None] + s.shape[1:].as_list(), s.dtype), element_spec),
      mask=tf.TensorSpec([None, None], tf.bool),
      first_batch=tf.TensorSpec([None], tf.int32),
      num_batches=tf.TensorSpec([None], tf.int32),
      batch_shapes=_batch_shape_specs(element_spec))


@dataclasses.dataclass(frozen=True)
class _ClientArrays:
  """One client's examples, its batches concatenated, and the batch sizes.

  With examples of varying shape, each leaf is padded to the client's largest
  batch shape and `shapes` holds each batch's (`ClientBatches.batch_shapes`).
  """
  examples: Any
  batch_sizes: np.ndarray
  shapes: Any = None


def _client_arrays(batches: Sequence[Any], element_spec: Any) -> _ClientArrays:
  """Concatenates one client's batches (numpy structures) into `_ClientArrays`."""
  fixed = has_fixed_shapes(element_spec)
  if not batches:
    empty = tf.nest.map_structure(
        lambda s: np.zeros([0] + [d or 0 for d in s.shape[1:].as_list()],
                           s.dtype.as_numpy_dtype), element_spec)
    shapes = None if fixed else tf.nest.map_structure(
        lambda s: np.zeros([0, _shape_columns(s)], np.int32), element_spec)
    return _ClientArrays(empty, np.zeros([0], np.int32), shapes)
  sizes = np.asarray([len(tf.nest.flatten(batch)[0]) for batch in batches], np.int32)
  if fixed:
    return _ClientArrays(
        tf.nest.map_structure(lambda *leaves: np.concatenate(leaves), *batches), sizes)
  return _ClientArrays(
      tf.nest.map_structure(lambda *leaves: np.concatenate(_padded_to_one_shape(leaves)),
                            *batches),
      sizes,
      tf.nest.map_structure(
          lambda spec, *leaves: np.asarray(
              [leaf.shape[1:] if _shape_columns(spec) else () for leaf in leaves],
              np.int32).reshape([len(leaves), _shape_columns(spec)]), element_spec, *batches))


def _largest_shape(arrays: Sequence[np.ndarray]) -> List[int]:
  """The per-example shape that holds every array's examples."""
  return list(np.max([a.shape[1:] for a in arrays], axis=0)) if arrays else []


def _padded_to_one_shape(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
  """The arrays, their examples padded with zeros (at the end) to the largest shape."""
  largest = _largest_shape(arrays)
  return [np.pad(a, [(0, 0)] + [(0, m - d) for m, d in zip(largest, a.shape[1:])])
          for a in arrays]


def _read_each(dataset_fn: Callable[[tf.Tensor], tf.data.Dataset], element_spec: Any,
               client_ids: Sequence[str]) -> List[_ClientArrays]:
  """Reads each client's dataset on its own, for examples of varying shape.

  `_read_clients`'s single pipeline joins a client's batches into one ragged
  element, which loses the shape of each batch; this keeps it, at one
  iterator per client. The shuffles use TFF's seeds, as there.
  """
  with rounds.without_global_seed():
    return [_client_arrays(_read_once(dataset_fn(tf.constant(c, tf.string))), element_spec)
            for c in client_ids]


def _read_once(dataset: tf.data.Dataset) -> List[Any]:
  """The dataset's elements as numpy structures, without tf.data's graph rewrites.

  Its default optimizations and autotuning cost about 17 ms per iterator here,
  which dominates reading a small client; the order of elements is the same.
  """
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  options.autotune.enabled = False
  return list(dataset.with_options(options).as_numpy_iterator())


def _rows_and_batch_sizes(batches: Any) -> Tuple[tf.Tensor, tf.Tensor]:
  """`[num_batches, (batch_size), ...]` (ragged, or dense when every batch is full)
  as `[num_rows, ...]` rows and the int64 `[num_batches]` batch sizes."""
  if isinstance(batches, tf.RaggedTensor):
    return batches.flat_values, batches.row_lengths()
  shape = tf.shape(batches, out_type=tf.int64)
  return (tf.reshape(batches, tf.concat([[-1], shape[2:]], 0)),
          tf.fill(shape[:1], shape[1]))


def _read_clients(dataset_fn: Callable[[tf.Tensor], tf.data.Dataset], element_spec: Any,
                  client_ids: Sequence[str]) -> List[_ClientArrays]:
  """Reads the clients' datasets through one `tf.data` pipeline.

  One iterator over all clients (`flat_map` over the ids) saves creating an
  iterator per client, and `ragged_batch` gathers each client's batches into
  one element, its rows and batch sizes, which saves a Python step per batch
  (0.4 ms each here, 16 s for the 40,000 batches of FedProx's 30 clients of 20
  epochs). The pipeline's shuffles use TFF's seeds (`fedtff.data.rounds.without_global_seed`), so the
  batches are those TFF trains on, whatever the global seed.
  """

  if not has_fixed_shapes(element_spec):
    return _read_each(dataset_fn, element_spec, client_ids)
  client_rows = _client_rows_fn(dataset_fn)
  with rounds.without_global_seed():
    pipeline = tf.data.Dataset.from_tensor_slices(tf.constant(list(client_ids), tf.string))
    pipeline = pipeline.enumerate().flat_map(client_rows)
  parts = [[] for _ in client_ids]
  for k, sizes, rows in _read_once(pipeline):
    parts[k].append(_ClientArrays(rows, sizes.astype(np.int32)))
  return [_joined(part, element_spec) for part in parts]


def _joined(part: Sequence[_ClientArrays], element_spec: Any) -> _ClientArrays:
  """One client's pieces (one per `_BATCHES_PER_READ` batches) as one `_ClientArrays`."""
  if not part:
    return _client_arrays([], element_spec)
  if len(part) == 1:
    return part[0]
  return _ClientArrays(
      tf.nest.map_structure(lambda *leaves: np.concatenate(leaves), *[p.examples for p in part]),
      np.concatenate([p.batch_sizes for p in part]))


def _as_tff_traces(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` as a `tf.data` function that AutoGraph leaves as it is, as TFF does.

  `tf.data` converts the functions it traces with AutoGraph, and the
  conversion is recursive: it would rewrite the client's dataset function too
  (about 1 s for the quickstart's). TFF traces that dataset function without
  AutoGraph (`ClientData.dataset_computation`), and the functions it maps keep
  the unspecified status, so `tf.data` converts those as in TFF.
  """
  return tf.__internal__.autograph.tf_convert(
      fn, ag_ctx.ControlStatusCtx(ag_ctx.Status.UNSPECIFIED), convert_by_default=False)


def _client_rows_fn(dataset_fn: Callable[[tf.Tensor], tf.data.Dataset]):
  """`(k, client_id) -> dataset of one element (k, batch sizes, rows)` (none if no batches)."""

  def client_rows(k, client_id):
    def split(*batches):  # `(x, y)` elements come as two arguments.
      batches = batches[0] if len(batches) == 1 else batches
      rows, sizes = zip(*[_rows_and_batch_sizes(t) for t in tf.nest.flatten(batches)])
      return k, sizes[0], tf.nest.pack_sequence_as(batches, list(rows))
    return dataset_fn(client_id).ragged_batch(_BATCHES_PER_READ).map(_as_tff_traces(split))

  return _as_tff_traces(client_rows)


def _split_ragged(ragged: tf.RaggedTensor) -> List[np.ndarray]:
  """A `[n, (rows), ...]` ragged tensor as n numpy arrays."""
  return np.split(ragged.flat_values.numpy(), np.cumsum(ragged.row_lengths().numpy())[:-1])


class _RoundReader:
  """`_read_clients` as one `tf.function` of the ids, traced once.

  Building a fresh `tf.data` pipeline in Python every round retraces its
  functions (the dataset function, its preprocessing) each time; here the
  whole pipeline is traced once, with TFF's seeds (`fedtff.data.rounds.without_global_seed`), and each
  call only runs it. The pipeline and so the batches are `_read_clients`'s.
  """

  def __init__(self, dataset_fn: Callable[[tf.Tensor], tf.data.Dataset], element_spec: Any):
    self._element_spec = element_spec
    self._dataset_fn = dataset_fn
    client_rows = _client_rows_fn(dataset_fn)
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def read(client_ids):
      # Clients are read in parallel; each client's own pipeline is unchanged.
      pipeline = tf.data.Dataset.from_tensor_slices(client_ids).enumerate().interleave(
          client_rows, cycle_length=_PARALLEL_READS, num_parallel_calls=_PARALLEL_READS,
          deterministic=True)
      pipeline = pipeline.ragged_batch(tf.size(client_ids, out_type=tf.int64))
      return pipeline.with_options(options).get_single_element()

    self._read = read

  def __call__(self, client_ids: Sequence[str]) -> List[_ClientArrays]:
    if not client_ids:  # An empty cohort (Poisson sampling): nothing to read.
      return []
    if not has_fixed_shapes(self._element_spec):
      return _read_each(self._dataset_fn, self._element_spec, client_ids)
    with rounds.without_global_seed():
      try:
        positions, sizes, rows = self._read(tf.constant(list(client_ids), tf.string))
      except tf.errors.InvalidArgumentError as e:
        if 'empty' not in str(e).lower():
          raise
        # No client has a batch: the pipeline has no element at all.
        return [_client_arrays([], self._element_spec) for _ in client_ids]
    parts = [[] for _ in client_ids]
    batch_sizes = _split_ragged(sizes)
    leaves = [_split_ragged(leaf) for leaf in tf.nest.flatten(rows)]
    for j, k in enumerate(positions.numpy()):
      examples = tf.nest.pack_sequence_as(self._element_spec, [leaf[j] for leaf in leaves])
      parts[k].append(_ClientArrays(examples, batch_sizes[j].astype(np.int32)))
    return [_joined(part, self._element_spec) for part in parts]


def _padded_rows(batch_sizes: np.ndarray, batch_size: int) -> np.ndarray:
  """`[num_batches, batch_size]` row indices into a client's examples.

  Row `j` of batch `b` is example `start_b + j % size_b`: the real rows in
  order, then the batch's real rows again as padding.
  """
  starts = np.cumsum(batch_sizes) - batch_sizes
  columns = np.arange(batch_size)
  return starts[:, None] + columns[None, :] % np.maximum(batch_sizes, 1)[:, None]


def _stack(clients: Sequence[_ClientArrays], element_spec: Any, batch_size: int,
           total_batches: Optional[int] = None) -> ClientBatches:
  """Pads and stacks the clients' batches into one `ClientBatches`.

  `total_batches` (at least the clients' batches) pads the stack with unused
  empty batches, so that rounds of different clients can share one shape.
  """
  sizes = np.concatenate([c.batch_sizes for c in clients] + [np.zeros([0], np.int32)])
  if sizes.max(initial=0) > batch_size:
    raise ValueError(f'A client has a batch of {sizes.max()} examples, more than '
                     f'batch_size={batch_size}.')
  counts = np.asarray([len(c.batch_sizes) for c in clients], np.int32)
  first = (np.cumsum(counts) - counts).astype(np.int32)
  total_batches = max(total_batches or 0, len(sizes))

  def stack_leaf(spec, *leaves):
    if spec.shape[1:].is_fully_defined():
      out = np.zeros([total_batches, batch_size] + spec.shape[1:].as_list(),
                     spec.dtype.as_numpy_dtype)
      for client, leaf, start in zip(clients, leaves, first):
        rows = _padded_rows(client.batch_sizes, batch_size)
        np.take(leaf, rows, axis=0, out=out[start:start + len(rows)], mode='clip')
      return tf.constant(out)
    # Varying shapes: each client's examples go to the corner of the largest shape.
    out = np.zeros([total_batches, batch_size] + _largest_shape(leaves),
                   spec.dtype.as_numpy_dtype)
    for client, leaf, start in zip(clients, leaves, first):
      rows = _padded_rows(client.batch_sizes, batch_size)
      corner = tuple(slice(0, d) for d in leaf.shape[1:])
      out[(slice(start, start + len(rows)), slice(None)) + corner] = np.take(
          leaf, rows, axis=0, mode='clip')
    return tf.constant(out)

  def stack_shapes(spec, *shapes):
    out = np.zeros([total_batches, _shape_columns(spec)], np.int32)
    out[:len(sizes)] = np.concatenate(shapes)
    return tf.constant(out)

  data = tf.nest.map_structure(stack_leaf, element_spec, *[c.examples for c in clients])
  batch_shapes = () if has_fixed_shapes(element_spec) else tf.nest.map_structure(
      stack_shapes, element_spec, *[c.shapes for c in clients])
  mask = np.zeros([total_batches, batch_size], bool)
  mask[:len(sizes)] = np.arange(batch_size)[None, :] < sizes[:, None]
  return ClientBatches(data, tf.constant(mask), tf.constant(first), tf.constant(counts),
                       batch_shapes)


def _largest_batch(clients: Sequence[_ClientArrays]) -> int:
  return int(max((c.batch_sizes.max(initial=1) for c in clients), default=1))


def from_datasets(datasets: Sequence[tf.data.Dataset], *,
                  batch_size: Optional[int] = None) -> ClientBatches:
  """The `ClientBatches` of batched client datasets, in their order.

  Each dataset is iterated once, so a dataset that shuffles gives the order of
  that one pass.

  Args:
    datasets: One batched `tf.data.Dataset` per client, all with the same
      element spec (`(x, y)` or `{'x': ..., 'y': ...}` batches).
    batch_size: The padded batch size; defaults to the largest batch.

  Raises:
    ValueError: If there are no datasets or a batch exceeds `batch_size`.
  """
  if not datasets:
    raise ValueError('Expected at least one client dataset.')
  spec = datasets[0].element_spec
  clients = [_client_arrays(_read_once(d), spec) for d in datasets]
  return _stack(clients, spec, batch_size or _largest_batch(clients))


def select(batches: ClientBatches, positions: Sequence[int]) -> ClientBatches:
  """The clients at `positions` of `batches`, in that order, sharing its tensors."""
  positions = tf.constant(np.asarray(positions, np.int32).reshape([-1]))
  return batches._replace(first_batch=tf.gather(batches.first_batch, positions),
                          num_batches=tf.gather(batches.num_batches, positions))


def _power_of_two_at_least(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


# When a round's batches outgrow `RoundBatches`' padded count, it grows to the power
# of two at least this many times theirs: a cohort a little larger than the first
# then keeps the shape, rather than costing another XLA compile of the round.
ROUND_BATCHES_HEADROOM = 1.5


class PaddedClientData:
  """A `ClientData`'s clients as `ClientBatches`, each client read once.

  A client's dataset (with the `ClientData`'s preprocessing, e.g. shuffling
  with a fixed seed, then batching) is read the first time the client is
  asked for and kept as arrays; later rounds reuse those batches, as TFF
  trains on the same batches when it rebuilds the same deterministic pipeline
  each round. A pipeline that must give a new order every round is not
  reproduced: use the TFF engine for it.

  With `resident=True` (the default) all clients are read (through one
  `tf.data` pipeline, about 2 s for 1000 small clients here) and padded up
  front into one `ClientBatches`, and `batches(ids)` only selects from it: no
  copy, and the same shapes every round, so an XLA-compiled round compiles
  once. With `resident=False` clients are read when first asked for, and
  `batches(ids)` pads and stacks the chosen clients' cached arrays at each
  call, rounding the number of batches up to a power of two so that rounds
  share a few shapes; use it when most clients will never be sampled.

  Args:
    client_data: The preprocessed, batched `ClientData`.
    batch_size: The padded batch size; defaults to the largest batch read so
      far (give it to keep one shape from the first round on).
    resident: Whether to read and pad all clients up front.

  Raises:
    ValueError: If `client_data` is a `fedtff.data.RoundClientData` (use
      `RoundBatches`).
  """

  def __init__(self, client_data: ClientData, *, batch_size: Optional[int] = None,
               resident: bool = True):
    if isinstance(client_data, rounds.RoundClientData):
      raise ValueError('PaddedClientData reads each client once, but a RoundClientData\'s '
                       'datasets differ by round; use fedtff.compiled.RoundBatches.')
    self._client_data = client_data
    self._element_spec = client_data.element_type_structure
    self._batch_size = batch_size
    self._cache: Dict[str, _ClientArrays] = {}
    self._positions = {client_id: k for k, client_id in enumerate(client_data.client_ids)}
    self._resident = None
    if resident:
      self._resident = self._stack(client_data.client_ids)

  @property
  def client_ids(self) -> List[str]:
    return self._client_data.client_ids

  @property
  def element_spec(self) -> Any:
    return self._element_spec

  def _check_known(self, client_ids: Sequence[str]) -> None:
    unknown = [c for c in client_ids if c not in self._positions]
    if unknown:
      raise ValueError(f'Unknown client ids {unknown!r:.200}.')

  def _clients(self, client_ids: Sequence[str]) -> List[_ClientArrays]:
    """The clients' cached arrays, reading the uncached ones in one pipeline."""
    self._check_known(client_ids)
    missing = list(dict.fromkeys(c for c in client_ids if c not in self._cache))
    if missing:
      read = _read_clients(self._client_data.serializable_dataset_fn, self._element_spec, missing)
      self._cache.update(zip(missing, read))
    return [self._cache[c] for c in client_ids]

  def _stack(self, client_ids: Sequence[str], total_batches: Optional[int] = None
            ) -> ClientBatches:
    clients = self._clients(client_ids)
    self._batch_size = max(self._batch_size or 0, _largest_batch(clients))
    return _stack(clients, self._element_spec, self._batch_size, total_batches)

  def batches(self, client_ids: Sequence[str]) -> ClientBatches:
    """The `ClientBatches` of `client_ids`, in that order."""
    if self._resident is not None:
      self._check_known(client_ids)
      return select(self._resident, [self._positions[c] for c in client_ids])
    total = sum(len(c.batch_sizes) for c in self._clients(client_ids))
    return self._stack(client_ids, _power_of_two_at_least(total))


def _is_tagged(tagged_id: str, known: frozenset) -> bool:
  try:
    _, _, client_id = rounds.split_round_client_id(tagged_id)  # A straggler's cut included.
  except ValueError:
    return False
  return client_id in known


class RoundBatches:
  """The `ClientBatches` of a round's clients of a `fedtff.data.RoundClientData`.

  Each call reads the given clients' datasets anew, through the same
  `tf.data` pipeline TFF runs (`serializable_dataset_fn` of the round-tagged
  ids, with TFF's shuffle seeds, `fedtff.data.rounds.without_global_seed`), and pads them: the
  batches are those the TFF engine trains on in that round. Nothing is
  cached, since a client's batches differ from round to round. The number of
  batches is padded to a count that never shrinks from one call to the next:
  when a round's batches outgrow it, it grows to the power of two at least
  `ROUND_BATCHES_HEADROOM` (1.5) times theirs. So an XLA-compiled round
  compiles for a few shapes only, usually one. The padding batches are
  unused; the padded count is under 3 times the batches of the round that
  set it.

  Args:
    client_data: The training clients.
    batch_size: The padded batch size (give the preprocessing's, to keep one
      shape); defaults to the largest batch read so far.
  """

  def __init__(self, client_data: rounds.RoundClientData, *,
               batch_size: Optional[int] = None):
    self._client_data = client_data
    self._element_spec = client_data.element_type_structure
    self._batch_size = batch_size
    self._known = frozenset(client_data.client_ids)
    self._total_batches = 0
    self._read = _RoundReader(client_data.serializable_dataset_fn, self._element_spec)

  @property
  def client_ids(self) -> List[str]:
    return self._client_data.client_ids

  @property
  def element_spec(self) -> Any:
    return self._element_spec

  def batches(self, round_num: int, client_ids: Sequence[str]) -> ClientBatches:
    """The padded batches of `client_ids` (plain ids) in round `round_num`, in that order."""
    unknown = [c for c in client_ids if c not in self._known]
    if unknown:
      raise ValueError(f'Unknown client ids {unknown!r:.200}.')
    return self.tagged_batches(rounds.round_client_ids(round_num, client_ids))

  def tagged_batches(self, tagged_ids: Sequence[str]) -> ClientBatches:
    """The padded batches of round-tagged ids (`fedtff.data.round_client_id`)."""
    bad = [t for t in tagged_ids if not _is_tagged(t, self._known)]
    if bad:
      raise ValueError("Expected round-tagged ids '<round>/<client id>' of known clients "
                       f'(fedtff.data.round_client_id), got {bad!r:.200}.')
    clients = self._read(tagged_ids)
    self._batch_size = max(self._batch_size or 0, _largest_batch(clients))
    total = max(sum(len(c.batch_sizes) for c in clients), 1)  # XLA gathers from no empty tensor.
    if total > self._total_batches:
      self._total_batches = _power_of_two_at_least(math.ceil(ROUND_BATCHES_HEADROOM * total))
    return _stack(clients, self._element_spec, self._batch_size, self._total_batches)
