"""Tasks: a federated dataset split into train and evaluation clients, plus a model.

`build_task(config)` turns the `data` and `model` groups of an experiment config
into a `Task`. Array sources (scikit-learn's digits, FedProx's synthetic data,
a directory of per-client `.npz` files) are partitioned over clients when they
are centralized, split into training and evaluation data (held-out clients, a
held-out share of every client's examples, or FedProx's own per-user test
split) and batched with the client preprocessing spec. docs/data.md describes
every source and partition.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import data
from fedtff import models

ClientData = tff.simulation.datasets.ClientData
DATASETS = ('digits', 'synthetic_fedprox', 'synthetic_iid', 'npz_dir')
PARTITIONS = ('iid', 'dirichlet', 'dirichlet_prior', 'shards', 'quantity_skew')


@dataclasses.dataclass(frozen=True)
class Task:
  """Preprocessed train and evaluation clients and the Keras model factory."""
  train_data: ClientData
  test_data: ClientData
  model_fn: Callable[[], tf.keras.Model]
  num_classes: int

  @property
  def element_spec(self) -> Any:
    return self.train_data.element_type_structure


def batch_fn(*, batch_size: int, epochs: int = 1, shuffle_buffer: int = 0,
             seed: int = 0) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Client preprocessing: shuffle, repeat for `epochs`, then batch."""
  return data.ClientPreprocessing(batch_size=batch_size, epochs=epochs,
                                  shuffle_buffer=shuffle_buffer, shuffle_seed=seed).build()


def _partition(labels: np.ndarray, config: ml_collections.ConfigDict, seed: int):
  name, num_clients = config.partition, config.num_clients
  if name == 'iid':
    return data.iid(len(labels), num_clients, seed=seed)
  if name == 'dirichlet':
    return data.dirichlet_per_class(labels, num_clients, alpha=config.dirichlet_alpha, seed=seed)
  if name == 'dirichlet_prior':
    return data.dirichlet_prior(labels, num_clients, alpha=config.dirichlet_alpha, seed=seed)
  if name == 'shards':
    return data.shards(labels, num_clients, shards_per_client=config.shards_per_client, seed=seed)
  return data.quantity_skew(len(labels), num_clients, seed=seed, sigma=config.quantity_sigma)


def _centralized(features, labels, config, seed) -> data.FederatedArrays:
  partition = _partition(labels, config, seed)
  return data.FederatedArrays(features, labels, partition,
                              [f'{k:05d}' for k in range(len(partition))])


def _split(arrays: data.FederatedArrays, config, seed) -> Tuple[Any, Any]:
  """(train, eval) arrays: held-out clients, or each client's held-out share."""
  if config.num_test_clients == 0 and config.test_fraction == 0:
    raise ValueError('Set data.num_test_clients or data.test_fraction: the run needs '
                     'evaluation data.')
  parts = data.split(arrays, seed=seed, num_heldout_clients=config.num_test_clients,
                     test_fraction=config.test_fraction or None)
  return parts.train, parts.heldout if parts.heldout is not None else parts.test


def _arrays(config: ml_collections.ConfigDict, seed: int):
  """(train, eval) FederatedArrays of the configured source."""
  if config.dataset == 'digits':
    return _split(_centralized(*data.load_digits(), config, seed), config, seed)
  if config.dataset == 'npz_dir':
    if not config.path:
      raise ValueError("data.dataset='npz_dir' needs data.path, a directory of <client>.npz files.")
    return _split(data.load_npz_dir(config.path), config, seed)
  if config.dataset == 'synthetic_iid':
    synthetic = data.synthetic_fedprox_iid(seed=seed)
  else:
    synthetic = data.synthetic_fedprox(config.synthetic_alpha, config.synthetic_beta, seed=seed)
  return synthetic.train, synthetic.test


def _model_fn(config: ml_collections.ConfigDict, input_shape, num_classes: int):
  kwargs = {'hidden_units': tuple(config.hidden_units)} if config.name == 'mlp' else {}
  return functools.partial(models.build, config.name, input_shape=tuple(input_shape),
                           num_classes=num_classes, **kwargs)


def _preprocessing(config: ml_collections.ConfigDict, seed: int) -> data.ClientPreprocessing:
  return data.ClientPreprocessing(
      batch_size=config.batch_size, epochs=config.client_epochs,
      shuffle_buffer=config.shuffle_buffer, shuffle_seed=seed,
      max_elements=config.max_elements or None, drop_remainder=config.drop_remainder)


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Builds the task that `config.data` and `config.model` describe."""
  train, evaluation = _arrays(config.data, config.seed)
  num_classes = int(np.max(train.labels)) + 1
  if config.data.num_classes:
    num_classes = config.data.num_classes
    data.check_labels(train.labels, num_classes)
  features = train.features
  input_shape = np.shape(features)[1:] if not isinstance(features, dict) else None
  eval_fn = data.ClientPreprocessing(batch_size=max(config.data.batch_size, 64)).build()
  return Task(
      train_data=train.to_client_data().preprocess(_preprocessing(config.data, config.seed).build()),
      test_data=evaluation.to_client_data(allow_empty_clients=True).preprocess(eval_fn),
      model_fn=_model_fn(config.model, input_shape, num_classes),
      num_classes=num_classes)
