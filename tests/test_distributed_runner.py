"""`run_experiment` and experiments/train.py with `config.runtime.workers`, on loopback.

The workers are `python -m fedtff.execution.worker` subprocesses (tests/test_distributed.py's
`Worker`), all started at once when the module's first test needs one; the
module's teardown kills them by pid (SIGKILL; tests/test_distributed.py checks
their clean SIGINT/SIGTERM stop) and asserts that none of them, nor any
`worker_binary` they started, is left running.
"""

import os
import socket
import time

from absl import flags
from ml_collections import config_flags
import numpy as np
import portpicker
import pytest

import fedtff
from fedtff.runner import checkpoints
from fedtff.execution import distributed
from fedtff.runner import outputs
from experiments import cli
from tests import conftest
from tests.test_distributed import assert_gone
from tests.test_distributed import Worker

ROLES = ('w0', 'w1', 'w2', 'victim')
TIMING = ('round_time_s', 'examples_per_s')
FAULT_TIMEOUT_S = 3.0


def small_config(workers=(), connect_timeout_s=30.0):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 20
  config.data.num_test_clients = 4
  config.model.hidden_units = (16,)
  config.total_rounds = 3
  config.clients_per_round = 7  # Over 3 workers: 3, 2 and 2 clients.
  config.rounds_per_eval = 1
  config.rounds_per_checkpoint = 1
  config.output.tensorboard = False
  config.runtime.workers = tuple(workers)
  config.runtime.connect_timeout_s = connect_timeout_s
  return config


def metric_rows(workdir):
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_rows(rows, expected):
  assert [r['round'] for r in rows] == [r['round'] for r in expected]
  for row, expected_row in zip(rows, expected):
    assert row.keys() == expected_row.keys()
    assert row == pytest.approx(expected_row, rel=1e-5, abs=1e-6)


def checkpoint_leaves(workdir, round_num):
  path = os.path.join(workdir, 'checkpoints', f'round-{round_num:06d}.npz')
  with np.load(path, allow_pickle=False) as saved:
    return {k: saved[k] for k in saved.files}


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
  log_dir = tmp_path_factory.mktemp('workers')
  workers = {role: Worker(str(log_dir / f'{role}.log')) for role in ROLES}
  yield workers
  for worker in workers.values():  # SIGKILL by pid; the kernel then ends each worker_binary.
    if worker.proc.poll() is None:
      worker.proc.kill()
  assert_gone([p for worker in workers.values() for p in worker.processes()])
  for worker in workers.values():
    worker.proc.wait(timeout=10)


@pytest.fixture(scope='module')
def local_run(pool, tmp_path_factory):
  del pool  # Started first, so the workers boot while this trains.
  workdir = str(tmp_path_factory.mktemp('local'))
  fedtff.run_experiment(small_config(), workdir)
  return workdir


@pytest.mark.parametrize('num_workers', [2, 3])
def test_metrics_match_the_local_runtime_row_for_row(pool, local_run, tmp_path, num_workers):
  workers = [pool[f'w{i}'].wait_serving() for i in range(num_workers)]
  cpu_before = [conftest.cpu_seconds(w.binary) for w in workers]
  fedtff.run_experiment(small_config([w.address for w in workers]), str(tmp_path))
  rows = metric_rows(tmp_path)
  assert [r['round'] for r in rows] == [1, 2, 3]
  assert_same_rows(rows, metric_rows(local_run))
  assert all(conftest.cpu_seconds(w.binary) > before for w, before in zip(workers, cpu_before))


def test_a_worker_killed_mid_run_keeps_the_checkpoint_and_the_run_resumes_elsewhere(
    pool, local_run, tmp_path):
  victim = pool['victim'].wait_serving()
  first = [pool['w0'].wait_serving(), victim]

  killed_at = []

  def kill_after_round_2(row):
    if row['round'] == 2:
      victim.proc.kill()  # SIGKILL, by pid; the kernel ends its worker_binary.
      victim.proc.wait()
      killed_at.append(time.monotonic())

  workdir = str(tmp_path)
  with pytest.raises(distributed.WorkerUnavailableError) as raised:
    fedtff.run_experiment(small_config([w.address for w in first], FAULT_TIMEOUT_S), workdir,
                          progress_fn=kill_after_round_2)
  assert_gone([victim.binary])
  message = str(raised.value)
  assert message.startswith(f'TFF worker {victim.address} is unavailable: ')
  assert raised.value.addresses == (victim.address,)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  assert message.endswith(
      f'The last checkpoint (round 2) is kept in {checkpoint_dir}; rerun the same config on '
      f'{workdir} to resume from it (later rounds are redone), on the restarted worker or on '
      'others (runtime.workers may change).')
  assert time.monotonic() - killed_at[0] < 4 * FAULT_TIMEOUT_S  # Round 3 fails, never hangs.

  # What the failed run left: rounds 1 and 2, written and checkpointed, nothing of round 3.
  assert checkpoints.rounds(checkpoint_dir) == [1, 2]
  assert not [f for f in os.listdir(checkpoint_dir) if f.startswith('.tmp-')]
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  assert_same_rows(metric_rows(workdir), metric_rows(local_run)[:2])
  kept, local = checkpoint_leaves(workdir, 2), checkpoint_leaves(local_run, 2)
  assert kept.keys() == local.keys()
  assert kept.pop('__round__') == 2 and kept.pop('__elapsed_s__') > 0
  for key in kept:
    np.testing.assert_allclose(kept[key], local[key], rtol=1e-5, atol=1e-6, err_msg=key)

  # Resume on two other workers (other ports): round 3 runs, rounds 1 and 2 are kept.
  others = [pool['w1'].wait_serving(), pool['w2'].wait_serving()]
  summary = fedtff.run_experiment(small_config([w.address for w in others]), workdir)
  assert summary['rounds_completed'] == 3
  assert_same_rows(metric_rows(workdir), metric_rows(local_run))


