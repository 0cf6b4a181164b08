"""DP-FTRL (tree aggregation) on the compiled engine against TFF's process.

The compiled engine advances TF Privacy's tree on TF Privacy's state
(`fedtff.compiled.tree`), so from the same state its noise is TFF's bit for
bit: the rounds are compared with the noise on, and again with it off.
"""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.algorithms import tff_model
from fedtff.privacy import ftrl
from tests import conftest
from tests import test_compiled_aggregators
from tests import test_compiled_engine

ROUNDS = 5
TOLERANCE = 1e-5
CLIP, CLIENTS_PER_ROUND = 0.05, 3


@pytest.fixture(scope='module')
def datasets():
  return test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))


def build_both(noise_multiplier, datasets):
  aggregator = ftrl.ftrl_aggregator(noise_multiplier, CLIENTS_PER_ROUND, CLIP,
                                    test_compiled_engine.keras_model)
  options = dict(algorithm='fedavg', weighted=False, aggregator=aggregator,
                 client_optimizer=fedtff.build_optimizer('sgd', 0.5))
  model_fn = test_compiled_engine.keras_model
  return (fedtff.build_learning_process(model_fn, datasets[0], **options),
          compiled.build_compiled_process(model_fn, datasets[0], **options))


def initial_weights():
  return tff_model.initial_weights(test_compiled_engine.keras_model, 0)


def tree_state(tff_state):
  return tff_state.aggregator.query_state.numerator_state


def assert_trees_equal(expected, actual):
  """Every leaf of two tree states equal (level buffers, indices, seeds, clip)."""
  expected, actual = tf.nest.flatten(expected), tf.nest.flatten(actual)
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def run_both(noise_multiplier, datasets, rounds=ROUNDS):
  """Both engines from TFF's initial state; yields each round's
  (TFF state, compiled state, compiled process, TFF metrics, compiled metrics)."""
  tff_process, compiled_process = build_both(noise_multiplier, datasets)
  tff_state = tff_process.set_model_weights(tff_process.initialize(), initial_weights())
  state = compiled_process.from_tff_state(tff_state)
  for tff_output, state, metrics in test_compiled_engine.step_both(
      tff_process, compiled_process, tff_state, state, datasets, rounds):
    yield tff_output.state, state, compiled_process, tff_output.metrics, metrics


@pytest.mark.parametrize('noise_multiplier', [1.0, 0.0], ids=['noise', 'no_noise'])
def test_rounds_match_tff_from_the_same_tree_state(noise_multiplier, datasets):
  levels = []
  for tff_state, state, process, tff_metrics, metrics in run_both(noise_multiplier, datasets):
    test_compiled_engine.assert_weights_close(
        tff_state.global_model_weights, process.get_model_weights(state), atol=TOLERANCE)
    assert_trees_equal(tree_state(tff_state), state.aggregator)
    test_compiled_aggregators.assert_measurements_close(tff_metrics['aggregator'],
                                                        metrics['aggregator'])
    assert metrics['client_work']['train']['loss'] == pytest.approx(
        tff_metrics['client_work']['train']['loss'], abs=TOLERANCE)
    levels.append(list(state.aggregator.tree_state.level_buffer_idx.numpy()))
  # Honaker's efficient tree: the stored levels are the binary digits of the round count.
  assert levels == [[1], [0, 1], [2], [0, 2], [1, 2]]


def test_the_noise_moves_the_weights_by_the_tree_residual(datasets):
  """With noise the weights leave the noiseless run's by exactly (server lr 1)
  -(cumsum_t) / clients_per_round after round t: FTRL on the noised prefix sums."""
  noisy = list(run_both(1.0, datasets, rounds=2))
  clean = list(run_both(0.0, datasets, rounds=1))
  _, state, process, _, _ = noisy[0]
  _, clean_state, clean_process, _, _ = clean[0]
  cumsum = state.aggregator.previous_tree_noise
  for w, w0, noise in zip(process.get_model_weights(state).trainable,
                          clean_process.get_model_weights(clean_state).trainable, cumsum):
    np.testing.assert_allclose(w0 - w, noise.numpy() / CLIENTS_PER_ROUND, atol=1e-6)
  # The first node's noise has the configured standard deviation (1.0 * CLIP):
  # over the model's 81 coordinates, within 4 standard errors of the std.
  flat = np.concatenate([n.numpy().ravel() for n in cumsum])
  assert abs(flat.std() - CLIP) < 4 * CLIP / np.sqrt(2 * flat.size)


def test_state_converts_to_tff_and_both_continue_equally(datasets):
  rounds = list(run_both(1.0, datasets, rounds=3))
  tff_state, state, process, _, _ = rounds[-1]
  tff_process, _ = build_both(1.0, datasets)
  converted = process.to_tff_state(state, tff_state)
  assert_trees_equal(tree_state(tff_state), tree_state(converted))
  back = process.from_tff_state(converted)
  assert_trees_equal(state.aggregator, back.aggregator)
  tff_next = tff_process.next(converted, datasets).state
  compiled_next = process.next(back, compiled.from_datasets(datasets)).state
  test_compiled_engine.assert_weights_close(
      tff_next.global_model_weights, process.get_model_weights(compiled_next), atol=TOLERANCE)
  assert_trees_equal(tree_state(tff_next), compiled_next.aggregator)


def test_an_empty_round_adds_the_tree_noise_as_tff(datasets):
  tff_process, compiled_process = build_both(1.0, datasets)
  tff_state = tff_process.initialize()
  state = compiled_process.from_tff_state(tff_state)
  tff_state = tff_process.next(tff_state, []).state
  state = compiled_process.next(state, []).state
  test_compiled_engine.assert_weights_close(
      tff_state.global_model_weights, compiled_process.get_model_weights(state), atol=TOLERANCE)
  assert_trees_equal(tree_state(tff_state), state.aggregator)
  initial = tff_process.get_model_weights(tff_process.initialize())
  state_weights = compiled_process.get_model_weights(state)
  assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(
      initial.trainable, compiled_process.get_model_weights(state).trainable))
