"""SCAFFOLD (option II) against a float64 NumPy reference of the paper's update, both engines."""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.algorithms import scaffold
from fedtff.algorithms import tff_model
from tests import conftest

NUM_FEATURES, NUM_CLASSES, CLIENT_LR, SERVER_LR = 8, 3, 0.1, 0.7
POPULATION = 4
# Clients 1 and 2 are sampled in both rounds, so their c_i from round 1 are used in round 2.
ROUNDS = ([0, 1, 2], [2, 1, 3])


def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels,
                                        np.array_split(np.arange(90), POPULATION))
  # Different numbers of local steps per client (K varies): 2 or 3 epochs of batches of 8.
  return [client_data.create_tf_dataset_for_client(i).batch(8).repeat(2 + n % 2)
          for n, i in enumerate(client_data.client_ids)]


@pytest.fixture(scope='module')
def initial_weights():
  return tff_model.initial_weights(keras_model, seed=1)


def softmax_gradient(kernel, bias, x, y):
  logits = x @ kernel + bias
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  probs[np.arange(len(y)), y] -= 1.0
  probs /= len(y)
  return [x.T @ probs, probs.sum(axis=0)]


def reference_scaffold(weights, client_datasets, *, weighted):
  """SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II) for softmax regression,
  float64: returns the server model, c, and every client's c_i after `ROUNDS`."""
  x = [np.asarray(w, np.float64) for w in weights]
  c = [np.zeros_like(p) for p in x]
  c_clients = [[np.zeros_like(p) for p in x] for _ in client_datasets]
  batches = [[(b['x'].astype(np.float64), b['y']) for b in ds.as_numpy_iterator()]
             for ds in client_datasets]
  for cohort in ROUNDS:
    delta_y, delta_c, sizes = [], [], []
    for i in cohort:
      y = [p.copy() for p in x]
      for features, labels in batches[i]:
        g = softmax_gradient(*y, features, labels)
        y = [yk - CLIENT_LR * (gk - cik + ck) for yk, gk, cik, ck in zip(y, g, c_clients[i], c)]
      steps = len(batches[i])
      new_ci = [cik - ck + (xk - yk) / (steps * CLIENT_LR)
                for cik, ck, xk, yk in zip(c_clients[i], c, x, y)]
      delta_y.append([yk - xk for yk, xk in zip(y, x)])
      delta_c.append([n - o for n, o in zip(new_ci, c_clients[i])])
      c_clients[i] = new_ci
      sizes.append(sum(len(l) for _, l in batches[i]) if weighted else 1)
    shares = np.array(sizes, np.float64) / sum(sizes)
    x = [xk + SERVER_LR * sum(s * d[k] for s, d in zip(shares, delta_y)) for k, xk in enumerate(x)]
    c = [ck + len(cohort) / POPULATION * np.mean([d[k] for d in delta_c], axis=0)
         for k, ck in enumerate(c)]
  return x, c, c_clients


def optimizers_kwargs():
  return dict(client_optimizer=fedtff.build_optimizer('sgd', CLIENT_LR),
              server_optimizer=fedtff.build_optimizer('sgd', SERVER_LR))


def run_tff(process, initial_weights, client_datasets):
  state = process.set_model_weights(process.initialize(), initial_weights)
  controls = [process.control_template for _ in client_datasets]
  for cohort in ROUNDS:
    output = process.next(state, [client_datasets[i] for i in cohort],
                          [controls[i] for i in cohort])
    state = output.state
    for i, new in zip(cohort, output.client_controls):
      controls[i] = new
  return process.get_model_weights(state).trainable, state.client_work, controls, output.metrics


def run_compiled(process, initial_weights, client_datasets):
  state = process.set_model_weights(process.initialize(), initial_weights)
  rows = np.zeros([len(client_datasets), process.state_size], np.float32)
  for cohort in ROUNDS:
    output, new_rows = process.next_with_controls(
        state, [client_datasets[i] for i in cohort], rows[cohort])
    state = output.state
    rows[cohort] = new_rows
  controls = [scaffold.unflatten(row, process.control_template) for row in rows]
  return (process.get_model_weights(state).trainable, [t.numpy() for t in state.client_work],
          controls, output.metrics)


def assert_close(actual, expected, atol=1e-5):
  assert len(tf.nest.flatten(actual)) == len(tf.nest.flatten(expected))
  for a, b in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a, b, atol=atol)


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_both_engines_match_the_reference_update(weighted, client_datasets, initial_weights):
  expected = reference_scaffold(initial_weights.trainable, client_datasets, weighted=weighted)
  tff_process = fedtff.build_learning_process(
      keras_model, client_datasets[0], algorithm='scaffold', population_size=POPULATION,
      weighted=weighted, **optimizers_kwargs())
  compiled_process = compiled.build_compiled_process(
      keras_model, client_datasets[0], algorithm='scaffold', population_size=POPULATION,
      weighted=weighted, **optimizers_kwargs())
  tff_result = run_tff(tff_process, initial_weights, client_datasets)
  compiled_result = run_compiled(compiled_process, initial_weights, client_datasets)
  for result in (tff_result, compiled_result):
    assert_close(result[:3], expected)
  assert_close(tff_result[3], compiled_result[3])  # The metrics: both engines alike.
  # The correction matters: plain FedAvg (c = c_i = 0) ends elsewhere.
  assert np.max(np.abs(np.asarray(expected[1][0]))) > 1e-3


def test_refusals(client_datasets):
  with pytest.raises(ValueError, match='population_size'):
    fedtff.build_learning_process(keras_model, client_datasets[0], algorithm='scaffold')
  with pytest.raises(ValueError, match='plain SGD client optimizer'):
    fedtff.build_learning_process(
        keras_model, client_datasets[0], algorithm='scaffold', population_size=4,
        client_optimizer=fedtff.build_optimizer('sgd', 0.1, momentum=0.9))
  with pytest.raises(ValueError, match='SCAFFOLD takes the mean aggregator only'):
    fedtff.build_learning_process(
        keras_model, client_datasets[0], algorithm='scaffold', population_size=4,
        weighted=False, aggregator=fedtff.AggregatorSpec('dp', clip_norm=1.0,
                                                         noise_multiplier=1.0))
  with pytest.raises(ValueError, match='population_size.*only by scaffold'):
    fedtff.build_learning_process(keras_model, client_datasets[0], population_size=4)