def test_bad_worker_addresses_are_refused_before_the_task_is_built(tmp_path, monkeypatch):
  monkeypatch.setattr(fedtff.tasks, 'build_task', lambda config: pytest.fail('task built'))
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match=r"^Config key runtime.workers: A worker address must be 'host:port' "
                           r"with a port in \[1, 65535\], got 'localhost'.$"):
    fedtff.run_experiment(small_config(['127.0.0.1:8000', 'localhost']), str(tmp_path))


@pytest.fixture
def silent_address():
  """A loopback address that accepts TCP connections but never speaks gRPC."""
  with socket.socket() as silent:
    silent.bind(('127.0.0.1', 0))
    silent.listen()
    yield f'127.0.0.1:{silent.getsockname()[1]}'


def test_a_silent_worker_at_start_is_named_within_the_timeout(silent_address):
  start = time.monotonic()
  with pytest.raises(distributed.WorkerUnavailableError,
                     match=f'^Cannot reach 1 of 1 TFF workers: {silent_address} '
                           r'\(no answer within 2 s\)\. '):
    with distributed.runtime_for({'workers': (silent_address,), 'connect_timeout_s': 2.0}):
      pytest.fail('entered the runtime')
  assert time.monotonic() - start < 5.0  # The timeout, then a 1 s probe for the reason.


def _parse_workers_flag(value):
  argv = ['train.py', f'--config={conftest.REPO_ROOT}/configs/quickstart.py',
          f'--config.runtime.workers={value}']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('value, workers', [
    ("('host1:8000','host2:8000')", ('host1:8000', 'host2:8000')),
    ("'host1:8000','host2:8000'", ('host1:8000', 'host2:8000')),
    ('host1:8000', ('host1:8000',)),
    ("'[::1]:8000',", ('[::1]:8000',)),
], ids=['tuple', 'quoted_list', 'one_bare', 'one_ipv6'])
def test_the_documented_flag_forms_give_a_tuple_of_addresses(value, workers):
  config = _parse_workers_flag(value)
  assert config.runtime.workers == workers
  fedtff.runner.config.validate(config)


def test_unquoted_addresses_on_the_command_line_get_a_hint():
  value = 'host1:8000,host2:8000'
  with pytest.raises(flags.Error) as raised:
    _parse_workers_flag(value)
  argv = ['train.py', f'--config.runtime.workers={value}']
  assert cli._flag_error(argv, raised.value) == (  # pylint: disable=protected-access
      "Config key runtime.workers must be a tuple of quoted 'host:port' strings such as "
      '"(\'host1:8000\',\'host2:8000\')", got \'host1:8000,host2:8000\'.')


def test_train_script_names_unreachable_workers_on_one_line(tmp_path, silent_address):
  refused, mute = f'127.0.0.1:{portpicker.pick_unused_port()}', silent_address
  start = time.monotonic()
  result = conftest.run_script(
      ['experiments/train.py', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.total_rounds=2', '--config.data.num_clients=20',
       '--config.data.num_test_clients=4', '--config.runtime.connect_timeout_s=2',
       f"--config.runtime.workers=('{refused}','{mute}')"],
      timeout=240)
  elapsed = time.monotonic() - start
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith('train.py: error: Cannot reach 2 of 2 TFF workers: ')
  assert f'{refused} (UNAVAILABLE: ' in result.stderr and 'Connection refused' in result.stderr
  assert f'{mute} (no answer within 2 s)' in result.stderr
  assert 'Traceback' not in result.stderr and result.stdout == ''
  assert elapsed < 120
  assert not os.path.exists(os.path.join(tmp_path, 'metrics.csv'))
