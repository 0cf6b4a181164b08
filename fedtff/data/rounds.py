"""Client datasets whose randomness varies by round and stays reproducible.

A client's shuffle and augmentation in round `r` are seeded by a key derived
from `(seed, r, client id)` alone, as FedJAX derives per-client PRNG keys
(Ro et al. 2021, arXiv 2108.02117): a client sees a new example order (and new
random crops) every round, two clients of the same size get different orders,
and a run, or a resumed run, repeats exactly.

The key is a stateless TensorFlow seed (int64 `[2]`), computed with graph ops
so that TFF can build the dataset inside its runtime from a string:

    key = fold_in(fold_in([0, seed], round), fingerprint(client_id))

`fold_in` is `tf.random.experimental.stateless_fold_in` with the Philox
algorithm, and `fingerprint` FarmHash's Fingerprint64 of the id's bytes
(`tf.strings.to_hash_bucket_fast(id, 2**63 - 1)`), which TensorFlow keeps
stable; Python's `hash()` would change from process to process. The key is
split in two (`tf.random.split`): the first draws the `tf.data` shuffle seed
(`shuffle_seed`), the second, folded with an element's position in the
client's round stream, seeds that element's stateless augmentation
(`element_seed`).

`RoundClientData` wraps a `ClientData` and a preprocessing function of
`(dataset, seed=key)`. Its `serializable_dataset_fn` and `dataset_computation`
take round-tagged ids, `round_client_id(round_num, client_id)` =
`'<round>/<client id>'`; the id is everything after the first '/', so ids may
contain '/' themselves. A straggler's id carries its cut,
`round_client_id(round_num, client_id, max_batches=k)` = `'<round>:<k>/<client
id>'`: its round dataset is cut to its first k batches (`dataset.take(k)`, the
same batches in the same order as the full round's), so both engines train it
for k local steps (`fedtff.data.heterogeneity`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import
import tensorflow_federated as tff

ClientData = tff.simulation.datasets.ClientData
SeededDatasetFn = Callable[..., tf.data.Dataset]
SEPARATOR = '/'
CUT_SEPARATOR = ':'  # '<round>:<max batches>/<client id>' (a straggler's cut).
_ALG = 'philox'
_MAX_FINGERPRINT = 2**63 - 1


def round_client_id(round_num: int, client_id: str, *, max_batches: Optional[int] = None) -> str:
  """The id that asks a `RoundClientData` for `client_id`'s dataset of `round_num`.

  Args:
    round_num: The round, from 0.
    client_id: The plain client id.
    max_batches: A straggler's number of batches k (at least 1): the dataset is
      cut to its first k batches. None: the whole dataset.
  """
  if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
    raise ValueError(f'round_num must be a non-negative int, got {round_num!r}.')
  if max_batches is None:
    return f'{round_num}{SEPARATOR}{client_id}'
  if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
    raise ValueError(f'max_batches must be a positive int or None, got {max_batches!r}.')
  return f'{round_num}{CUT_SEPARATOR}{max_batches}{SEPARATOR}{client_id}'


def split_round_client_id(tagged_id: str) -> Tuple[int, Optional[int], str]:
  """`(round, max_batches or None, client id)` of a `round_client_id` string (Python).

  Raises:
    ValueError: If `tagged_id` is not '<round>/<id>' or '<round>:<k>/<id>'.
  """
  head, separator, client_id = tagged_id.partition(SEPARATOR)
  round_text, cut, batches_text = head.partition(CUT_SEPARATOR)
  if not separator or not round_text.isdigit() or (cut and not batches_text.isdigit()):
    raise ValueError(f"Expected a round-tagged id '<round>/<client id>' or "
                     f"'<round>:<batches>/<client id>', got {tagged_id!r}.")
  return int(round_text), int(batches_text) if cut else None, client_id


def round_client_ids(round_num: int, client_ids: Sequence[str]) -> List[str]:
  """`round_client_id(round_num, c)` for each of `client_ids`."""
  return [round_client_id(round_num, c) for c in client_ids]


def parse_round_client_id(tagged: Any) -> Tuple[tf.Tensor, tf.Tensor]:
  """`(round int64, client id string)` tensors of a `round_client_id` string (TF ops)."""
  round_num, _, client_id = _parse(tagged)
  return round_num, client_id


def _parse(tagged: Any) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """`(round int64, max batches int64 (-1: all), client id)` of a tagged id (TF ops)."""
  parts = tf.strings.split(tf.convert_to_tensor(tagged, tf.string), SEPARATOR, maxsplit=1)
  head = tf.strings.split(parts[0], CUT_SEPARATOR, maxsplit=1)
  fields = tf.concat([head, tf.constant(['-1'])], axis=0)  # '<round>' gets max batches -1.
  return (tf.strings.to_number(fields[0], tf.int64), tf.strings.to_number(fields[1], tf.int64),
          parts[1])


def client_seed(seed: Any, round_num: Any, client_id: Any) -> tf.Tensor:
  """The stateless key, int64 `[2]`, of `client_id`'s datasets in `round_num`.

  Args:
    seed: The run's seed (an int, or an int64 scalar tensor).
    round_num: The round (an int, or an int64 scalar tensor).
    client_id: The client id (a string, or a string scalar tensor).
  """
  base = tf.stack([tf.constant(0, tf.int64), tf.cast(seed, tf.int64)])
  key = tf.random.experimental.stateless_fold_in(base, tf.cast(round_num, tf.int64), alg=_ALG)
  fingerprint = tf.strings.to_hash_bucket_fast(client_id, _MAX_FINGERPRINT)
  return tf.random.experimental.stateless_fold_in(key, fingerprint, alg=_ALG)


def shuffle_seed(key: tf.Tensor) -> tf.Tensor:
  """The int64 op seed of a client's `tf.data` shuffle under `key`.

  `Dataset.shuffle` takes it modulo 2**31 - 1 and pairs it with TensorFlow's
  default graph seed (TFF builds client datasets in a graph without a seed).
  """
  return tf.random.stateless_uniform([], seed=tf.random.split(key, 2, alg=_ALG)[0],
                                     dtype=tf.int64, minval=None, maxval=None, alg=_ALG)


def element_seed(key: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """The stateless seed, int64 `[2]`, of element `index` of a client's round stream."""
  return tf.random.experimental.stateless_fold_in(
      tf.random.split(key, 2, alg=_ALG)[1], tf.cast(index, tf.int64), alg=_ALG)


