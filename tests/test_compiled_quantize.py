"""The compiled engine's `compression` (fedtff.compiled.quantize) against TFF's
`EncodedSumFactory.quantize_above_threshold`.

TFF draws the randomized rounding from its runtime's seeds, which the compiled
engine cannot repeat, so: a value whose every tensor lies on the quantization
grid is summed exactly alike; any other value is rounded down or up on either
engine, so one client's decoded tensors differ by at most one quantization
step `(max t - min t) / (2**bits - 1)` per coordinate, and a sum by at most the
sum of the clients' steps (the tolerance of the sums below). End to end, 3
rounds at 16 bits (the hidden kernel, 48 elements, quantized; threshold 10) are
compared within 1e-4: a few steps of the clients' weighted kernel updates.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.compiled import quantize
from tests import conftest
from tests import test_compiled_aggregators
from tests import test_compiled_engine

ROUNDS = 3
END_TO_END_TOLERANCE = 1e-4
SEED = tf.constant([11, 12], tf.int64)
FLOAT32_SLACK = 1e-6


@pytest.fixture(scope='module')
def datasets():
  return test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))


def tff_sum(values, bits, threshold):
  """TFF's `EncodedSumFactory.quantize_above_threshold` sum of the clients' `values`."""
  value_type = tff.to_type([tff.TensorType(np.float32, v.shape) for v in values[0]])
  process = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
      quantization_bits=bits, threshold=threshold).create(value_type)
  return [np.asarray(t) for t in process.next(process.initialize(), values).result]


def compiled_sum(values, bits, threshold):
  clients = [quantize.encoded_values([tf.constant(t) for t in value], bits=bits,
                                     threshold=threshold,
                                     seed=tf.random.experimental.stateless_fold_in(SEED, i))
             for i, value in enumerate(values)]
  return [np.sum([c[j].numpy() for c in clients], axis=0) for j in range(len(values[0]))]


def step(tensor, bits):
  return (tensor.max() - tensor.min()) / (2**bits - 1)


def test_values_on_the_grid_are_summed_exactly_as_tff():
  # At 1 bit a two-valued tensor is on the grid; a constant tensor encodes to zeros
  # (max = min) and decodes to itself; the 3-element tensor stays unquantized.
  rng = np.random.default_rng(0)
  values = [[np.where(rng.random((8, 6)) < 0.5, -0.25, 1.5).astype(np.float32),
             np.full(40, 0.7, np.float32), rng.normal(size=3).astype(np.float32)]
            for _ in range(3)]
  for expected, actual in zip(tff_sum(values, 1, 10), compiled_sum(values, 1, 10)):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('bits', [2, 8, 16])
def test_sums_differ_from_tffs_by_at_most_one_step_per_client(bits):
  rng = np.random.default_rng(bits)
  values = [[rng.normal(scale=0.1 * (i + 1), size=(8, 6)).astype(np.float32),
             rng.normal(size=5).astype(np.float32)] for i in range(3)]
  expected, actual = tff_sum(values, bits, 10), compiled_sum(values, bits, 10)
  # One step per client, plus float32 rounding of the decoded sums (a few ulps of ~1).
  tolerance = sum(step(v[0], bits) for v in values) + FLOAT32_SLACK
  assert np.abs(actual[0] - expected[0]).max() <= tolerance
  np.testing.assert_allclose(actual[1], expected[1], rtol=0, atol=1e-6)  # Below threshold.
  exact = np.sum([v[0] for v in values], axis=0)  # Quantization moves neither sum far.
  assert np.abs(actual[0] - exact).max() <= tolerance


def test_the_rounding_is_unbiased():
  tensor = tf.constant(np.linspace(-1.0, 2.0, 1000), tf.float32)
  draws = tf.stack([quantize.quantize(tensor, 2, tf.constant([7, i], tf.int64))
                    for i in range(400)])
  error = tf.reduce_mean(draws, axis=0) - tensor
  # Each draw is off by at most one step (1.0); the mean of 400 by ~0.5 / 20 = 0.025.
  assert float(tf.reduce_max(tf.abs(error))) < 0.15
  assert abs(float(tf.reduce_mean(error))) < 0.01


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_matches_the_tff_process_within_a_few_steps(weighted, datasets):
  options = dict(weighted=weighted, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
                 aggregator=fedtff.AggregatorSpec('compression', quantization_bits=16,
                                                  quantization_threshold=10, clip_norm=2.0))
  for tff_weights, tff_metrics, weights, metrics in test_compiled_engine.run_both(
      options, datasets, rounds=ROUNDS):
    test_compiled_engine.assert_weights_close(tff_weights, weights, atol=END_TO_END_TOLERANCE)
    test_compiled_aggregators.assert_measurements_close(tff_metrics['aggregator'],
                                                        metrics['aggregator'])
    assert metrics['client_work']['train']['loss'] == pytest.approx(
        tff_metrics['client_work']['train']['loss'], abs=END_TO_END_TOLERANCE)
