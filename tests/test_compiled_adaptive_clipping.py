"""The compiled engine's DP adaptive clipping against TFF's, and its noise."""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import checkpoints
from fedtff import compiled
from fedtff.compiled import aggregation as aggregation_lib
from fedtff.privacy import mechanisms
from tests import test_compiled_engine as base

ADAPTIVE_NO_NOISE = dict(
    algorithm='fedavg', weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.3),
    aggregator=fedtff.AggregatorSpec('dp', noise_multiplier=0.0, clients_per_round=3))


@pytest.fixture(scope='module')
def datasets():
  return base.client_datasets(*base.conftest.tiny_classification_arrays(
      num_features=base.NUM_FEATURES))


@pytest.fixture(scope='module')
def processes(datasets):
  """The TFF and the compiled process with `ADAPTIVE_NO_NOISE`, built once for this file."""
  return base.build_both(ADAPTIVE_NO_NOISE, datasets[0].element_spec)


def test_without_noise_the_weights_and_clip_norms_match_tff(datasets, processes):
  tff_clips, compiled_clips = [], []
  for tff_weights, tff_metrics, compiled_weights, compiled_metrics in base.run_both(
      ADAPTIVE_NO_NOISE, datasets, rounds=4, processes=processes):
    base.assert_weights_close(tff_weights, compiled_weights)
    assert tf.nest.map_structure(np.shape, compiled_metrics['aggregator']) == tf.nest.map_structure(
        np.shape, tff_metrics['aggregator'])
    tff_clips.append(tff_metrics['aggregator']['dp_query_metrics']['clip'])
    compiled_clips.append(compiled_metrics['aggregator']['dp_query_metrics']['clip'])
  np.testing.assert_allclose(compiled_clips, tff_clips, rtol=1e-5)
  assert len(set(np.round(tff_clips, 6))) > 1  # The clip norm moved.


def test_the_clip_norm_converts_to_and_from_tff_state_and_checkpoints(datasets, processes,
                                                                     tmp_path):
  tff_process, compiled_process = processes
  batches = compiled.from_datasets(datasets)
  compiled_state = compiled_process.initialize()
  for _ in range(2):
    compiled_state, _ = compiled_process.next(compiled_state, batches)
  assert float(compiled_state.aggregator) != pytest.approx(mechanisms.DEFAULT_INITIAL_CLIP)
  tff_state = compiled_process.to_tff_state(compiled_state, tff_process)
  tff_output = tff_process.next(tff_state, datasets)
  compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
  assert compiled_metrics['aggregator']['dp_query_metrics']['clip'] == pytest.approx(
      tff_output.metrics['aggregator']['dp_query_metrics']['clip'], rel=1e-5)
  base.assert_weights_close(tff_process.get_model_weights(tff_output.state),
                            compiled_process.get_model_weights(compiled_state))
  checkpoints.save(str(tmp_path), 3, compiled_process.to_tff_state(compiled_state, tff_process),
                   elapsed_s=0.0)
  restored = checkpoints.restore_latest(str(tmp_path), tff_process.initialize()).state
  assert float(compiled_process.from_tff_state(restored).aggregator) == float(compiled_state.aggregator)


def test_the_value_and_count_noise_have_the_split_stddevs():
  z, m, count_stddev, clip = 1.0, 1000, 0.6, 0.5
  aggregation = aggregation_lib.from_spec(fedtff.AggregatorSpec(
      'dp', noise_multiplier=z, clients_per_round=m, clipped_count_stddev=count_stddev),
      weighted=False)
  value_multiplier = (z**-2 - (2 * count_stddev)**-2)**-0.5  # 1.809, by hand.
  acc = aggregation_lib.initial([tf.zeros([200_000])])
  clip_state = tf.constant(clip)
  noises = []
  for draw in range(2000):  # Each round has its own noise seed.
    _, new_clip = aggregation_lib.result(aggregation, acc, tf.constant([1, draw], tf.int64),
                                         clip_state)
    # new = C * exp(-lr * (n / m + 1/2 - 1/2)) with the bit sum 0 and target 1/2.
    noises.append(-np.log(float(new_clip) / clip) / mechanisms.DEFAULT_CLIP_LEARNING_RATE * m)
  mean, _ = aggregation_lib.result(aggregation, acc, tf.constant([1, -1], tf.int64), clip_state)
  value_noise = mean[0].numpy() * m / clip
  assert np.std(value_noise) == pytest.approx(value_multiplier, rel=0.01)
  assert abs(np.mean(value_noise)) < 0.02
  assert np.std(noises) == pytest.approx(count_stddev, rel=0.05)
  assert abs(np.mean(noises)) < 0.05


def test_quickstart_eps8_with_adaptive_clipping_runs_on_the_compiled_engine(tmp_path):
  from tests import test_privacy_adaptive_clipping as tff_side  # pylint: disable=g-import-not-at-top
  config = tff_side.quickstart_dp('eps8')
  config.aggregator.clip_norm = None
  config.engine = 'compiled'
  config.data.num_clients, config.data.num_test_clients = 12, 2
  config.privacy.target_epsilon = None
  config.aggregator.noise_multiplier = 4.7861328125  # The config's z at N = 50 (see the TFF test).
  config.total_rounds = 2
  fedtff.run_experiment(config, str(tmp_path))
  rows = fedtff.runner.outputs.read_metrics_csv(str(tmp_path / 'metrics.csv'))
  assert [r['round'] for r in rows] == [1, 2]
  assert np.isfinite(rows[-1]['eval/loss'])
