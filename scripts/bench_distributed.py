"""Benchmark: seconds per FedAvg round on 1, 2 and 3 fedtff workers (docs/distributed.md).

Dense 784->10, 100 synthetic examples per client built on the workers from the client id (so no
data crosses the wire), batch 20, 1 epoch. Per number of clients per round, every configuration
(the local runtime, and `remote_runtime` over 1..N workers) runs its rounds interleaved with the
others in rotating order after two warm-up rounds each. Prints medians of s/round and of the CPU
seconds the workers and the trainer spent. Without --workers it starts three TFF workers on
loopback and stops them at the end; with --workers it uses running ones (`python -m
fedtff.execution.worker`) and reports no worker CPU.

  .venv/bin/python scripts/bench_distributed.py [--clients 50,200] [--rounds 10]
  .venv/bin/python scripts/bench_distributed.py --workers 10.231.7.11:8000,10.231.7.12:8000
"""

import argparse
import contextlib
import os
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.research import bench_tools as bt
from fedtff.execution import distributed

WARMUP_ROUNDS = 2
NUM_EXAMPLES, BATCH_SIZE = 100, 20


@tff.tensorflow.computation(tf.string)
def synthetic_client(client_id):
  """100 random 784-pixel examples and labels, a function of the id alone."""
  return bt.generated_examples(client_id, NUM_EXAMPLES, 784).batch(BATCH_SIZE)


def composed_process():
  spec = bt.generated_examples(tf.constant('0'), NUM_EXAMPLES, 784).batch(BATCH_SIZE).element_spec
  return tff.simulation.compose_dataset_computation_with_learning_process(synthetic_client, (
      fedtff.build_fed_avg(bt.tutorial_model, spec, client_optimizer=fedtff.build_optimizer('sgd', 0.02))))


def runtime_round(context, process, client_ids) -> bt.Stateful:
  """A round function of `process` on `client_ids`, run in the TFF `context`."""
  def step(state):
    with tff.framework.get_context_stack().install(context):
      return process.next(state, client_ids).state
  with tff.framework.get_context_stack().install(context):
    return bt.Stateful(process.initialize(), step)


def bench(num_clients: int, addresses, processes, rounds: int, connect_timeout_s: float):
  """`[(runtime, median s/round, worker CPU s/round or 'n/a', trainer CPU s/round)]`."""
  process, client_ids = composed_process(), [f'client{i}' for i in range(num_clients)]
  with contextlib.ExitStack() as stack:
    local = stack.enter_context(fedtff.local_runtime())
    runs = {'local runtime (no split)': bt.CpuMeter(
        runtime_round(tff.framework.get_context_stack().current, process, client_ids), [local])}
    for k in range(1, len(addresses) + 1):
      context = stack.enter_context(
          distributed.remote_runtime(addresses[:k], connect_timeout_s=connect_timeout_s))
      runs[f'remote, {k} worker{"s" * (k > 1)}'] = bt.CpuMeter(
          runtime_round(context, process, client_ids), processes[:k])
    times = bt.alternate(runs, rounds, warmup=WARMUP_ROUNDS, order='rotate')
  median = lambda values: f'{statistics.median(values[WARMUP_ROUNDS:]):.3f}'
  return [(name, f'{statistics.median(times[name]):.3f}',
           median(run.processes_s) if run.processes_s else 'n/a', median(run.own_s))
          for name, run in runs.items()]


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', default='50,200', help='Clients per round, comma-separated.')
  parser.add_argument('--rounds', type=int, default=10, help='Timed rounds per configuration.')
  parser.add_argument('--workers', default='', help='Running workers, host:port,...')
  parser.add_argument('--connect_timeout_s', type=float, default=60.0)
  args = parser.parse_args(argv)
  addresses = [a for a in args.workers.split(',') if a]
  print(f'workload: FedAvg, Dense 784->10, {NUM_EXAMPLES} synthetic examples per client built '
        f'on the worker, batch {BATCH_SIZE}, 1 epoch; {WARMUP_ROUNDS} warm-up + {args.rounds} '
        f'timed rounds per configuration, interleaved; {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f} at start')
  rows = []
  with bt.tff_workers(addresses) as (addresses, processes):
    for num_clients in [int(c) for c in args.clients.split(',')]:
      rows += [(num_clients,) + row for row in bench(num_clients, addresses, processes,
                                                     args.rounds, args.connect_timeout_s)]
  print(bt.markdown_table(['clients/round', 'runtime', 'median s/round', 'worker CPU s/round',
                           'trainer CPU s/round'], rows))
  print(f'load average at end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main(sys.argv[1:])
