"""The run directory's guarantees: one writer, validation before side effects,
damaged files, retention, extending and rerunning, leftovers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import outputs
from fedtff.runner import run_dir
from tests import conftest
from tests import test_experiment


def _earlier_config():
  """base_config() as a run writes it: resolved, e.g. server.learning_rate 1.0 for fedavg."""
  return json.loads(fedtff.runner.config.to_json(fedtff.runner.config.base_config()))


def _write_earlier_config(workdir, config_dict):
  workdir.mkdir(exist_ok=True)
  (workdir / run_dir.CONFIG).write_text(json.dumps(config_dict))


def test_a_run_from_before_new_keys_existed_resumes(tmp_path):
  earlier = _earlier_config()
  del earlier['engine'], earlier['runtime'], earlier['data']['feed']
  _write_earlier_config(tmp_path / 'run', earlier)
  run_dir.prepare(str(tmp_path / 'run'), fedtff.runner.config.base_config())  # No error.


def test_runtime_engine_and_feed_may_change_on_resume(tmp_path):
  _write_earlier_config(tmp_path / 'run', json.loads(
      fedtff.runner.config.to_json(fedtff.runner.config.base_config())))
  config = fedtff.runner.config.base_config()
  config.update(dict(total_rounds=20, engine='compiled'))
  config.data.feed, config.data.feed_dir = 'constants', '/shared'
  run_dir.prepare(str(tmp_path / 'run'), config)


def test_a_changed_key_added_later_is_still_refused(tmp_path):
  earlier = _earlier_config()
  del earlier['data']['vocab_size']
  _write_earlier_config(tmp_path / 'run', earlier)
  config = fedtff.runner.config.base_config()
  config.data.vocab_size = 5000
  with pytest.raises(fedtff.runner.config.ConfigError, match=r'data.vocab_size: 10000 -> 5000'):
    run_dir.prepare(str(tmp_path / 'run'), config)


def test_an_earlier_fedavgm_run_that_ran_without_momentum_is_not_resumed_with_it(tmp_path):
  """Before the defaults were resolved, a fedavgm config ran with server momentum 0."""
  earlier = _earlier_config()
  earlier['algorithm']['name'] = 'fedavgm'
  _write_earlier_config(tmp_path / 'run', earlier)
  config = fedtff.runner.config.base_config()
  config.algorithm.name = 'fedavgm'
  with pytest.raises(fedtff.runner.config.ConfigError, match=r'\(server.momentum: 0.0 -> 0.9\)'):
    run_dir.prepare(str(tmp_path / 'run'), config)
  config.server.momentum = 0.0
  run_dir.prepare(str(tmp_path / 'run'), config)  # The value it ran with: no error.


# One writer per run directory.


def test_a_second_writer_is_refused_naming_the_pid_holding_the_lock(tmp_path):
  with run_dir.lock(str(tmp_path)):
    with pytest.raises(run_dir.RunDirectoryError,
                       match=rf'{tmp_path} is in use by another fedtff run \(pid {os.getpid()}\)'):
      with run_dir.lock(str(tmp_path)):
        pass
  with run_dir.lock(str(tmp_path)):  # Released on exit.
    pass


def test_the_lock_of_a_killed_process_never_blocks(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom fedtff.runner import run_dir\n'
       'with run_dir.lock(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)',
       str(tmp_path)], cwd=conftest.REPO_ROOT, stdout=subprocess.PIPE, text=True,
      env=conftest.script_env())
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(run_dir.RunDirectoryError, match=rf'\(pid {holder.pid}\)'):
      with run_dir.lock(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  with run_dir.lock(str(tmp_path)):
    pass


def test_two_trainers_on_one_workdir_one_is_refused_in_one_line(tmp_path):
  args = [sys.executable, 'experiments/train.py', '--config=configs/quickstart.py',
          f'--workdir={tmp_path}', '--config.total_rounds=5000', '--config.rounds_per_eval=5000']
  first = subprocess.Popen(args, cwd=conftest.REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=conftest.script_env())
  try:
    first.stdout.readline()  # Its first round: it holds the lock.
    second = conftest.run_script(args[1:] + ['--quiet'])
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  assert second.returncode == 2
  assert second.stderr.strip().splitlines() == [
      f'train.py: error: {tmp_path} is in use by another fedtff run (pid {first.pid}); wait for '
      'it to end or choose another --workdir.']


# Validation before any side effect.


def _config(**overrides):
  """test_experiment's 12-client config, 4 rounds, checkpoints every 2."""
  return test_experiment.small_config(**{'total_rounds': 4, 'rounds_per_checkpoint': 2,
                                         **overrides})


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 4-round run (checkpoints at rounds 2 and 4)."""
  workdir = tmp_path_factory.mktemp('finished')
  fedtff.run_experiment(_config(), str(workdir))
  return workdir


def _snapshot(workdir):
  """Every file under `workdir` (but the lock) with its bytes."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      if name != run_dir.LOCK:
        with open(path, 'rb') as f:
          files[os.path.relpath(path, workdir)] = f.read()
  return files


