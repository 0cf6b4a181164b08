"""SCAFFOLD from a config: both engines, both stores, exact resume (also after SIGKILL),
refusals."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import client_states
from fedtff.runner import experiment
from tests import conftest
from tests.test_resume import assert_same_rows, comparable_rows, small_config


def scaffold_config(total_rounds, **overrides):
  config = small_config(total_rounds, **overrides)
  config.algorithm.name = 'scaffold'
  return config


def stored_rows(workdir, config, round_num):
  """Every client's control variate after `round_num`, read back from a copy of the
  run's store (a restore removes the journals after its round)."""
  task = fedtff.tasks.build_task(config)
  state_size = experiment.build_compiled_process(config, task).state_size
  copy = tempfile.mkdtemp()
  shutil.copytree(os.path.join(workdir, experiment.CLIENT_STATES), copy, dirs_exist_ok=True)
  on_disk = os.path.exists(os.path.join(copy, client_states.ROWS_FILE))
  store = client_states.ClientStateStore(copy, task.train_data.client_ids, state_size,
                                         on_disk=on_disk)
  store.restore(round_num)
  rows = store.get(task.train_data.client_ids)
  shutil.rmtree(copy)
  return rows


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  fedtff.run_experiment(scaffold_config(8, engine='compiled'), workdir)
  return workdir


def test_engines_and_stores_give_the_same_rows(straight_run, tmp_path):
  disk = str(tmp_path / 'disk')
  config = scaffold_config(8, engine='compiled')
  config.algorithm.client_states = 'disk'
  fedtff.run_experiment(config, disk)
  assert comparable_rows(disk) == comparable_rows(straight_run)  # Memory and disk: identical.
  np.testing.assert_array_equal(stored_rows(disk, config, 8), stored_rows(straight_run, config, 8))
  tff_run = str(tmp_path / 'tff')
  fedtff.run_experiment(scaffold_config(4, engine='tff'), tff_run)
  assert_same_rows(comparable_rows(tff_run), comparable_rows(straight_run)[:4])
  np.testing.assert_allclose(stored_rows(tff_run, config, 4),
                             stored_rows(straight_run, config, 4), atol=1e-5)


def test_resume_matches_a_straight_run(straight_run, tmp_path):
  config = scaffold_config(4, engine='compiled')
  config.algorithm.client_states = 'disk'
  fedtff.run_experiment(config, str(tmp_path))
  config.total_rounds = 8
  fedtff.run_experiment(config, str(tmp_path))
  assert_same_rows(comparable_rows(tmp_path), comparable_rows(straight_run))
  rows = stored_rows(str(tmp_path), config, 8)
  np.testing.assert_allclose(rows, stored_rows(straight_run, config, 8), atol=1e-6)
  assert np.count_nonzero(np.abs(rows).sum(axis=1)) > 4  # Clients trained, some twice.


def test_sigkill_mid_run_then_resume_matches_a_straight_run(straight_run, tmp_path):
  args = [sys.executable, 'experiments/train.py', '--config=configs/quickstart.py',
          f'--workdir={tmp_path}', '--config.data.num_clients=12',
          '--config.data.num_test_clients=3', '--config.clients_per_round=4',
          '--config.rounds_per_eval=2', '--config.rounds_per_checkpoint=2',
          '--config.server.momentum=0.0', '--config.data.client_epochs=1',
          '--config.algorithm.name=scaffold', '--config.engine=compiled']
  proc = subprocess.Popen(args + ['--config.total_rounds=400'], cwd=conftest.REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=conftest.script_env())
  for line in proc.stdout:
    if line.split('/')[0].split()[-1] == '5':
      break
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert checkpoints.rounds(tmp_path / 'checkpoints')
  resumed = conftest.run_script(args[1:] + ['--config.total_rounds=8', '--quiet'])
  assert resumed.returncode == 0, resumed.stderr
  assert_same_rows(comparable_rows(tmp_path), comparable_rows(straight_run))


@pytest.mark.parametrize('changes, message', [
    (dict(aggregator=dict(kind='robust', clip_norm=1.0)), "takes aggregator.kind='mean' only"),
    (dict(client=dict(momentum=0.9)), "needs client.optimizer='sgd' with client.momentum=0"),
    (dict(client=dict(optimizer='adam')), "needs client.optimizer='sgd'"),
    (dict(runtime=dict(workers=('localhost:1',))), 'runtime.workers and runtime.sites are not supported'),
    (dict(attack=dict(kind='sign_flipping', fraction=0.5)), "takes no attack.kind \\(got 'sign_flipping'\\)"),
], ids=['robust', 'momentum', 'adam', 'workers', 'attack'])
def test_refusals(changes, message):
  config = scaffold_config(2)
  for group, fields in changes.items():
    config[group].update(fields)
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(config)
