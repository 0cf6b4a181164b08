"""Ditto from a config: both engines, personalized evaluation against NumPy, exact resume,
refusals."""

import os
import shutil
import tempfile

import numpy as np
import pytest

import fedtff
from fedtff.algorithms import ditto
from fedtff.runner import client_states
from fedtff.runner import experiment
from fedtff.runner import outputs
from tests.test_resume import assert_same_rows, comparable_rows, small_config


def ditto_config(total_rounds, **overrides):
  config = small_config(total_rounds, **overrides)
  config.algorithm.name = 'ditto'
  config.algorithm.ditto_lambda = 0.5
  config.model.name = 'logistic_regression'
  config.data.num_test_clients = 0
  config.data.test_fraction = 0.25  # Every training client keeps held-out examples.
  config.per_client_eval = True
  config.server.momentum = 0.0
  return config


def stored_rows(workdir, config, round_num):
  """Every client's row after `round_num`, read back from a copy of the run's store."""
  task = fedtff.tasks.build_task(config)
  state_size = experiment.build_compiled_process(config, task).state_size
  copy = tempfile.mkdtemp()
  shutil.copytree(os.path.join(workdir, experiment.CLIENT_STATES), copy, dirs_exist_ok=True)
  store = client_states.ClientStateStore(copy, task.train_data.client_ids, state_size)
  store.restore(round_num)
  rows = store.get(task.train_data.client_ids)
  shutil.rmtree(copy)
  return task, rows


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  fedtff.run_experiment(ditto_config(6, engine='compiled'), workdir)
  return workdir


def test_engines_give_the_same_rows_and_personal_models(straight_run, tmp_path):
  config = ditto_config(4, engine='tff')
  fedtff.run_experiment(config, str(tmp_path))
  tff_rows, compiled_rows = comparable_rows(tmp_path), comparable_rows(straight_run)[:4]
  assert 'eval/personalized/accuracy' in tff_rows[-1]
  assert 'eval/personalized/accuracy/p10' in tff_rows[-1]
  assert_same_rows(tff_rows, compiled_rows)
  np.testing.assert_allclose(stored_rows(str(tmp_path), config, 4)[1],
                             stored_rows(straight_run, config, 4)[1], atol=1e-5)


def numpy_accuracy(trainable, features, labels):
  kernel, bias = trainable
  return np.argmax(features.reshape(len(features), -1) @ kernel + bias, axis=1) == labels


def test_personalized_metrics_equal_numpy_from_the_stored_models(straight_run):
  config = ditto_config(6)
  task, rows = stored_rows(straight_run, config, 6)
  last = outputs.read_metrics_csv(os.path.join(straight_run, 'metrics.csv'))[-1]
  assert int(last['round']) == 6
  seen = rows[:, -1] > 0
  assert 0 < seen.sum() < len(rows)  # Some clients trained, some never did.
  correct, per_client = [], []
  ids = task.train_data.client_ids
  # Never-selected clients (seen flag 0) are evaluated with the global model.
  models = ditto.personal_models(rows, global_trainable(straight_run, config))
  for client_id, model in zip(ids, models):
    batches = list(task.test_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())
    features = np.concatenate([b['x'] if isinstance(b, dict) else b[0] for b in batches])
    labels = np.concatenate([b['y'] if isinstance(b, dict) else b[1] for b in batches])
    model = [np.asarray(w, np.float64) for w in model]
    hits = numpy_accuracy(model, features.astype(np.float64), labels.ravel())
    correct.append(hits)
    per_client.append(hits.mean())
  assert last['eval/personalized/accuracy'] == pytest.approx(np.concatenate(correct).mean(),
                                                              abs=1e-5)
  assert last['eval/personalized/accuracy/mean'] == pytest.approx(np.mean(per_client), abs=1e-5)
  assert last['eval/personalized/accuracy/worst'] == pytest.approx(np.min(per_client), abs=1e-5)


def global_trainable(workdir, config):
  """The global model after the run's last round, from its final checkpoint."""
  task = fedtff.tasks.build_task(config)
  process = experiment.build_compiled_process(config, task)
  restored = fedtff.runner.checkpoints.restore_latest(
      os.path.join(workdir, 'checkpoints'), experiment._CompiledStateLayout(process).initialize())  # pylint: disable=protected-access
  return [np.asarray(w, np.float64) for w in restored.state.global_model_weights.trainable]


def test_resume_matches_a_straight_run(straight_run, tmp_path):
  config = ditto_config(2, engine='compiled')
  fedtff.run_experiment(config, str(tmp_path))
  config.total_rounds = 6
  fedtff.run_experiment(config, str(tmp_path))
  assert_same_rows(comparable_rows(tmp_path), comparable_rows(straight_run))
  np.testing.assert_allclose(stored_rows(str(tmp_path), config, 6)[1],
                             stored_rows(straight_run, config, 6)[1], atol=1e-6)


@pytest.mark.parametrize('changes, message', [
    (dict(aggregator=dict(kind='robust', clip_norm=1.0)), "takes aggregator.kind='mean' only"),
    (dict(client=dict(momentum=0.9)), "needs client.optimizer='sgd' with client.momentum=0"),
    (dict(runtime=dict(workers=('localhost:1',))), 'runtime.workers and runtime.sites are not supported'),
    (dict(attack=dict(kind='sign_flipping', fraction=0.5)), "takes no attack.kind"),
    (dict(algorithm=dict(ditto_lambda=None)), 'algorithm.ditto_lambda must be set'),
], ids=['robust', 'momentum', 'workers', 'attack', 'no-lambda'])
def test_refusals(changes, message):
  config = ditto_config(2)
  for group, fields in changes.items():
    config[group].update(fields)
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(config)


def test_lambda_refused_by_other_algorithms():
  config = small_config(2)
  config.algorithm.ditto_lambda = 0.5
  with pytest.raises(fedtff.runner.config.ConfigError, match='used only by ditto'):
    fedtff.runner.config.validate(config)
