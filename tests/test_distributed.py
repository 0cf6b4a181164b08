"""fedtff.execution.worker and fedtff.execution.distributed on loopback: equivalence, faults, cleanup.

Every worker is a `python -m fedtff.execution.worker` subprocess on a free 127.0.0.1
port. They all start at once, when the module's first test needs one (their
TensorFlow imports then overlap), and the module's teardown asserts that none
of them, nor any `worker_binary` they started, is left running.
"""

import logging
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.execution import distributed
from fedtff.algorithms import tff_model
from tests import conftest

NUM_CLIENTS, CLIENTS_PER_ROUND, TOTAL_ROUNDS = 12, 7, 3
ROLES = ('shared0', 'shared1', 'shared2', 'sigkill', 'sigint', 'sigterm')
# fedtff.execution.worker cannot hide TensorFlow's import banners itself (fedtff/__init__.py
# imports TensorFlow first); deployments set this, as docs/distributed.md says.
QUIET = {'TF_CPP_MIN_LOG_LEVEL': '3'}
TIMEOUT_S = 3.0


class Worker:
  """A `python -m fedtff.execution.worker` subprocess serving on a free loopback port."""

  def __init__(self, log_path):
    self.port = portpicker.pick_unused_port()
    self.address = f'127.0.0.1:{self.port}'
    self.log_path = log_path
    with open(log_path, 'w') as log:
      self.proc = subprocess.Popen(
          [sys.executable, '-m', 'fedtff.execution.worker', f'--port={self.port}'], cwd=conftest.REPO_ROOT,
          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
          env=conftest.script_env(**QUIET))
    self.wrapper = psutil.Process(self.proc.pid)
    self.binary = None

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait_serving(self, timeout_s=240) -> 'Worker':
    """Waits for the 'listening on' line; records the worker_binary it started."""
    deadline = time.monotonic() + timeout_s
    while 'listening on' not in self.log():
      assert self.proc.poll() is None, f'worker exited early:\n{self.log()}'
      assert time.monotonic() < deadline, f'worker did not start:\n{self.log()}'
      time.sleep(0.1)
    [self.binary] = [p for p in psutil.Process(self.proc.pid).children()
                     if p.name() == 'worker_binary']
    return self

  def processes(self):
    """psutil handles made while running: they tell a reused pid from the process."""
    return [self.wrapper] + ([self.binary] if self.binary else [])


def _running(process: psutil.Process) -> bool:
  try:
    return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def assert_gone(processes, timeout_s=30):  # A loaded machine takes seconds to reap TF processes.
  deadline = time.monotonic() + timeout_s
  while any(_running(p) for p in processes) and time.monotonic() < deadline:
    time.sleep(0.1)
  alive = [f'{p.pid} ({p.name()})' for p in processes if _running(p)]
  assert not alive, f'still running: {alive}'


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
  log_dir = tmp_path_factory.mktemp('workers')
  workers = {role: Worker(str(log_dir / f'{role}.log')) for role in ROLES}
  yield workers
  for worker in workers.values():
    if worker.proc.poll() is None:
      worker.proc.terminate()
  assert_gone([p for worker in workers.values() for p in worker.processes()])
  for worker in workers.values():
    worker.proc.wait(timeout=10)


@pytest.fixture(scope='module')
def shared(pool):
  return [pool[f'shared{i}'].wait_serving() for i in range(3)]


# A small FedAvg task whose clients' datasets are built inside TFF from ids.


def model_fn():
  return fedtff.models.mlp((8,), 3, hidden_units=(6,))


def composed_process():
  features, labels = conftest.tiny_classification_arrays(num_examples=120)
  client_data = fedtff.data.from_arrays(
      features, labels, np.array_split(np.arange(120), NUM_CLIENTS)).preprocess(
          lambda dataset: dataset.batch(5))
  process = fedtff.build_fed_avg(model_fn, client_data.element_type_structure)
  composed = tff.simulation.compose_dataset_computation_with_learning_process(
      client_data.dataset_computation, process)
  return composed, client_data.client_ids


def initial_state(composed):
  """The state with seeded weights (TFF's `initialize()` draws unseeded ones)."""
  return composed.set_model_weights(composed.initialize(),
                                    tff_model.initial_weights(model_fn, seed=0))


def train(total_rounds=TOTAL_ROUNDS):
  """Runs seeded rounds in the current context; returns metric rows and weights."""
  composed, client_ids = composed_process()
  rows, weights = [], []
  keep_weights = lambda round_num, state: weights.append(
      [np.array(w) for w in tf.nest.flatten(composed.get_model_weights(state))])
  select = lambda r: fedtff.sample_clients(client_ids, CLIENTS_PER_ROUND, round_num=r, seed=3)
  fedtff.run_training(composed, select, total_rounds=total_rounds, state=initial_state(composed),
                      metrics_writers=[rows.append], checkpoint_fn=keep_weights)
  metrics = [{k: v for k, v in row.items() if k not in ('round_time_s', 'examples_per_s')}
             for row in rows]
  return metrics, weights


@pytest.fixture(scope='module')
def local_run(pool):
  del pool  # Started first, so the workers boot while this trains.
  with fedtff.local_runtime():
    return train()


