"""Divergence is caught the round it happens, on both engines, and non-finite
hyperparameters never start a run."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import outputs
from fedtff.runner import training
from tests import test_experiment


def diverging_config(engine):
  """Round 1 trains; its server step (learning rate 1e30) leaves finite but huge
  weights, on which every round-2 client's update is NaN. Evaluated only at the end."""
  config = test_experiment.small_config(total_rounds=4, rounds_per_eval=4,
                                        rounds_per_checkpoint=1, engine=engine)
  config.server.learning_rate = 1e30
  return config


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_a_round_whose_clients_are_all_dropped_stops_the_run(engine, tmp_path):
  with pytest.raises(training.TrainingDivergedError) as raised:
    fedtff.run_experiment(diverging_config(engine), str(tmp_path))
  message = str(raised.value)
  assert message == (
      "Training diverged at round 2: every sampled client's update was not finite and was "
      'dropped (train/num_examples is 0 while the clients hold data). The last good checkpoint '
      f"(round 1) is kept in {tmp_path / 'checkpoints'}.")
  assert '\n' not in message
  rows = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  assert [r['round'] for r in rows] == [1.0]
  assert rows[0]['train/num_examples'] > 0 and np.isfinite(rows[0]['train/loss'])
  assert checkpoints.rounds(tmp_path / 'checkpoints') == [1]


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_a_non_finite_learning_rate_is_refused_before_the_run(engine, value, tmp_path):
  config = test_experiment.small_config(total_rounds=1, engine=engine)
  config.client.learning_rate = value
  workdir = tmp_path / 'run'
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match=f'^Config key client.learning_rate must be a finite number, '
                           f'got {value}.$'):
    fedtff.run_experiment(config, str(workdir))
  assert not workdir.exists()


def test_divergence_names_each_cause():
  weights = tff.learning.models.ModelWeights(
      trainable=[np.ones(2, np.float32)], non_trainable=[])
  state = type('State', (), {'global_model_weights': weights})()
  row = {'round': 3, 'train/loss': 0.0, 'train/num_examples': 0, 'train/accuracy': 0.0}
  assert training.divergence(None, state, row, clients_have_data=lambda: False) is None
  assert training.divergence(None, state, row).startswith("every sampled client's update")
  assert training.divergence(None, state, dict(row, **{'train/num_examples': 5}),
                             update_non_finite=True).startswith('the aggregated model update')
  assert training.divergence(None, state, dict(row, **{'eval/accuracy': float('nan')})) == (
      'eval/accuracy is nan')
  nan_weights = weights._replace(trainable=[np.array([1.0, np.inf], np.float32)])
  state.global_model_weights = nan_weights
  assert training.divergence(None, state, dict(row, **{'train/num_examples': 5})) == (
      'the model weights are no longer finite')


def test_has_examples_reads_datasets():
  empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 2), np.float32)).batch(2)
  full = tf.data.Dataset.from_tensor_slices(np.zeros((3, 2), np.float32)).batch(2)
  assert not training.has_examples([empty, empty])
  assert training.has_examples([empty, full])
  assert training.has_examples(['client_0'])
  assert not training.has_examples([])  # An empty Poisson cohort: nothing was dropped.


def test_a_sweep_refuses_a_non_finite_point_before_any_run(tmp_path):
  grid = fedtff.research.sweeps.parse_grid(['client.learning_rate=0.1,nan'])
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match='^Config key client.learning_rate must be a finite number, got nan.$'):
    fedtff.research.sweeps.run_sweep(test_experiment.small_config(total_rounds=1), str(tmp_path / 'sweep'),
                            grid)
  assert not (tmp_path / 'sweep').exists()


def test_a_sweep_grid_takes_optimizer_names():
  ((key, values),) = fedtff.research.sweeps.parse_grid(['server.optimizer=adam,yogi'])
  assert (key, list(values)) == ('server.optimizer', ['adam', 'yogi'])
