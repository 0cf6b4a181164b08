"""Train/test splits of federated data: by client, by example, or both.

* Held-out clients: some clients' data is kept whole for evaluation
  (`split_client_ids`, `split_client_data`), as in TFF's Stack Overflow
  `heldout` split and `ClientData.train_test_client_split`.
* Per-client holdout: every client keeps the last `test_fraction` of its
  examples for testing (`holdout_examples`, `holdout_client_examples`), as
  EMNIST, Shakespeare and FedProx's synthetic data do: a client of `n`
  examples trains on the first `floor(n * (1 - test_fraction))`.
* Both: `split` on `FederatedArrays`.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.data import client_data as client_data_lib

ClientData = tff.simulation.datasets.ClientData
FederatedArrays = client_data_lib.FederatedArrays
Partition = List[np.ndarray]


def split_client_ids(client_ids: Sequence[str], num_heldout: int, *,
                     seed: int) -> Tuple[List[str], List[str]]:
  """Draws `num_heldout` ids at random; returns `(kept, heldout)` in input order.

  Raises:
    ValueError: If `num_heldout` is not in `[0, len(client_ids) - 1]`.
  """
  client_ids = list(client_ids)
  if not 0 <= num_heldout < len(client_ids):
    raise ValueError(
        f'num_heldout must be in [0, {len(client_ids) - 1}] (fewer than the '
        f'{len(client_ids)} clients), got {num_heldout}.')
  chosen = set(np.random.default_rng(seed).choice(len(client_ids), num_heldout, replace=False))
  kept = [c for k, c in enumerate(client_ids) if k not in chosen]
  return kept, [c for k, c in enumerate(client_ids) if k in chosen]


def _check_fraction(test_fraction: float) -> None:
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')


def num_train_examples(num_examples: int, test_fraction: float) -> int:
  """`floor(num_examples * (1 - test_fraction))`, robust to float rounding."""
  return int(np.floor(num_examples * (1.0 - test_fraction) + 1e-9))


def _check_not_empty(position: int, num_examples: int, num_train: int,
                     test_fraction: float) -> None:
  if num_train == 0:
    raise ValueError(
        f'Client {position} has no training examples after holding out '
        f'{test_fraction:g} of its {num_examples}; pass allow_empty=True to allow that.')


def holdout_examples(partition: Sequence[np.ndarray], test_fraction: float, *,
                     allow_empty: bool = False) -> Tuple[Partition, Partition]:
  """Splits every client's indices into its first and last examples.

  A client of n examples keeps `floor(n * (1 - test_fraction))` for training
  and holds out the other `ceil(n * test_fraction)`, so its test part is never
  empty; its training part is empty when `n * (1 - test_fraction) < 1`.

  Args:
    partition: For each client, the indices of its examples, in order.
    test_fraction: The share of each client's examples held out, in (0, 1).
    allow_empty: Whether a client may end with no training examples.

  Returns:
    `(train, test)` partitions: client k's first
    `floor(n_k * (1 - test_fraction))` indices, and the rest.

  Raises:
    ValueError: If `test_fraction` is not in (0, 1), or a client ends empty
      and that is not allowed.
  """
  _check_fraction(test_fraction)
  train, test = [], []
  for position, indices in enumerate(partition):
    indices = np.asarray(indices)
    num_train = num_train_examples(len(indices), test_fraction)
    if not allow_empty:
      _check_not_empty(position, len(indices), num_train, test_fraction)
    train.append(indices[:num_train])
    test.append(indices[num_train:])
  return train, test


@dataclasses.dataclass(frozen=True)
class Split:
  """The parts of a split; a part not asked for is None.

  Attributes:
    train: The kept clients' training examples.
    test: The kept clients' held-out examples (same client ids as `train`).
    heldout: The held-out clients, with all their examples.
  """
  train: FederatedArrays
  test: Optional[FederatedArrays]
  heldout: Optional[FederatedArrays]


def split(data: FederatedArrays, *, seed: int, num_heldout_clients: int = 0,
          test_fraction: Optional[float] = None, allow_empty: bool = False) -> Split:
  """Holds out whole clients, the tail of every client's examples, or both.

  Args:
    data: The federated arrays to split.
    seed: Seed of the choice of held-out clients.
    num_heldout_clients: How many clients to hold out whole (0 for none).
    test_fraction: The share of each kept client's examples to hold out
      (None for none).
    allow_empty: Whether a kept client may end with no training examples.

  Raises:
    ValueError: As `split_client_ids` and `holdout_examples`.
  """
  kept, heldout = split_client_ids(data.client_ids, num_heldout_clients, seed=seed)
  train = data.select(kept)
  test = None
  if test_fraction is not None:
    train_rows, test_rows = holdout_examples(train.partition, test_fraction,
                                             allow_empty=allow_empty)
    train, test = (dataclasses.replace(train, partition=train_rows),
                   dataclasses.replace(train, partition=test_rows))
  return Split(train, test, data.select(heldout) if heldout else None)


def _with_ids(client_data: ClientData, client_ids: Sequence[str]) -> ClientData:
  return ClientData.from_clients_and_tf_fn(list(client_ids), client_data.serializable_dataset_fn)


def split_client_data(client_data: ClientData, num_heldout: int, *,
                      seed: int) -> Tuple[ClientData, ClientData]:
  """`(kept, heldout)` `ClientData` over the same dataset function, no data copied.

  Raises:
    ValueError: If `num_heldout` is not in `[1, num_clients - 1]`.
  """
  if num_heldout < 1:
    raise ValueError(f'num_heldout must be positive, got {num_heldout}.')
  kept, heldout = split_client_ids(client_data.client_ids, num_heldout, seed=seed)
  return _with_ids(client_data, kept), _with_ids(client_data, heldout)


def _count(dataset: tf.data.Dataset) -> tf.Tensor:
  return dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)


def holdout_client_examples(client_data: ClientData,
                            test_fraction: float) -> Tuple[ClientData, ClientData]:
  """`(train, test)` `ClientData`: each client's first examples and the rest.

  Each client's dataset is counted (one pass), then split with `take` and
  `skip`, so both stay serializable. Apply it before any shuffling
  preprocessing, or the two parts overlap. A client with
  `n * (1 - test_fraction) < 1` gets an empty training dataset; use
  `holdout_examples` on arrays to have that checked.

  Raises:
    ValueError: If `test_fraction` is not in (0, 1).
  """
  _check_fraction(test_fraction)
  dataset_fn = client_data.serializable_dataset_fn

  def num_train(dataset):
    total = tf.cast(_count(dataset), tf.float64)
    return tf.cast(tf.floor(total * (1.0 - test_fraction) + 1e-9), tf.int64)

  def train_fn(client_id):
    dataset = dataset_fn(client_id)
    return dataset.take(num_train(dataset))

  def test_fn(client_id):
    dataset = dataset_fn(client_id)
    return dataset.skip(num_train(dataset))

  ids = client_data.client_ids
  return (ClientData.from_clients_and_tf_fn(ids, train_fn),
          ClientData.from_clients_and_tf_fn(ids, test_fn))