def test_a_refused_config_leaves_a_fresh_workdir_untouched(tmp_path):
  workdir = tmp_path / 'fresh'
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match='clients_per_round is 100, but the task has 9 training clients'):
    fedtff.run_experiment(_config(clients_per_round=100), str(workdir))
  assert not workdir.exists()
  fedtff.run_experiment(_config(total_rounds=1), str(workdir))  # The corrected command runs.


def test_overwrite_with_an_invalid_config_deletes_nothing(finished):
  before = _snapshot(finished)
  with pytest.raises(fedtff.runner.config.ConfigError, match='clients_per_round is 100'):
    fedtff.run_experiment(_config(clients_per_round=100), str(finished), overwrite=True)
  assert _snapshot(finished) == before


def test_rerunning_a_finished_run_rewrites_nothing(finished):
  before = _snapshot(finished)
  summary = fedtff.run_experiment(_config(), str(finished))
  assert _snapshot(finished) == before  # summary.json, config.json, no new TensorBoard file.
  assert summary['rounds_completed'] == 4


def test_lowering_total_rounds_of_a_finished_run_is_refused(finished):
  before = _snapshot(finished)
  with pytest.raises(run_dir.RunDirectoryError,
                     match='holds a run with 4 completed rounds; total_rounds=2 cannot shorten'):
    fedtff.run_experiment(_config(total_rounds=2), str(finished))
  assert _snapshot(finished) == before


def test_config_json_that_is_not_an_object_is_named(tmp_path):
  (tmp_path / run_dir.CONFIG).write_text('[1, 2]')
  with pytest.raises(ValueError, match=rf'{tmp_path}/config.json must hold a JSON object, got list'):
    fedtff.run_experiment(_config(), str(tmp_path))
  (tmp_path / run_dir.CONFIG).write_text('{"a": ')
  with pytest.raises(ValueError, match=rf'{tmp_path}/config.json is not valid JSON'):
    fedtff.run_experiment(_config(), str(tmp_path))


def test_a_csv_that_cannot_be_parsed_is_named_with_its_line(tmp_path):
  path = tmp_path / 'metrics.csv'
  path.write_text('round,train/loss\n1,0.5\n2,zero\n')
  with pytest.raises(ValueError, match=rf'{path} line 3 cannot be parsed'):
    outputs.read_metrics_csv(str(path))


@pytest.mark.parametrize('keep', [-1, -5])
def test_negative_checkpoints_to_keep_is_refused(keep):
  config = _config()
  config.output.checkpoints_to_keep = keep
  with pytest.raises(fedtff.runner.config.ConfigError, match='output.checkpoints_to_keep must be 0'):
    fedtff.runner.config.validate(config)
  with pytest.raises(ValueError, match='keep must be 0'):
    checkpoints.save('unused', 1, {}, elapsed_s=0.0, keep=keep)


def test_checkpoints_to_keep_zero_keeps_every_checkpoint(tmp_path):
  for round_num in range(1, 5):
    checkpoints.save(str(tmp_path), round_num, {'w': np.zeros(2)}, elapsed_s=0.0, keep=0)
  assert checkpoints.rounds(str(tmp_path)) == [1, 2, 3, 4]
  checkpoints.save(str(tmp_path), 5, {'w': np.zeros(2)}, elapsed_s=0.0, keep=1)
  assert checkpoints.rounds(str(tmp_path)) == [5]


def test_held_out_clients_and_a_held_out_share_together_are_refused():
  config = _config()
  config.data.test_fraction = 0.2
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match='data.num_test_clients and data.test_fraction are both set'):
    fedtff.runner.config.validate(config)


# Damaged files: named, set aside, and the newest intact checkpoint used.


@pytest.mark.parametrize('damage, why', [
    (lambda path: path.write_bytes(path.read_bytes()[:100]), 'truncated or not a zip'),
    (lambda path: path.write_bytes(b''), 'truncated or not a zip'),
    (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
     'not a checkpoint|truncated or not a zip'),
], ids=['truncated', 'empty', 'random_bytes'])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, damage, why):
  state = {'w': np.arange(3, dtype=np.float32)}
  checkpoints.save(str(tmp_path), 2, state, elapsed_s=1.0)
  checkpoints.save(str(tmp_path), 4, {'w': np.ones(3, np.float32)}, elapsed_s=2.0)
  damage(tmp_path / 'round-000004.npz')
  restored = checkpoints.restore_latest(str(tmp_path), state)
  assert restored.round_num == 2
  np.testing.assert_array_equal(restored.state['w'], state['w'])
  assert len(restored.damaged) == 1 and restored.damaged[0].startswith(
      f'{tmp_path}/round-000004.npz: ')
  assert re.search(why, restored.damaged[0])
  assert sorted(os.listdir(tmp_path)) == ['round-000002.npz', 'round-000004.npz.damaged']


