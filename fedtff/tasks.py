"""Tasks: a federated dataset split into train and test clients, plus a model.

`build_task(config)` turns the `data` and `model` groups of an experiment config
into a `Task`. The digits task splits scikit-learn's 8x8 digits over clients
and holds whole clients out for testing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import ml_collections
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import data
from fedtff import models

ClientData = tff.simulation.datasets.ClientData


@dataclasses.dataclass(frozen=True)
class Task:
  """Preprocessed train and test clients and the Keras model factory."""
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

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    if shuffle_buffer > 1:
      dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    return dataset.repeat(epochs).batch(batch_size)

  return preprocess


def _partition(labels, config: ml_collections.ConfigDict, seed: int):
  if config.partition == 'iid':
    return data.iid(len(labels), config.num_clients, seed=seed)
  return data.dirichlet_per_class(
      labels, config.num_clients, alpha=config.dirichlet_alpha, seed=seed)


def _model_fn(config: ml_collections.ConfigDict, input_shape, num_classes: int):
  kwargs = {'hidden_units': tuple(config.hidden_units)} if config.name == 'mlp' else {}
  return functools.partial(models.build, config.name, input_shape=tuple(input_shape),
                           num_classes=num_classes, **kwargs)


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Builds the task that `config.data` and `config.model` describe."""
  data_config = config.data
  if not 1 <= data_config.num_test_clients < data_config.num_clients:
    raise ValueError(
        f'data.num_test_clients must be in [1, {data_config.num_clients - 1}] '
        f'(fewer than data.num_clients), got {data_config.num_test_clients}.')
  features, labels = data.load_digits()
  partition = _partition(labels, data_config, config.seed)
  client_data = data.from_arrays(features, labels, partition)
  num_train = data_config.num_clients - data_config.num_test_clients
  ids = client_data.client_ids
  train_ids, test_ids = ids[:num_train], ids[num_train:]
  train_fn = batch_fn(batch_size=data_config.batch_size, epochs=data_config.client_epochs,
                      shuffle_buffer=data_config.shuffle_buffer, seed=config.seed)
  test_fn = batch_fn(batch_size=max(data_config.batch_size, 64))
  num_classes = int(labels.max()) + 1
  return Task(
      train_data=_subset(client_data, train_ids).preprocess(train_fn),
      test_data=_subset(client_data, test_ids).preprocess(test_fn),
      model_fn=_model_fn(config.model, features.shape[1:], num_classes),
      num_classes=num_classes)


def _subset(client_data: ClientData, client_ids) -> ClientData:
  return ClientData.from_clients_and_tf_fn(list(client_ids), client_data.serializable_dataset_fn)
