"""FedNova (Wang et al., NeurIPS 2020) against a float64 NumPy reference of its update,
on clients of unequal local steps, on both engines; and its refusals."""

import numpy as np
import pytest

import fedtff
from fedtff import compiled
from fedtff.algorithms import tff_model
from tests import conftest
from tests import test_compiled_engine
from tests import test_fed_prox

NUM_FEATURES, NUM_CLASSES, LEARNING_RATE = 8, 3, 0.1


def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def client_datasets():
  """Clients of 10, 30 and 50 examples in batches of 8, for 1, 2 and 3 epochs:
  tau = 2, 8 and 19 local steps."""
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(
      features, labels, [np.arange(0, 10), np.arange(10, 40), np.arange(40, 90)])
  return [client_data.create_tf_dataset_for_client(c).repeat(epochs).batch(8)
          for c, epochs in zip(client_data.client_ids, (1, 2, 3))]


def reference_fed_nova(weights, client_datasets, *, rounds, weighted=True):
  """FedNova with plain local SGD (Wang et al. 2020, eq. 7; a_i = 1, ‖a_i‖₁ = τ_i),
  softmax regression, float64: x ← x − τ_eff Σ p_i (x − x_i)/τ_i, τ_eff = Σ p_i τ_i."""
  params = [np.asarray(w, np.float64) for w in weights]
  batches = [[(b['x'].astype(np.float64), b['y']) for b in ds.as_numpy_iterator()]
             for ds in client_datasets]
  for _ in range(rounds):
    normalized, steps, sizes = [], [], []
    for client_batches in batches:
      kernel, bias = (p.copy() for p in params)
      for x, y in client_batches:
        logits = x @ kernel + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(y)), y] -= 1.0
        probs /= len(y)
        kernel -= LEARNING_RATE * (x.T @ probs)
        bias -= LEARNING_RATE * probs.sum(axis=0)
      tau = len(client_batches)
      normalized.append([(params[0] - kernel) / tau, (params[1] - bias) / tau])
      steps.append(tau)
      sizes.append(sum(len(y) for _, y in client_batches) if weighted else 1)
    shares = np.array(sizes, np.float64) / sum(sizes)
    tau_eff = float(shares @ np.array(steps, np.float64))
    params = [params[i] - tau_eff * sum(s * d[i] for s, d in zip(shares, normalized))
              for i in range(2)]
  return params, steps


@pytest.fixture(scope='module')
def initial_weights():
  return tff_model.initial_weights(keras_model, seed=1)


def _options(weighted):
  return dict(algorithm='fednova', weighted=weighted,
              client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE))


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_both_engines_match_the_reference_update(weighted, client_datasets, initial_weights):
  expected, steps = reference_fed_nova(initial_weights.trainable, client_datasets, rounds=2,
                                       weighted=weighted)
  assert steps == [2, 8, 19]
  process = fedtff.build_learning_process(keras_model, client_datasets[0], **_options(weighted))
  ours = test_fed_prox.train(process, initial_weights, client_datasets, rounds=2)
  fast = compiled.build_compiled_process(keras_model, client_datasets[0], **_options(weighted))
  state = fast.set_model_weights(fast.initialize(), initial_weights)
  batches = compiled.from_datasets(client_datasets)
  for _ in range(2):
    state, _ = fast.next(state, batches)
  for a, b, c in zip(ours, fast.get_model_weights(state).trainable, expected):
    np.testing.assert_allclose(a, c, atol=1e-5)
    np.testing.assert_allclose(b, c, atol=1e-5)
  fed_avg = test_fed_prox.reference_fed_prox(initial_weights.trainable, client_datasets,
                                             mu=0.0, rounds=2, weighted=weighted)
  assert np.abs(expected[0] - fed_avg[0]).max() > 1e-3  # Normalizing matters here.


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_compiled_metrics_and_weights_equal_tffs(weighted):
  """test_compiled_engine's MLP and clients (2, 5 and 5 steps), 5 rounds."""
  datasets = test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))
  for tff_weights, tff_metrics, weights, metrics in test_compiled_engine.run_both(
      dict(algorithm='fednova', weighted=weighted), datasets):
    assert metrics['client_work']['train'] == pytest.approx(
        dict(tff_metrics['client_work']['train']), abs=1e-5)
    assert metrics['finalizer'] == pytest.approx(dict(tff_metrics['finalizer']))
  test_compiled_engine.assert_weights_close(tff_weights, weights)


@pytest.mark.parametrize('options, message', [
    (dict(client_optimizer=fedtff.build_optimizer('sgd', 0.1, momentum=0.9)),
     r'fednova normalizes plain local SGD \(a_i = tau_i\); client momentum'),
    (dict(aggregator=fedtff.AggregatorSpec('robust', clip_norm=1.0)),
     r"fednova averages its normalized updates with the mean only, got 'robust'"),
    (dict(proximal_strength=0.1), r'proximal_strength \(mu\) is required by fedprox'),
], ids=['momentum', 'robust', 'mu'])
def test_refusals(options, message, client_datasets):
  for build in (fedtff.build_learning_process, compiled.build_compiled_process):
    with pytest.raises(ValueError, match=message):
      build(keras_model, client_datasets[0], algorithm='fednova', **options)
