"""Checkpoints, exact resume, extension, config changes and divergence."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import outputs
from fedtff.runner import training
from tests import conftest


def small_config(total_rounds, **overrides):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 12
  config.data.num_test_clients = 3
  config.clients_per_round = 4
  config.total_rounds = total_rounds
  config.rounds_per_eval = 2
  config.rounds_per_checkpoint = 2
  config.update(overrides)
  return config


def comparable_rows(workdir):
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  return [{k: v for k, v in r.items() if k not in ('round_time_s', 'examples_per_s')} for r in rows]


def assert_same_rows(a, b):
  assert [r['round'] for r in a] == [r['round'] for r in b]
  for row_a, row_b in zip(a, b):
    assert row_a == pytest.approx(row_b, abs=1e-5)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  fedtff.run_experiment(small_config(8), workdir)
  return workdir


def test_resume_to_more_rounds_matches_a_straight_run(straight_run, tmp_path):
  fedtff.run_experiment(small_config(4), str(tmp_path))
  assert checkpoints.rounds(tmp_path / 'checkpoints') == [2, 4]
  summary = fedtff.run_experiment(small_config(8), str(tmp_path))
  assert_same_rows(comparable_rows(tmp_path), comparable_rows(straight_run))
  assert summary['rounds_completed'] == 8
  with open(os.path.join(straight_run, 'summary.json')) as f:
    straight = json.load(f)
  assert summary['best'] == straight['best']
  lines = open(tmp_path / 'metrics.jsonl').read().splitlines()
  assert [json.loads(l)['round'] for l in lines] == list(range(1, 9))


def test_rerunning_a_finished_run_changes_nothing(straight_run):
  before = comparable_rows(straight_run)
  summary = fedtff.run_experiment(small_config(8), straight_run)
  assert comparable_rows(straight_run) == before
  assert summary['rounds_completed'] == 8


def test_summary_records_best_metrics_and_rounds(straight_run):
  with open(os.path.join(straight_run, 'summary.json')) as f:
    summary = json.load(f)
  rows = comparable_rows(straight_run)
  accuracies = [(r['eval/accuracy'], r['round']) for r in rows if r['eval/accuracy'] is not None]
  assert summary['best']['eval/accuracy'] == {'value': max(accuracies)[0],
                                              'round': int(max(accuracies)[1])}
  assert summary['final']['round'] == 8 and summary['total_time_s'] > 0


def test_tensorboard_events_are_written(straight_run):
  events = os.listdir(os.path.join(straight_run, 'tensorboard'))
  assert any(name.startswith('events.out.tfevents') for name in events)


def test_changed_config_is_refused_with_the_difference(straight_run):
  changed = small_config(8)
  changed.client.learning_rate = 0.5
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match=r'another config \(client.learning_rate: 0.1 -> 0.5\); pass --overwrite'):
    fedtff.run_experiment(changed, straight_run)


def test_overwrite_starts_over(tmp_path):
  fedtff.run_experiment(small_config(2), str(tmp_path))
  changed = small_config(2)
  changed.client.learning_rate = 0.05
  fedtff.run_experiment(changed, str(tmp_path), overwrite=True)
  assert checkpoints.rounds(tmp_path / 'checkpoints') == [2]
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['client']['learning_rate'] == 0.05


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = small_config(6)
  config.server.learning_rate = 1e30  # Logits overflow: the eval loss is NaN after round 1.
  config.rounds_per_eval = 1
  with pytest.raises(training.TrainingDivergedError, match=r'Training diverged at round \d+: '
                     r'((train|eval)/loss is (nan|inf)|the model weights are no longer finite)\. The last good checkpoint'):
    fedtff.run_experiment(config, str(tmp_path))
  rows = comparable_rows(tmp_path)
  assert all(np.isfinite(r['train/loss']) for r in rows)
  kept = checkpoints.rounds(tmp_path / 'checkpoints')
  assert all(k <= len(rows) for k in kept)


def test_checkpoint_roundtrip_and_partial_files(tmp_path):
  state = {'a': np.arange(3, dtype=np.float32), 'b': np.int64(7), 'c': b'adam'}
  checkpoints.save(str(tmp_path), 5, state, elapsed_s=1.5)
  (tmp_path / '.tmp-half-written.npz').write_bytes(b'\x00' * 10)
  outputs.remove_partial_files(str(tmp_path))
  restored, round_num, elapsed, damaged, metadata = checkpoints.restore_latest(str(tmp_path),
                                                                               state)
  assert damaged == () and metadata == {}
  assert round_num == 5 and elapsed == 1.5
  np.testing.assert_array_equal(restored['a'], state['a'])
  assert restored['b'] == 7 and restored['c'] == b'adam'
  assert os.listdir(tmp_path) == ['round-000005.npz']
  with pytest.raises(checkpoints.CheckpointMismatchError, match='has shape'):
    checkpoints.restore_latest(str(tmp_path), {'a': np.zeros(4), 'b': np.int64(0), 'c': b''})


def test_sigkill_mid_run_then_resume_matches_a_straight_run(straight_run, tmp_path):
  args = [sys.executable, 'experiments/train.py', '--config=configs/quickstart.py',
          f'--workdir={tmp_path}', '--config.data.num_clients=12',
          '--config.data.num_test_clients=3', '--config.clients_per_round=4',
          '--config.rounds_per_eval=2', '--config.rounds_per_checkpoint=2',
          '--config.server.momentum=0.0', '--config.data.client_epochs=1']
  # The quickstart config with the fields of small_config(): the rows of straight_run.
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


def test_specs_of_another_state_are_refused_naming_the_checkpoint_and_the_counts(tmp_path):
  state = {'a': np.arange(3, dtype=np.float32), 'b': np.int64(7)}
  checkpoints.save(str(tmp_path), 2, state, elapsed_s=0.5)
  specs = {'a': tf.TensorSpec([3], tf.float32)}  # One leaf for a state of two.
  with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
    checkpoints.restore_latest(str(tmp_path), state, specs=specs)
  path = os.path.join(str(tmp_path), 'round-000002.npz')
  assert str(raised.value) == (
      f'Reading checkpoint {path}: the state specs have 1 leaves, the process state has 2; '
      'pass state_specs of the same process.')
  assert os.listdir(tmp_path) == ['round-000002.npz']  # Not taken for a damaged file.