@pytest.mark.parametrize('num_workers', [2, 3])
def test_rounds_match_the_local_runtime(local_run, shared, num_workers):
  workers = shared[:num_workers]
  cpu_before = [conftest.cpu_seconds(w.binary) for w in workers]
  with distributed.remote_runtime([w.address for w in workers]):
    metrics, weights = train()
  local_metrics, local_weights = local_run
  assert [m['round'] for m in metrics] == list(range(1, TOTAL_ROUNDS + 1))
  for remote_row, local_row in zip(metrics, local_metrics):
    assert remote_row == pytest.approx(local_row, abs=1e-5)
  for remote_round, local_round in zip(weights, local_weights):
    for remote_w, local_w in zip(remote_round, local_round):
      np.testing.assert_allclose(remote_w, local_w, atol=1e-5)
  assert all(conftest.cpu_seconds(w.binary) > before for w, before in zip(workers, cpu_before))


def test_worker_logs_where_it_listens(shared):
  line = [l for l in shared[0].log().splitlines() if 'listening on' in l][0]
  assert f'fedtff-worker: TFF worker_binary (pid {shared[0].binary.pid}) listening on ' \
         f'[::]:{shared[0].port}' in line
  assert line.endswith(f'trainers connect to {socket.gethostname()}:{shared[0].port}')


def test_a_computation_that_cannot_be_split_runs_on_the_first_worker(shared, caplog):

  @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
  def sum_of_squared_deviations(values):  # Its second sum depends on its first.
    mean = tff.federated_broadcast(tff.federated_mean(values))
    squared = tff.tensorflow.computation(lambda x, m: (x - m) ** 2)
    return tff.federated_sum(tff.federated_map(squared, (values, mean)))

  with caplog.at_level(logging.WARNING, logger='fedtff.execution.distributed'):
    with distributed.remote_runtime([w.address for w in shared]):
      result = sum_of_squared_deviations([1.0, 2.0, 3.0, 6.0])
  assert result == pytest.approx(14.0)
  assert 'cannot be split over workers' in caplog.text
  assert f'runs on {shared[0].address} alone' in caplog.text


def test_unreachable_workers_are_all_named_within_the_timeout(shared):
  refused = [f'127.0.0.1:{portpicker.pick_unused_port()}' for _ in range(2)]
  start = time.monotonic()
  with pytest.raises(distributed.WorkerUnavailableError) as raised:
    with distributed.remote_runtime([refused[0], shared[0].address, refused[1]],
                                    connect_timeout_s=2.0):
      pass
  assert time.monotonic() - start < 6.0
  message = str(raised.value)
  assert message.startswith('Cannot reach 2 of 3 TFF workers: ')
  assert f'{refused[0]} (' in message and f'{refused[1]} (' in message
  assert 'Connection refused' in message and shared[0].address not in message
  assert raised.value.addresses == tuple(refused)


@pytest.mark.parametrize('workers, message', [
    (['localhost'], "must be 'host:port'"),
    (['localhost:0'], "must be 'host:port' with a port in"),
    ([], 'non-empty list'),
    ('localhost:8000', 'non-empty list'),
    (['a:1', 'b:2', 'a:1'], 'listed more than once: a:1'),
], ids=['no_port', 'port_zero', 'empty', 'bare_string', 'repeated'])
def test_bad_worker_lists_are_refused(workers, message):
  with pytest.raises(ValueError, match=message):
    with distributed.remote_runtime(workers):
      pass


def _kill(worker):
  worker.proc.kill()
  worker.proc.wait()
  assert_gone([worker.binary])  # The kernel ends the binary with its parent.


def _hang(worker):
  worker.binary.suspend()  # Like a machine that vanished: the socket stays open.


@pytest.mark.parametrize('fault', [_kill, _hang], ids=['sigkill', 'sigstop'])
def test_a_lost_worker_fails_the_next_round_naming_it(pool, shared, fault):
  victim = pool['sigkill'].wait_serving() if fault is _kill else shared[1]
  try:
    with distributed.remote_runtime([shared[0].address, victim.address],
                                    connect_timeout_s=TIMEOUT_S):
      composed, client_ids = composed_process()
      state = composed.next(initial_state(composed), client_ids).state
      fault(victim)
      start = time.monotonic()
      with pytest.raises(distributed.WorkerUnavailableError,
                         match=f'TFF worker {victim.address} is unavailable') as raised:
        composed.next(state, client_ids)
      assert time.monotonic() - start < 4 * TIMEOUT_S
  finally:
    if fault is _hang:
      victim.binary.resume()
  assert raised.value.addresses == (victim.address,)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['sigint', 'sigterm'])
def test_worker_stops_its_binary_on_signal(pool, signum):
  worker = pool[signal.Signals(signum).name.lower()].wait_serving()
  worker.proc.send_signal(signum)
  assert worker.proc.wait(timeout=15) == 0
  assert_gone([worker.binary])
  assert worker.log().rstrip().endswith('fedtff-worker: stopped')


def test_a_taken_port_gives_a_one_line_error(shared):
  result = subprocess.run(
      [sys.executable, '-m', 'fedtff.execution.worker', f'--port={shared[0].port}'], cwd=conftest.REPO_ROOT,
      capture_output=True, text=True, timeout=240, env=conftest.script_env(**QUIET))
  assert result.returncode == 1
  assert result.stderr.strip() == (
      f'fedtff-worker: error: cannot serve on port {shared[0].port}: it is already in use.')