@contextlib.contextmanager
def without_global_seed() -> Iterator[None]:
  """Random ops built in this block ignore any global (or graph-level) seed.

  `Dataset.shuffle(seed=s)` draws with `(global seed, s)`, and TFF builds
  client datasets in a graph without a seed, where that is
  `(DEFAULT_GRAPH_SEED, s)`. Clearing the eager global seed (eagerly) or the
  graph's seed (in a `tf.function`) while a dataset is built gives TFF's order
  whatever `tf.random.set_seed` said; both are put back untouched afterwards.
  """
  if tf.executing_eagerly():
    ctx = context.context()
    saved = ctx._seed, getattr(ctx, '_rng', None)  # pylint: disable=protected-access
    ctx._seed = None  # pylint: disable=protected-access
    try:
      yield
    finally:
      ctx._seed, ctx._rng = saved  # pylint: disable=protected-access
  else:
    graph = tf.compat.v1.get_default_graph()
    saved_seed = graph.seed
    graph.seed = None
    try:
      yield
    finally:
      graph.seed = saved_seed


class RoundClientData(ClientData):
  """A `ClientData` whose datasets are seeded by `(seed, round, client id)`.

  `serializable_dataset_fn` (and so `dataset_computation`, which TFF runs
  inside its runtime) takes a round-tagged id, `round_client_id(round_num,
  client_id)`, builds `client_data`'s dataset of the client and applies
  `preprocess_fn(dataset, seed=client_seed(seed, round_num, client_id))`.
  `create_tf_dataset_for_client(client_id, round_num=0)` takes a plain id.
  The datasets are built without the global seed (`without_global_seed`), so
  they are the same eagerly, in a `tf.function` and inside TFF, whatever
  `tf.random.set_seed` said.

  Args:
    client_data: The clients' raw datasets (plain ids).
    preprocess_fn: `(dataset, seed=key) -> dataset`, e.g. the function
      `ClientPreprocessing.build` returns.
    seed: The run's seed.
  """

  def __init__(self, client_data: ClientData, preprocess_fn: SeededDatasetFn, *, seed: int):
    super().__init__()
    self._client_data = client_data
    self._seed = int(seed)

    def serializable_dataset_fn(tagged_id) -> tf.data.Dataset:
      with without_global_seed():  # The same datasets eagerly, traced, and in TFF.
        round_num, max_batches, client_id = _parse(tagged_id)
        key = client_seed(self._seed, round_num, client_id)
        dataset = preprocess_fn(client_data.serializable_dataset_fn(client_id), seed=key)
        return dataset.take(max_batches)  # A straggler's first batches; -1: all.

    self._serializable_dataset_fn = serializable_dataset_fn
    self._element_type_structure = self.create_tf_dataset_for_client(
        client_data.client_ids[0]).element_spec

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def client_ids(self) -> List[str]:
    return self._client_data.client_ids

  @property
  def serializable_dataset_fn(self) -> Callable[[Any], tf.data.Dataset]:
    """`round_client_id(round_num, client_id) -> dataset`."""
    return self._serializable_dataset_fn

  @property
  def element_type_structure(self) -> Any:
    return self._element_type_structure

  def create_tf_dataset_for_client(self, client_id: str, *, round_num: int = 0
                                  ) -> tf.data.Dataset:
    """The dataset of `client_id` (a plain id) in round `round_num`."""
    if client_id not in self.client_ids:
      raise ValueError(f'Unknown client id {client_id!r}.')
    return self._serializable_dataset_fn(round_client_id(round_num, client_id))

  def create_tf_dataset_from_all_clients(self, seed=None) -> tf.data.Dataset:
    raise NotImplementedError(
        'RoundClientData datasets differ by round; concatenate '
        'create_tf_dataset_for_client(client_id, round_num=...) instead.')