def test_no_intact_checkpoint_is_one_error_naming_the_files(tmp_path):
  checkpoints.save(str(tmp_path), 2, {'w': np.zeros(2)}, elapsed_s=1.0)
  (tmp_path / 'round-000002.npz').write_bytes(b'')
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=rf'No checkpoint in {tmp_path} can be read \({tmp_path}/round-000002.npz'):
    checkpoints.restore_latest(str(tmp_path), {'w': np.zeros(2)})


def _rows(workdir):
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  return [{k: v for k, v in r.items() if k not in ('round_time_s', 'examples_per_s')} for r in rows]


@pytest.fixture(scope='module')
def straight_8(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight_8')
  fedtff.run_experiment(_config(total_rounds=8), str(workdir))
  return workdir


def _assert_same_rows(a, b):
  assert [r['round'] for r in a] == [r['round'] for r in b]
  for row_a, row_b in zip(a, b):
    assert row_a == pytest.approx(row_b, abs=1e-5)


def _copy(finished, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished, workdir)
  return workdir


def test_extending_past_a_damaged_checkpoint_gives_the_straight_rows(finished, straight_8,
                                                                     tmp_path):
  workdir = _copy(finished, tmp_path)
  newest = workdir / 'checkpoints' / 'round-000004.npz'
  newest.write_bytes(newest.read_bytes()[:50])
  fedtff.run_experiment(_config(total_rounds=8), str(workdir))
  _assert_same_rows(_rows(workdir), _rows(straight_8))
  assert (workdir / 'checkpoints' / 'round-000004.npz.damaged').exists()


def test_evaluate_uses_the_newest_intact_checkpoint(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  (workdir / 'checkpoints' / 'round-000004.npz').write_bytes(b'')
  metrics = fedtff.evaluate_checkpoint(str(workdir))
  row_2 = _rows(finished)[1]
  assert metrics['round'] == 2
  assert metrics['eval/accuracy'] == pytest.approx(row_2['eval/accuracy'], abs=1e-6)


def test_a_deleted_metrics_csv_is_rebuilt_from_the_json_lines(finished, straight_8, tmp_path):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir / 'metrics.csv')
  summary = fedtff.run_experiment(_config(total_rounds=8), str(workdir))
  _assert_same_rows(_rows(workdir), _rows(straight_8))
  with open(straight_8 / 'summary.json') as f:
    assert summary['best'] == json.load(f)['best']


def test_metric_files_that_miss_checkpointed_rounds_are_refused(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir / 'metrics.csv')
  os.remove(workdir / 'metrics.jsonl')
  with pytest.raises(run_dir.RunDirectoryError,
                     match='has a checkpoint at round 4 but neither metrics.jsonl nor metrics.csv '
                     'holds every round up to it'):
    fedtff.run_experiment(_config(total_rounds=8), str(workdir))


def test_extending_from_an_unevaluated_last_round_gives_the_straight_rows(straight_8, tmp_path):
  fedtff.run_experiment(_config(total_rounds=3), str(tmp_path))  # Round 3 evaluated: it is last.
  fedtff.run_experiment(_config(total_rounds=8), str(tmp_path))
  _assert_same_rows(_rows(tmp_path), _rows(straight_8))
  jsonl = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [any(k.startswith('eval/') for k in row) for row in jsonl] == [
      False, True, False, True, False, True, False, True]


def _tensorboard_steps(directory):
  steps = []
  for name in sorted(os.listdir(directory)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
      steps += [(value.tag, event.step) for value in event.summary.value]
  return steps


def test_tensorboard_events_are_cut_back_on_resume(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir / 'checkpoints' / 'round-000004.npz')  # As if killed before checkpoint 4.
  fedtff.run_experiment(_config(), str(workdir))
  steps = _tensorboard_steps(workdir / 'tensorboard')
  assert len(steps) == len(set(steps))
  assert sorted({step for tag, step in steps if tag == 'train/loss'}) == [1, 2, 3, 4]


def test_leftover_temporary_files_are_removed(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  (workdir / '.tmp-abc123config.json').write_text('{"half":')
  (workdir / 'checkpoints' / '.tmp-x.npz').write_bytes(b'\0')
  fedtff.run_experiment(_config(total_rounds=5), str(workdir))
  assert not [n for n in os.listdir(workdir) if n.startswith('.tmp-')]
  assert not [n for n in os.listdir(workdir / 'checkpoints') if n.startswith('.tmp-')]
