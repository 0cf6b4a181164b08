"""Benchmark: three ways of feeding `from_arrays` clients to a FedAvg round (docs/data.md).

  .venv/bin/python scripts/bench_feed.py --rounds 30        # 10x200, 50x200, 10x2000
  .venv/bin/python scripts/bench_feed.py --sizes 10x2000 --rounds 10

TFF's tutorial FedAvg, every client every round, on random pixels, from the same weights: python
(datasets built each round by `fedtff.data.client_dataset_fn`), constants (the runner's client-id
path, composed, feed='constants': rows embedded in the computation) and file (feed='file': rows
read from a file per client). Prints build time, the dataset computation's size, the first round
and the median s/round of the next --rounds rounds (paths in rotating order), a fresh TFF worker
per size, and checks that the three end with the same weights.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_federated as tff

import fedtff
from fedtff.research import bench_tools as bt

PATHS = ('python', 'constants', 'file')


def client_data(num_clients, num_examples, feed):
  return bt.random_client_data(num_clients, num_examples, feed=feed).preprocess(
      fedtff.data.ClientPreprocessing(batch_size=20).build())


def build_paths(num_clients, num_examples):
  """{path: (round_fn, build_s, dataset computation bytes, process)}; round_fn(state) -> state."""
  process = fedtff.build_fed_avg(
      bt.tutorial_model, client_data(num_clients, 1, 'file').element_type_structure,
      client_optimizer=fedtff.build_optimizer('sgd', bt.TUTORIAL_LEARNING_RATE))
  paths = {}
  start = time.perf_counter()
  python_data = client_data(num_clients, num_examples, 'file')
  dataset_fn = fedtff.data.client_dataset_fn(python_data)
  ids = python_data.client_ids
  paths['python'] = (lambda state: process.next(state, [dataset_fn(c) for c in ids]).state,
                     time.perf_counter() - start, None, process)
  for feed in ('constants', 'file'):
    start = time.perf_counter()
    data = client_data(num_clients, num_examples, feed)
    composed = tff.simulation.compose_dataset_computation_with_learning_process(
        data.dataset_computation, process)
    paths[feed] = (lambda state, composed=composed: composed.next(state, ids).state,
                   time.perf_counter() - start,
                   data.dataset_computation.to_building_block().proto.ByteSize(), composed)
  return paths


def bench_size(num_clients, num_examples, rounds):
  paths = build_paths(num_clients, num_examples)
  weights = paths['python'][3].get_model_weights(paths['python'][3].initialize())
  runs = {name: bt.Stateful(path[3].set_model_weights(path[3].initialize(), weights), path[0])
          for name, path in paths.items()}
  # The first round (compilation, first transfer) apart; each path runs first as often.
  times = bt.alternate(runs, rounds + 1, order='rotate')
  final = {name: paths[name][3].get_model_weights(runs[name].state).trainable for name in PATHS}
  difference = max(bt.max_abs_difference(final['python'], final[name]) for name in PATHS[1:])
  medians = bt.medians({name: t[1:] for name, t in times.items()})
  return {name: (paths[name][1], paths[name][2], times[name][0], medians[name])
          for name in PATHS}, difference


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', nargs='+', default=['10x200', '50x200', '10x2000'],
                      help='clients x examples per client')
  parser.add_argument('--rounds', type=int, default=20, help='timed rounds after the first')
  args = parser.parse_args(argv)
  print(bt.machine_line())
  print('workload: FedAvg, Dense 784->10, batch 20, 1 epoch, all clients every round; '
        f'median of {args.rounds} rounds after the first, paths in rotating order')
  print(bt.markdown_table(['clients x examples', 'path', 'build s', 'dataset computation bytes',
                           'first round s', 'median s/round', 'vs python', 'vs constants']))
  differences = []
  for size in args.sizes:
    num_clients, num_examples = (int(n) for n in size.split('x'))
    with fedtff.local_runtime():
      results, difference = bench_size(num_clients, num_examples, args.rounds)
    for name, (build_s, size_bytes, first_s, median_s) in results.items():
      print(bt.markdown_row([size, name, f'{build_s:.2f}', size_bytes or '-', f'{first_s:.2f}',
                             f'{median_s:.3f}', f'{median_s / results["python"][3]:.2f}',
                             f'{median_s / results["constants"][3]:.2f}']), flush=True)
    differences.append(f'{size} {difference:.1e}')
  print(f'largest weight difference from the python path after all rounds: {", ".join(differences)}')
  print(f'load average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main(sys.argv[1:])
