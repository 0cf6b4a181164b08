"""The compiled engine's aggregators: the same weights and measurements as TFF's factories.

Each case runs 3 rounds of the TFF process and of the compiled process from the
same weights and compares the weights and every aggregator measurement (the
metrics the runner logs) within 1e-5. The robust norms here involve no
randomness, so the comparison is exact up to float rounding.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.compiled import aggregation
from tests import conftest
from tests import test_compiled_engine

ROUNDS = 3
TOLERANCE = 1e-5

CASES = {
    # Adaptive clipping (C from 1.0 towards the median norm), weighted.
    'robust_adaptive_clip': dict(
        client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('robust')),
    # Adaptive clipping towards a low quantile, so that clients are clipped.
    'robust_adaptive_clip_low_quantile_unweighted': dict(
        weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('robust', target_unclipped_quantile=0.1)),
    # Adaptive zeroing (reported 2 C + 1 from C = 10) around a fixed clip.
    'robust_adaptive_zeroing': dict(
        client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('robust', clip_norm=0.3, zeroing=True)),
    # Both adaptive, unweighted, with FedAdam on the server.
    'robust_adaptive_both_unweighted': dict(
        algorithm='fedadam', weighted=False,
        aggregator=fedtff.AggregatorSpec('robust', zeroing=True,
                                         target_unclipped_quantile=0.3)),
    # Secure sum: each coordinate of update * weight clipped to [-1, 1] and
    # quantized to 32 bits; the weights summed securely in [0, 2**20 - 1].
    'secure_weighted': dict(
        client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('secure', clip_norm=1.0)),
    # Unweighted, with a bound that clips coordinates of the updates.
    'secure_unweighted': dict(
        weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('secure', clip_norm=0.05)),
    # Secure sum with the adaptive bound (2 C, C from 50 towards the 0.95
    # quantile of the largest |coordinate|, its records summed securely).
    'secure_adaptive_bound': dict(
        client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('secure')),
    # The masking simulation: the masks cancel; the clipped (L2 0.3), quantized
    # updates are summed mod 2**32 and decoded.
    'masking_simulation': dict(
        weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('masking_simulation', clip_norm=0.3,
                                         clients_per_round=3)),
    # Few bits: levels -170..170 (3 sums fit 2**10), a coarse grid.
    'masking_simulation_10_bits': dict(
        weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('masking_simulation', clip_norm=0.3,
                                         clients_per_round=3, masking_bits=10)),
    # Compression with every tensor below quantization_threshold: TFF sends
    # them unquantized; here behind fixed clipping and adaptive zeroing.
    'compression_below_threshold': dict(
        client_optimizer=fedtff.build_optimizer('sgd', 0.5),
        aggregator=fedtff.AggregatorSpec('compression', clip_norm=0.5, zeroing=True)),
}


@pytest.fixture(scope='module')
def datasets():
  return test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))


def assert_measurements_close(tff_measurements, compiled_measurements):
  assert tf.nest.map_structure(np.shape, compiled_measurements) == tf.nest.map_structure(
      np.shape, tff_measurements)
  for expected, actual in zip(tf.nest.flatten(tff_measurements),
                              tf.nest.flatten(compiled_measurements)):
    assert actual == pytest.approx(expected, abs=TOLERANCE)


def run_and_compare(options, datasets, processes=None):
  """Runs both engines `ROUNDS` rounds; returns the last round's TFF measurements."""
  for tff_weights, tff_metrics, compiled_weights, compiled_metrics in test_compiled_engine.run_both(
      options, datasets, rounds=ROUNDS, processes=processes):
    test_compiled_engine.assert_weights_close(tff_weights, compiled_weights, atol=TOLERANCE)
    assert_measurements_close(tff_metrics['aggregator'], compiled_metrics['aggregator'])
    assert compiled_metrics['client_work']['train']['loss'] == pytest.approx(  # The outlier's
        tff_metrics['client_work']['train']['loss'], abs=TOLERANCE, rel=1e-6)  # loss is ~1e9.
  return tff_metrics['aggregator']


@pytest.fixture(scope='module')
def built(datasets):
  return test_compiled_engine.build_cases(CASES, datasets[0].element_spec)


@pytest.fixture(scope='module')
def compared(datasets, built):
  """`CASES` name -> the last round's TFF measurements of `run_and_compare` on
  `datasets`, run once for this file."""
  return functools.lru_cache(maxsize=None)(
      lambda name: run_and_compare(CASES[name], datasets, built(name)))


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_the_tff_aggregator(name, compared):
  compared(name)


def test_zeroes_by_the_largest_coordinate_as_tff(datasets):
  # TFF's zeroing_factory compares the L-infinity norm (the largest |coordinate|)
  # with zeroing_norm. The updates here have L2 norms of about 0.66 to 1.18 and
  # L-infinity norms of about 0.21 to 0.35: with 0.55 TFF zeroes none, where an
  # L2 comparison would zero them all (and the weights would not move).
  tf.keras.utils.set_random_seed(1)
  measurements = run_and_compare(dict(
      client_optimizer=fedtff.build_optimizer('sgd', 0.5),
      aggregator=fedtff.AggregatorSpec('robust', clip_norm=0.8, zeroing=True,
                                       zeroing_norm=0.55)), datasets)
  assert measurements['zeroed_count'] == 0
  assert measurements['zeroing']['clipped_count'] > 0


@pytest.fixture(scope='module')
def outlier_datasets():
  features, labels = conftest.tiny_classification_arrays(
      num_features=test_compiled_engine.NUM_FEATURES)
  features[50:] *= 300.0  # The third client's update is an outlier.
  return test_compiled_engine.client_datasets(features, labels)


