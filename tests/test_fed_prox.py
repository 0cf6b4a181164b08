"""FedProx against a NumPy reference of the paper's update, and TFF 0.87's sign bug."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import compiled
from fedtff.algorithms import tff_model
from tests import conftest

NUM_FEATURES, NUM_CLASSES, LEARNING_RATE, MU = 8, 3, 0.1, 0.5


def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(90), 3))
  # Three epochs of batches of 8: 12 local steps, enough for the proximal term to matter.
  return [client_data.create_tf_dataset_for_client(i).batch(8).repeat(3)
          for i in client_data.client_ids]


def reference_fed_prox(weights, client_datasets, *, mu, rounds, weighted=True):
  """FedProx (Li et al. 2020, Algorithm 2) for softmax regression, in float64 NumPy.

  Each client takes SGD steps on its batch-mean cross-entropy plus
  (mu/2)·‖w − w_t‖²; the server takes the (example-weighted) mean of the
  client models.
  """
  params = [np.asarray(w, np.float64) for w in weights]
  batches = [[(b['x'].astype(np.float64), b['y']) for b in ds.as_numpy_iterator()]
             for ds in client_datasets]
  for _ in range(rounds):
    client_params, sizes = [], []
    for client_batches in batches:
      kernel, bias = (p.copy() for p in params)
      for x, y in client_batches:
        logits = x @ kernel + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(y)), y] -= 1.0
        probs /= len(y)
        kernel -= LEARNING_RATE * (x.T @ probs + mu * (kernel - params[0]))
        bias -= LEARNING_RATE * (probs.sum(axis=0) + mu * (bias - params[1]))
      client_params.append((kernel, bias))
      sizes.append(sum(len(y) for _, y in client_batches) if weighted else 1)
    shares = np.array(sizes, np.float64) / sum(sizes)
    params = [sum(s * p[i] for s, p in zip(shares, client_params)) for i in range(2)]
  return params


def train(process, initial_weights, client_datasets, rounds):
  state = process.set_model_weights(process.initialize(), initial_weights)
  for _ in range(rounds):
    state = process.next(state, client_datasets).state
  return process.get_model_weights(state).trainable


@pytest.fixture(scope='module')
def initial_weights():
  return tff_model.initial_weights(keras_model, seed=1)


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_matches_the_reference_update(weighted, client_datasets, initial_weights):
  process = fedtff.build_learning_process(
      keras_model, client_datasets[0], algorithm='fedprox', proximal_strength=MU,
      weighted=weighted, client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE))
  ours = train(process, initial_weights, client_datasets, rounds=2)
  expected = reference_fed_prox(initial_weights.trainable, client_datasets, mu=MU, rounds=2,
                                weighted=weighted)
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)
  without_prox = reference_fed_prox(initial_weights.trainable, client_datasets, mu=0.0,
                                    rounds=2, weighted=weighted)
  assert np.abs(ours[0] - without_prox[0]).max() > 1e-3  # the term is not negligible here


def test_has_tff_fed_proxs_type_signature(client_datasets):
  spec = client_datasets[0].element_spec
  ours = fedtff.build_learning_process(keras_model, spec, algorithm='fedprox',
                                       proximal_strength=MU)
  raw = tff.learning.algorithms.build_weighted_fed_prox(
      tff_model.tff_model_fn(keras_model, spec), MU,
      tff.learning.optimizers.build_sgdm(0.1), tff.learning.optimizers.build_sgdm(1.0))
  assert ours.next.type_signature == raw.next.type_signature
  assert ours.initialize.type_signature == raw.initialize.type_signature


def test_tff_0_87_fed_prox_pushes_clients_away_from_the_server_model(
    client_datasets, initial_weights):
  """TFF's proximal term is mu·(w_t − w): its FedProx is the reference with −mu.

  If this fails after a TFF upgrade, TFF fixed the sign; docs/algorithms.md
  and fedtff.algorithms.fed_prox should then say so.
  """
  spec = client_datasets[0].element_spec
  raw = tff.learning.algorithms.build_weighted_fed_prox(
      tff_model.tff_model_fn(keras_model, spec), MU,
      tff.learning.optimizers.build_sgdm(LEARNING_RATE), tff.learning.optimizers.build_sgdm(1.0))
  theirs = train(raw, initial_weights, client_datasets, rounds=2)
  for a, b in zip(theirs, reference_fed_prox(initial_weights.trainable, client_datasets,
                                             mu=-MU, rounds=2)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_client_with_a_non_finite_update_is_weighted_zero(client_datasets, initial_weights):
  poisoned = client_datasets[0].map(lambda b: dict(b, x=b['x'] * np.float32(np.inf)))
  process = fedtff.build_learning_process(
      keras_model, client_datasets[0], algorithm='fedprox', proximal_strength=MU,
      client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE))
  ours = train(process, initial_weights, [poisoned] + client_datasets[1:], rounds=1)
  expected = reference_fed_prox(initial_weights.trainable, client_datasets[1:], mu=MU, rounds=1)
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('mu', [-0.5, float('nan')], ids=['negative', 'nan'])
def test_every_builder_refuses_a_negative_or_nan_mu_in_one_sentence(mu, client_datasets):
  """`fedtff.algorithms.fed_prox.check_proximal_strength`, called by both engines' builders."""
  spec = client_datasets[0].element_spec
  builders = (
      lambda: fedtff.algorithms.fed_prox.build_fed_prox(keras_model, spec, proximal_strength=mu),
      lambda: fedtff.build_learning_process(keras_model, spec, algorithm='fedprox',
                                            proximal_strength=mu),
      lambda: compiled.build_compiled_process(keras_model, spec, algorithm='fedprox',
                                              proximal_strength=mu))
  for build in builders:
    with pytest.raises(ValueError) as raised:
      build()
    assert str(raised.value) == f'proximal_strength (mu) must be non-negative, got {mu}.'
