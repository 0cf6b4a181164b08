"""experiments/train.py end to end: outputs, one-line errors, worker cleanup."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests import conftest

TRAIN = ['experiments/train.py', '--config=configs/quickstart.py']
SMALL = ['--config.total_rounds=2', '--config.rounds_per_eval=1']


def test_trains_and_writes_the_run_directory(tmp_path):
  result = conftest.run_script(TRAIN + SMALL + [f'--workdir={tmp_path}'], fresh=True)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('round 1/2  loss ') and 'ETA' in lines[0]
  assert lines[-1].startswith('test accuracy ') and lines[-1].endswith(f'run directory: {tmp_path}')
  assert sorted(os.listdir(tmp_path)) == ['.lock', 'checkpoints', 'config.json', 'metrics.csv',
                                          'metrics.jsonl', 'summary.json', 'tensorboard']
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['total_rounds'] == 2
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  final = summary['final']
  assert f"test accuracy {final['eval/accuracy']:.4f}" in lines[-1]
  # The default engine='auto' ran the compiled engine, and says so in both places.
  assert summary['engine'] == 'compiled' and 'engine_reason' not in summary
  assert ' after round 2 on the compiled engine; run directory: ' in lines[-1]
  assert 'oneDNN' not in result.stderr and 'Warning' not in result.stderr
  assert result.stderr == ''


# Refused command lines and the line each gets. Each runs in a fork of the
# preloaded interpreter (conftest.run_script); `unknown_key` also runs in a
# fresh process, so one refusal is checked with the imports' own output on
# stderr too.
BAD_INPUT = {
    'missing_config': (
        ['experiments/train.py', '--config=configs/missing.py', '--workdir=/tmp/x'],
        'config file configs/missing.py does not exist'),
    'unknown_key': (
        TRAIN + ['--workdir=/tmp/x', '--config.client.lr=0.1'],
        'Unknown config key client.lr; valid keys here are: client.beta_1, client.beta_2, '
        'client.epsilon, client.initial_accumulator, client.learning_rate, '),
    'wrong_type': (
        TRAIN + ['--workdir=/tmp/x', '--config.total_rounds=many'],
        "Config key total_rounds must be an integer, got 'many'."),
    'unwritable_workdir': (
        TRAIN + ['--workdir=/proc/fedtff-cannot-write'],
        'Cannot write to the run directory /proc/fedtff-cannot-write'),
    'bad_choice': (
        TRAIN + ['--workdir=/tmp/x', '--config.data.dataset=mnist'],
        "Config key data.dataset is 'mnist'; expected one of: digits, "),
    'negative_seed': (
        TRAIN + ['--workdir=/tmp/x', '--config.seed=-1'],
        'Config key seed must be at least 0, got -1.'),
    'too_many_test_clients': (
        TRAIN + ['--workdir=/tmp/x', '--config.data.num_test_clients=60'],
        'Config key data.num_test_clients must be less than the 60 clients (at most 59), '
        'got 60.'),
    'variant_of_a_plain_config': (
        ['experiments/train.py', '--config=configs/quickstart.py:nope', '--workdir=/tmp/x'],
        'config file configs/quickstart.py has no variants, got configs/quickstart.py:nope; '
        'use --config=configs/quickstart.py'),
    'unknown_variant': (
        ['experiments/train.py', '--config=configs/quickstart_dp.py:nope', '--workdir=/tmp/x'],
        "config file configs/quickstart_dp.py:nope: Unknown variant 'nope'; expected one of "
        'eps1, eps8, noiseless, poisson_eps1, poisson_eps8, poisson_noiseless, ftrl_eps1, '
        'ftrl_eps8, ftrl_noiseless, ddp_eps1, ddp_eps8, ddp_noiseless.'),
    'extra_argument': (
        TRAIN + ['--workdir=/tmp/x', 'extra'],
        "Unexpected argument 'extra': every input is a --flag, see --help."),
    'none_for_an_integer': (
        TRAIN + ['--workdir=/tmp/x', '--config.seed=None'],
        "Config key seed must be an integer, got 'None'."),
    'stop_metric_direction': (
        TRAIN + ['--workdir=/tmp/x', '--config.stop.metric=eval/auc', '--config.stop.target=0.9'],
        "Config key stop.metric is 'eval/auc', whose better direction fedtff does not know; "
        "set stop.mode='max' or 'min'."),
    'workers_on_compiled': (
        TRAIN + ['--workdir=/tmp/x', '--config.engine=compiled',
                 '--config.runtime.workers=localhost:8000'],
        "runtime.workers needs engine='tff': the compiled engine runs on this machine only."),
}


@pytest.fixture(scope='module')
def bad_input_results():
  return {name: conftest.run_script(args) for name, (args, _) in BAD_INPUT.items()}


def _assert_one_line_refusal(result, message):
  assert result.returncode == 2, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith('train.py: error: ')
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('case', list(BAD_INPUT))
def test_bad_input_gets_one_line_and_nonzero_exit(bad_input_results, case):
  _assert_one_line_refusal(bad_input_results[case], BAD_INPUT[case][1])


def test_bad_input_in_a_fresh_process_gets_one_line_and_nonzero_exit():
  args, message = BAD_INPUT['unknown_key']
  result = conftest.run_script(args, fresh=True)
  _assert_one_line_refusal(result, message)
  assert result.stdout == ''


def test_none_sets_an_optional_number_back_to_its_default(tmp_path):
  # quickstart_dp.py:noiseless sets aggregator.noise_multiplier=0.0; DP needs
  # exactly one of it and privacy.target_epsilon, so the run only starts if
  # None was applied.
  result = conftest.run_script([
      'experiments/train.py', '--config=configs/quickstart_dp.py:noiseless',
      f'--workdir={tmp_path}', '--config.aggregator.noise_multiplier=None',
      '--config.privacy.target_epsilon=8', '--config.total_rounds=1', '--config.engine=compiled',
      '--quiet'])
  assert result.returncode == 0, result.stderr
  with open(tmp_path / 'config.json') as f:
    aggregator = json.load(f)['aggregator']
  assert aggregator['noise_multiplier'] is None and aggregator['clip_norm'] == 1.0


def _start_training(workdir, total_rounds=500):
  # The TFF engine: the one that starts a worker_binary for its rounds.
  return subprocess.Popen(
      [sys.executable] + TRAIN + [f'--workdir={workdir}', f'--config.total_rounds={total_rounds}',
                                  '--config.engine=tff'],
      cwd=conftest.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=conftest.script_env())


def _wait_for_first_round(proc):
  """Reads stdout until the first round line; returns the workers it started."""
  line = proc.stdout.readline()
  assert line.split('/')[0].split() == ['round', '1'], line + proc.stderr.read()
  workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if p.name() == 'worker_binary']
  assert workers, 'the training script started no worker_binary'
  return workers


def _assert_gone(workers):
  gone, alive = psutil.wait_procs(workers, timeout=10)
  assert not alive, f'workers still alive: {[p.pid for p in alive]}'


def test_normal_exit_stops_the_workers_and_closes_the_pipe(tmp_path):
  proc = _start_training(tmp_path, total_rounds=3)
  workers = _wait_for_first_round(proc)
  stdout, _ = proc.communicate(timeout=120)  # Returns only once every writer closed the pipe.
  assert proc.returncode == 0 and 'test accuracy' in stdout
  _assert_gone(workers)


@pytest.mark.parametrize('signum, exit_code, line', [
    (signal.SIGINT, 130, 'train.py: interrupted (SIGINT)\n'),
    (signal.SIGTERM, 143, 'train.py: terminated (SIGTERM)\n')], ids=['sigint', 'sigterm'])
def test_signal_stops_the_workers_and_closes_the_pipe(tmp_path, signum, exit_code, line):
  proc = _start_training(tmp_path)
  workers = _wait_for_first_round(proc)
  sent = time.monotonic()
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=60)
  assert time.monotonic() - sent < 2.0
  assert (proc.returncode, stderr) == (exit_code, line)
  _assert_gone(workers)


def test_exception_mid_run_stops_the_workers(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start_training(workdir)
  workers = _wait_for_first_round(proc)
  shutil.rmtree(workdir)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode != 0
  assert stderr.startswith('train.py: error: ') and 'No such file' in stderr
  _assert_gone(workers)


def test_sigkill_of_the_trainer_still_ends_its_workers(tmp_path):
  proc = _start_training(tmp_path)
  workers = _wait_for_first_round(proc)
  proc.kill()
  proc.communicate(timeout=60)
  _assert_gone(workers)


@pytest.mark.parametrize('how', ['env', 'flag'])
def test_verbose_mode_shows_tensorflow_logs_again(how):
  args = TRAIN + ['--workdir=/tmp/x', '--config.client.lr=1']
  env = conftest.script_env()
  if how == 'env':
    env['FEDTFF_VERBOSE'] = '1'
  else:
    args.append('--verbosity=0')
  result = subprocess.run([sys.executable] + args, cwd=conftest.REPO_ROOT, capture_output=True,
                          text=True, env=env, timeout=300)
  assert result.returncode != 0
  assert 'tensorflow/' in result.stderr  # C++ log lines name their TensorFlow source file.