def test_adaptive_zeroing_zeroes_an_outlier_as_tff(outlier_datasets, built):
  name = 'robust_adaptive_both_unweighted'
  measurements = run_and_compare(CASES[name], outlier_datasets, built(name))
  assert measurements['zeroed_count'] == 1


def next_rounds_match(tff_process, tff_state, datasets, compiled_process, compiled_state, batches):
  """Runs one round on each engine from equal states; asserts equal weights and
  aggregator measurements; returns TFF's output and the compiled state."""
  tff_output = tff_process.next(tff_state, datasets)
  compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
  test_compiled_engine.assert_weights_close(tff_process.get_model_weights(tff_output.state),
                                         compiled_process.get_model_weights(compiled_state),
                                         atol=TOLERANCE)
  assert_measurements_close(tff_output.metrics['aggregator'], compiled_metrics['aggregator'])
  return tff_output, compiled_state


def test_adaptive_norms_convert_to_and_from_the_tff_state(outlier_datasets, built):
  tff_process, compiled_process = built('robust_adaptive_both_unweighted')
  batches = compiled.from_datasets(outlier_datasets)
  state = compiled_process.initialize()
  for _ in range(2):
    state = compiled_process.next(state, batches).state
  estimates = {name: float(value) for name, value in state.aggregator.items()}
  assert estimates['clipping_norm'] != 1.0 and estimates['zeroing_norm'] != 10.0
  tff_state = compiled_process.to_tff_state(state, tff_process)
  assert float(tff_state.aggregator['zeroing_norm'][0].current_estimate) == estimates[
      'zeroing_norm']
  assert float(tff_state.aggregator['inner_agg']['clipping_norm'][0].current_estimate) == (
      estimates['clipping_norm'])
  back = compiled_process.from_tff_state(tff_state)
  assert {name: float(value) for name, value in back.aggregator.items()} == estimates
  tff_output, compiled_state = next_rounds_match(tff_process, tff_state, outlier_datasets,
                                             compiled_process, state, batches)
  assert float(compiled_state.aggregator['zeroing_norm']) == pytest.approx(
      float(tff_output.state.aggregator['zeroing_norm'][0].current_estimate), abs=TOLERANCE)


def test_compiled_state_holds_the_estimates_of_adaptive_norms_only():
  spec = fedtff.AggregatorSpec('robust', zeroing=True, zeroing_norm=5.0)
  state = aggregation.from_spec(spec, weighted=True).initial_state()
  assert list(state) == ['clipping_norm'] and float(state['clipping_norm']) == 1.0
  spec = fedtff.AggregatorSpec('robust', clip_norm=2.0, zeroing=True)
  state = aggregation.from_spec(spec, weighted=True).initial_state()
  assert list(state) == ['zeroing_norm'] and float(state['zeroing_norm']) == 10.0
  assert aggregation.from_spec(fedtff.AggregatorSpec('robust', clip_norm=2.0),
                               weighted=True).initial_state() == ()


@pytest.mark.parametrize('name', ['secure_weighted', 'secure_unweighted'])
def test_secure_clips_coordinates_as_tff(name, compared):
  # Both bounds are below the largest coordinates of (update * weight), so
  # clipping and quantization both shape the mean compared above.
  measurements = compared(name)
  value = measurements['mean_value']
  assert value['secure_upper_clipped_count'] + value['secure_lower_clipped_count'] > 0
  bound = CASES[name]['aggregator'].clip_norm
  assert (value['secure_lower_threshold'], value['secure_upper_threshold']) == (
      np.float32(-bound), np.float32(bound))


@pytest.mark.parametrize('weighted', [True, False])
def test_adaptive_secure_bound_converts_to_and_from_the_tff_state(weighted, datasets, built):
  options = dict(CASES['secure_adaptive_bound'], weighted=weighted)
  tff_process, compiled_process = (
      built('secure_adaptive_bound') if weighted  # The case's own options.
      else test_compiled_engine.build_both(options, datasets[0].element_spec))
  batches = compiled.from_datasets(datasets)
  state = compiled_process.next(compiled_process.initialize(), batches).state
  estimate = float(state.aggregator['secure_bound'])
  assert estimate != 50.0
  tff_state = compiled_process.to_tff_state(state, tff_process)
  assert float(compiled_process.from_tff_state(tff_state).aggregator['secure_bound']) == estimate
  next_rounds_match(tff_process, tff_state, datasets, compiled_process, state, batches)


def test_masking_refuses_what_tff_refuses(datasets):
  model_fn = test_compiled_engine.keras_model
  # More clients than clients_per_round: TFF's server check fails the round.
  spec = fedtff.AggregatorSpec('masking_simulation', clip_norm=0.3, clients_per_round=2)
  process = compiled.build_compiled_process(model_fn, datasets[0], weighted=False, aggregator=spec)
  with pytest.raises(ValueError, match=(
      r'^The masking_simulation aggregator takes at most clients_per_round=2 clients per '
      r'round, got 3\.$')):
    process.next(process.initialize(), compiled.from_datasets(datasets))
  tff_process = fedtff.build_learning_process(model_fn, datasets[0], weighted=False,
                                              aggregator=spec)
  with pytest.raises(Exception):
    tff_process.next(tff_process.initialize(), datasets)
  # Too few bits for the model's 75 coordinates: the factory's own refusal.
  spec = fedtff.AggregatorSpec('masking_simulation', clip_norm=0.3, clients_per_round=3,
                               masking_bits=8)
  with pytest.raises(ValueError, match=r'^Masking with bits=8 for 3 clients quantizes to 42 '):
    compiled.build_compiled_process(model_fn, datasets[0], weighted=False, aggregator=spec)

