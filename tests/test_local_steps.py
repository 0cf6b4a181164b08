"""The functions both engines share, each against a NumPy float64 reference."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.algorithms import aggregators
from fedtff.algorithms import local_steps
from fedtff.algorithms import tff_model
from fedtff.compiled import aggregation
from fedtff.privacy import mechanisms

SHAPES = ((3, 2), (2,))


def arrays(seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def as_float64(values):
  return [np.asarray(v, np.float64) for v in values]


def test_proximal_gradients_add_mu_times_the_distance_to_the_server_model():
  gradients, weights, anchor, mu = arrays(0), arrays(1), arrays(2), 0.3
  got = local_steps.proximal_gradients(
      [tf.constant(g) for g in gradients], [tf.Variable(w) for w in weights],
      [tf.constant(a) for a in anchor], mu)
  for g, w, a, out in zip(*map(as_float64, (gradients, weights, anchor)), got):
    np.testing.assert_allclose(out.numpy(), g + mu * (w - a), atol=1e-6)


@pytest.mark.parametrize('momentum', [0.0, 0.9], ids=['sgd', 'sgd_momentum'])
def test_local_step_applies_the_optimizer_to_the_variables(momentum):
  weights, gradients, learning_rate = arrays(3), [arrays(4), arrays(5)], 0.1
  variables = [tf.Variable(w) for w in weights]
  optimizer = fedtff.build_optimizer('sgd', learning_rate, momentum=momentum)
  state = optimizer.initialize(tuple(tf.TensorSpec(w.shape, tf.float32) for w in weights))
  for step_gradients in gradients:
    state = local_steps.local_step(optimizer, state, variables,
                                   [tf.constant(g) for g in step_gradients])
  expected, velocity = as_float64(weights), [np.zeros(s) for s in SHAPES]
  for step_gradients in gradients:  # SGD with heavy-ball momentum, as TFF's sgdm.
    velocity = [momentum * v + g for v, g in zip(velocity, as_float64(step_gradients))]
    expected = [w - learning_rate * v for w, v in zip(expected, velocity)]
  for variable, want in zip(variables, expected):
    np.testing.assert_allclose(variable.numpy(), want, atol=1e-6)


def test_model_delta_is_initial_minus_trained():
  initial, trained = arrays(6), arrays(7)
  got = local_steps.model_delta([tf.constant(w) for w in initial],
                                [tf.Variable(w) for w in trained])
  for out, a, b in zip(got, as_float64(initial), as_float64(trained)):
    np.testing.assert_allclose(out.numpy(), a - b, atol=1e-6)


@pytest.mark.parametrize('weighted, expected', [(True, 37.0), (False, 1.0)],
                         ids=['num_examples', 'uniform'])
def test_client_weight(weighted, expected):
  weight = local_steps.client_weight(tf.constant(37, tf.int64), weighted=weighted)
  assert weight.dtype == tf.float32 and float(weight) == expected


@pytest.mark.parametrize('bad', [np.inf, -np.inf, np.nan], ids=['inf', '-inf', 'nan'])
def test_zero_non_finite_zeroes_the_delta_and_its_weight(bad):
  delta = arrays(8)
  delta[1][0] = bad
  zeroed, weight, non_finite = local_steps.zero_non_finite(
      [tf.constant(d) for d in delta], tf.constant(37.0))
  assert bool(non_finite) and float(weight) == 0.0
  for out, shape in zip(zeroed, SHAPES):
    np.testing.assert_array_equal(out.numpy(), np.zeros(shape))


def test_zero_non_finite_keeps_a_finite_delta():
  delta = arrays(9)
  kept, weight, non_finite = local_steps.zero_non_finite(
      [tf.constant(d) for d in delta], tf.constant(37.0))
  assert not bool(non_finite) and float(weight) == 37.0
  for out, d in zip(kept, delta):
    np.testing.assert_array_equal(out.numpy(), d)


UNFINALIZED = [[np.float32(7.0), np.float32(9.0)],  # accuracy: total, count
               [np.float32(4.5), np.float32(9.0)],  # loss: total, count
               [np.int64(9)], [np.int64(2)]]        # num_examples, num_batches
EXPECTED = {'accuracy': 7.0 / 9.0, 'loss': 0.5, 'num_examples': 9, 'num_batches': 2}


def test_finalize_metrics_gives_each_result_on_the_unfinalized_values():
  metrics = tff_model.default_metrics() + tff_model.training_counters()
  got = tff_model.finalize_metrics(metrics, [[tf.constant(v) for v in vs] for vs in UNFINALIZED])
  assert list(got) == list(EXPECTED)
  for name, want in EXPECTED.items():
    assert float(got[name]) == pytest.approx(want, abs=1e-7)


def test_the_tff_models_finalizers_are_finalize_metrics():
  model_fn = tff_model.tff_model_fn(lambda: fedtff.models.logistic_regression((4,), 3),
                                    (tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)))
  with tf.Graph().as_default():  # Where TFF calls them: in a graph, as its own finalizers.
    finalizers = model_fn().metric_finalizers()
    results = {name: finalizers[name]([tf.constant(v) for v in values])
               for name, values in zip(finalizers, UNFINALIZED)}
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      got = session.run(results)
  assert list(finalizers) == list(EXPECTED)
  for name, want in EXPECTED.items():
    assert float(got[name]) == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize('norm', [aggregators.ADAPTIVE_ZEROING, aggregators.adaptive_clipping(0.5),
                                  mechanisms.SECURE_BOUND], ids=['zeroing', 'clipping', 'secure'])
def test_adaptive_norms_are_one_definition_for_both_engines(norm):
  """TFF's process built from the definition reports what the compiled engine uses,
  and the compiled update is the geometric rule in float64."""
  process = norm.process()
  state = process.initialize()
  quantile = aggregation.Quantile.of(norm)
  assert float(process.report(state)) == pytest.approx(
      float(quantile.report(tf.constant(norm.initial))), abs=1e-6)
  below_sum, count = 0.5, 4.0  # Three of four clients at or below C: fraction 0.625.
  expected = norm.initial * np.exp(-norm.learning_rate * (below_sum / count + 0.5 - norm.target))
  got = quantile.next(tf.constant(norm.initial), tf.constant(below_sum), tf.constant(count))
  assert float(got) == pytest.approx(expected, rel=1e-6)
