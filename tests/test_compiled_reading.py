"""The compiled engine's readers trace client datasets as TFF does: the dataset
function without AutoGraph, the functions it maps with it (fedtff/compiled/batches.py)."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import compiled
from fedtff import data
from tests import conftest

BATCH_SIZE = 4


def _branchy(element):
  """A mapped function with a Python `if` on a tensor: it needs AutoGraph, as in TFF."""
  x = element['x']
  if tf.reduce_sum(x) > 0:
    x = x * 2.0
  else:
    x = -x
  return collections.OrderedDict(x=x, y=element['y'])


def _raw_clients():
  features, labels = conftest.tiny_classification_arrays(num_examples=30, num_features=3)
  return fedtff.data.from_arrays(features, labels, [np.arange(0, 13), np.arange(13, 30)])


def _as_tff_builds(dataset_fn, client_id):
  """Client `client_id`'s batches' `x`, built and run as TFF does: a graph without a seed."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    return session.run(dataset_fn(client_id).map(
        lambda batch: batch['x']).unbatch().batch(100).get_single_element())


def _rows(batches, k):
  """Client `k`'s real rows of `x`, in order."""
  own = slice(int(batches.first_batch[k]), int(batches.first_batch[k] + batches.num_batches[k]))
  return tf.boolean_mask(batches.data['x'][own], batches.mask[own]).numpy()


@pytest.mark.parametrize('resident', [True, False])
def test_padded_client_data_converts_mapped_functions_as_tff(resident):
  client_data = _raw_clients().preprocess(
      lambda d: d.map(_branchy).batch(BATCH_SIZE))
  batches = compiled.PaddedClientData(client_data, resident=resident).batches(['1', '0'])
  for k, client_id in enumerate(['1', '0']):
    np.testing.assert_array_equal(
        _rows(batches, k), _as_tff_builds(client_data.serializable_dataset_fn, client_id))


def test_round_batches_convert_mapped_functions_as_tff():
  preprocess = fedtff.data.ClientPreprocessing(batch_size=BATCH_SIZE, shuffle_buffer=50)
  client_data = data.RoundClientData(_raw_clients(), preprocess.build(_branchy), seed=3)
  batches = compiled.RoundBatches(client_data, batch_size=BATCH_SIZE).batches(2, ['1', '0'])
  for k, client_id in enumerate(['1', '0']):
    np.testing.assert_array_equal(
        _rows(batches, k),
        _as_tff_builds(client_data.serializable_dataset_fn, data.round_client_id(2, client_id)))


def _refusing_preprocess(dataset, seed):
  """A dataset function that uses a tensor as a Python bool: TFF's trace refuses it."""
  if seed[0] > 0:
    dataset = dataset.map(_branchy)
  return dataset.batch(BATCH_SIZE)


def test_the_dataset_function_is_traced_without_autograph_as_in_tff():
  raw = _raw_clients()
  client_data = data.RoundClientData(raw, _refusing_preprocess, seed=0)
  tagged = data.round_client_id(1, '0')
  with pytest.raises(TypeError, match='Python `bool`'):
    _as_tff_builds(client_data.serializable_dataset_fn, tagged)
  with pytest.raises(TypeError, match='Python `bool`'):
    compiled.RoundBatches(client_data).tagged_batches([tagged])
  plain = tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      ['0'], lambda client_id: _refusing_preprocess(
          raw.serializable_dataset_fn(client_id),
          tf.strings.to_hash_bucket_fast([client_id], 5)))
  with pytest.raises(TypeError, match='Python `bool`'):
    compiled.PaddedClientData(plain)
