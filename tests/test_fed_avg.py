"""The FedAvg builder: same process as raw TFF, and clear errors on misuse."""

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.algorithms import tff_model
from tests import conftest

NUM_FEATURES = 8
NUM_CLASSES = 3


def keras_model():
  return fedtff.models.mlp((NUM_FEATURES,), NUM_CLASSES, hidden_units=(6,))


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(90), 3))
  return [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]


def raw_tff_process(element_spec, weighted):
  """The process a user would build by hand with tff.learning."""

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(), input_spec=element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])

  build = (tff.learning.algorithms.build_weighted_fed_avg if weighted
           else tff.learning.algorithms.build_unweighted_fed_avg)
  return build(model_fn, tff.learning.optimizers.build_sgdm(0.1),
               tff.learning.optimizers.build_sgdm(1.0, momentum=0.9))


def run_rounds(process, initial_weights, datasets, num_rounds=2):
  state = process.set_model_weights(process.initialize(), initial_weights)
  for _ in range(num_rounds):
    output = process.next(state, datasets)
    state = output.state
  return process.get_model_weights(state), output.metrics


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_matches_raw_tff_fed_avg_after_two_rounds(client_datasets, weighted):
  element_spec = client_datasets[0].element_spec
  raw = raw_tff_process(element_spec, weighted)
  ours = fedtff.build_fed_avg(
      keras_model, client_datasets[0],
      client_optimizer=fedtff.build_optimizer('sgd', 0.1),
      server_optimizer=fedtff.build_optimizer('sgd', 1.0, momentum=0.9), weighted=weighted)
  assert ours.next.type_signature == raw.next.type_signature
  initial = raw.get_model_weights(raw.initialize())
  raw_weights, raw_metrics = run_rounds(raw, initial, client_datasets)
  our_weights, our_metrics = run_rounds(ours, initial, client_datasets)
  for a, b in zip(raw_weights.trainable, our_weights.trainable):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert our_metrics['client_work']['train'] == raw_metrics['client_work']['train']
  moved = max(np.abs(a - b).max() for a, b in zip(initial.trainable, our_weights.trainable))
  assert moved > 1e-3


def test_loss_falls_over_rounds(client_datasets):
  process = fedtff.build_fed_avg(keras_model, client_datasets[0].element_spec,
                                 client_optimizer=fedtff.build_optimizer('sgd', 0.2))
  # Seeded weights: TFF's initialize() draws unseeded ones, so the drop would vary by run.
  state = process.set_model_weights(process.initialize(),
                                    tff_model.initial_weights(keras_model, seed=0))
  losses = []
  for _ in range(5):
    output = process.next(state, client_datasets)
    state = output.state
    losses.append(output.metrics['client_work']['train']['loss'])
  assert losses[-1] < 0.8 * losses[0]


def test_custom_loss_and_metrics_are_used(client_datasets):
  process = fedtff.build_fed_avg(
      keras_model, client_datasets[0],
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf.keras.metrics.SparseTopKCategoricalAccuracy(k=2, name='top2')])
  output = process.next(process.initialize(), client_datasets)
  assert set(output.metrics['client_work']['train']) == {'top2', 'loss', 'num_examples', 'num_batches'}


def compiled_model():
  model = keras_model()
  model.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')
  return model


@pytest.mark.parametrize(
    'model_fn, spec_change, kwargs, error, message',
    [
        (keras_model(), None, {}, TypeError, 'got a Keras model object'),
        (compiled_model, None, {}, ValueError, 'returned a compiled Keras model'),
        (lambda: 3, None, {}, TypeError, 'must return a tf.keras.Model, got int'),
        (keras_model, 'wide_input', {}, ValueError, 'does not accept the dataset inputs'),
        (keras_model, 'label_matrix', {}, ValueError, 'does not fit labels'),
        (keras_model, None, {'client_optimizer': tf.keras.optimizers.SGD(0.1)},
         TypeError, 'client optimizer is a Keras optimizer'),
        (keras_model, None, {'server_optimizer': 'sgd'}, TypeError,
         'Expected a tff.learning.optimizers.Optimizer for the server optimizer'),
    ],
    ids=['model_object', 'compiled_model', 'not_a_model', 'input_mismatch', 'label_mismatch',
         'keras_optimizer', 'optimizer_name_string'])
def test_rejects_misuse_before_tracing(model_fn, spec_change, kwargs, error, message):
  spec = collections.OrderedDict(
      x=tf.TensorSpec([None, NUM_FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))
  if spec_change == 'wide_input':
    spec['x'] = tf.TensorSpec([None, NUM_FEATURES + 1], tf.float32)
  if spec_change == 'label_matrix':
    spec['y'] = tf.TensorSpec([None, 5], tf.int32)
  with pytest.raises(error, match=message):
    fedtff.build_fed_avg(model_fn, spec, **kwargs)


def test_rejects_elements_that_are_not_pairs():
  with pytest.raises(TypeError, match='are \\(x, y\\) pairs'):
    fedtff.build_fed_avg(keras_model, tf.TensorSpec([None, NUM_FEATURES]))


def test_unknown_optimizer_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="Unknown optimizer 'sgdd'; expected one of adagrad, adam"):
    fedtff.build_optimizer('sgdd', 0.1)


def test_evaluation_builder_reports_accuracy(client_datasets):
  process = fedtff.build_evaluation(keras_model, client_datasets[0])
  output = process.next(process.initialize(), client_datasets)
  metrics = output.metrics['client_work']['eval']['current_round_metrics']
  assert metrics['num_examples'] == 90 and 0.0 <= metrics['accuracy'] <= 1.0
