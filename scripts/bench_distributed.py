"""Benchmark: seconds per FedAvg round on 1, 2 and 3 fedtff workers.

The workload is small on purpose: Dense 784->10, 100 synthetic examples per
client built on the workers from the client id (stateless random, so no data
crosses the wire), batch 20, one local epoch. For each number of clients per
round, every configuration (fedtff's local runtime, and `remote_runtime` over
1, 2 and 3 workers) runs its rounds interleaved with the others, in rotating
order, after two warm-up rounds each, so machine noise hits all alike. Prints
a markdown table of medians, with the CPU seconds the workers and the trainer
spent per round.

  .venv/bin/python scripts/bench_distributed.py [--clients 50,200] [--rounds 10]
  .venv/bin/python scripts/bench_distributed.py --workers 10.231.7.11:8000,10.231.7.12:8000

Without --workers it starts three TFF workers on loopback and stops them at
the end; with --workers it uses running ones (`python -m fedtff.worker`), on
subsets of 1..N of them, and reports no worker CPU.
"""

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import psutil
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import distributed
from fedtff import runtime

WARMUP_ROUNDS = 2
NUM_EXAMPLES, BATCH_SIZE = 100, 20


def keras_model():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                              tf.keras.layers.Dense(10)])


@tff.tensorflow.computation(tf.string)
def synthetic_client(client_id):
  """100 random 784-pixel examples and labels, a function of the id alone."""
  seed = tf.stack([tf.strings.to_hash_bucket_fast(client_id, 2**31 - 1), tf.constant(0, tf.int64)])
  pixels = tf.random.stateless_uniform((NUM_EXAMPLES, 784), seed=seed)
  labels = tf.random.stateless_uniform((NUM_EXAMPLES,), seed=seed + 1, minval=0, maxval=10,
                                       dtype=tf.int32)
  return tf.data.Dataset.from_tensor_slices(
      collections.OrderedDict(x=pixels, y=labels)).batch(BATCH_SIZE)


def composed_process():
  element_spec = collections.OrderedDict(x=tf.TensorSpec((None, 784), tf.float32),
                                         y=tf.TensorSpec((None,), tf.int32))
  process = fedtff.build_fed_avg(keras_model, element_spec,
                                 client_optimizer=fedtff.build_optimizer('sgd', 0.02))
  return tff.simulation.compose_dataset_computation_with_learning_process(
      synthetic_client, process)


class Config:
  """One runtime configuration: its TFF context, state and timings."""

  def __init__(self, name, context, workers, process):
    self.name, self.context, self.workers = name, context, workers
    with self._installed():
      self.state = process.initialize()
    self.seconds, self.worker_cpu, self.trainer_cpu = [], [], []

  def _installed(self):
    return tff.framework.get_context_stack().install(self.context)

  def run_round(self, process, client_ids, timed: bool) -> None:
    cpu = _worker_cpu(self.workers)
    trainer = psutil.Process().cpu_times()
    start = time.perf_counter()
    with self._installed():
      self.state = process.next(self.state, client_ids).state
    if timed:
      self.seconds.append(time.perf_counter() - start)
      self.worker_cpu.append(_worker_cpu(self.workers) - cpu)
      now = psutil.Process().cpu_times()
      self.trainer_cpu.append(now.user + now.system - trainer.user - trainer.system)


def _worker_cpu(workers) -> float:
  times = [psutil.Process(w.pid).cpu_times() for w in workers if w is not None]
  return sum(t.user + t.system for t in times)


def run_interleaved(configs, process, client_ids, rounds: int) -> None:
  for round_num in range(WARMUP_ROUNDS + rounds):
    shift = round_num % len(configs)
    for config in configs[shift:] + configs[:shift]:
      config.run_round(process, client_ids, timed=round_num >= WARMUP_ROUNDS)


def _median(values) -> str:
  return f'{statistics.median(values):.3f}'


def print_table(results) -> None:
  print('| clients/round | runtime | median s/round | worker CPU s/round | trainer CPU s/round |')
  print('|---|---|---|---|---|')
  for num_clients, configs in results:
    for c in configs:
      worker_cpu = _median(c.worker_cpu) if all(w is not None for w in c.workers) else 'n/a'
      print(f'| {num_clients} | {c.name} | {_median(c.seconds)} | {worker_cpu} | '
            f'{_median(c.trainer_cpu)} |')


@contextlib.contextmanager
def workers_for(addresses):
  """(addresses, processes): the given workers, or three started on loopback."""
  if addresses:
    yield addresses, [None] * len(addresses)
    return
  started = [runtime.WorkerProcess().start() for _ in range(3)]
  try:
    yield [w.address for w in started], started
  finally:
    for worker in started:
      worker.stop()


def bench(num_clients: int, addresses, processes, rounds: int, connect_timeout_s: float):
  process = composed_process()
  client_ids = [f'client{i}' for i in range(num_clients)]
  with contextlib.ExitStack() as stack:
    local = stack.enter_context(fedtff.local_runtime())
    configs = [Config('local runtime (no split)', tff.framework.get_context_stack().current,
                      [local], process)]
    for k in range(1, len(addresses) + 1):
      context = stack.enter_context(
          distributed.remote_runtime(addresses[:k], connect_timeout_s=connect_timeout_s))
      configs.append(Config(f'remote, {k} worker{"s" * (k > 1)}', context, processes[:k],
                            process))
    run_interleaved(configs, process, client_ids, rounds)
  return configs


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', default='50,200', help='Clients per round, comma-separated.')
  parser.add_argument('--rounds', type=int, default=10, help='Timed rounds per configuration.')
  parser.add_argument('--workers', default='', help='Running workers, host:port,... '
                      '(default: start three on loopback).')
  parser.add_argument('--connect_timeout_s', type=float, default=60.0)
  args = parser.parse_args(argv)
  addresses = [a for a in args.workers.split(',') if a]
  print(f'workload: FedAvg, Dense 784->10, {NUM_EXAMPLES} synthetic examples per client built '
        f'on the worker, batch {BATCH_SIZE}, 1 epoch; {WARMUP_ROUNDS} warm-up + {args.rounds} '
        f'timed rounds per configuration, interleaved; {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f} at start')
  results = []
  with workers_for(addresses) as (addresses, processes):
    for num_clients in [int(c) for c in args.clients.split(',')]:
      results.append((num_clients, bench(num_clients, addresses, processes, args.rounds,
                                         args.connect_timeout_s)))
  print_table(results)
  print(f'load average at end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main(sys.argv[1:])
