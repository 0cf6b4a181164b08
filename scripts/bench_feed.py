"""Benchmark: three ways of feeding `from_arrays` clients to a FedAvg round.

  .venv/bin/python scripts/bench_feed.py --rounds 30        # 10x200, 50x200, 10x2000
  .venv/bin/python scripts/bench_feed.py --sizes 10x2000 --rounds 10

Workload: the TFF tutorial FedAvg (Dense 784->10, batch 20, one epoch, client
SGD 0.02), every client in every round, on uniform random pixels. For each
size (clients x examples per client) it builds one `from_arrays` `ClientData`
per feed and runs three processes from the same initial weights:

* python: `process.next(state, datasets)`, the datasets built in Python each
  round by `fedtff.data.client_dataset_fn` (traced once) and serialized into
  the call by TFF;
* constants: the runner's client-id path,
  `compose_dataset_computation_with_learning_process(client_data.dataset_computation,
  process)`, with `feed='constants'` (every row embedded in the computation,
  as before);
* file: the same with `feed='file'` (each client's rows read from its own
  file, written once).

It prints the time to build each path's computation (tracing the dataset
computation, writing the files, composing), the serialized size of the dataset
computation, the first round (compilation and first transfer), then the
median seconds per round of the next --rounds rounds. The three paths run in
turn every round, in an order that rotates from round to round, so machine
noise hits them alike. Each size gets a fresh TFF worker. At the end it checks
that the three give the same weights.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import fedtff

PATHS = ('python', 'constants', 'file')


def keras_model():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                              tf.keras.layers.Dense(10)])


def client_data(num_clients, num_examples, feed):
  rng = np.random.default_rng(0)
  pixels = rng.uniform(size=(num_clients * num_examples, 784)).astype(np.float32)
  labels = rng.integers(0, 10, num_clients * num_examples)
  partition = np.split(np.arange(len(labels)), num_clients)
  return fedtff.data.from_arrays(pixels, labels, partition, feed=feed).preprocess(
      fedtff.data.ClientPreprocessing(batch_size=20).build())


def _proto_bytes(computation):
  return computation.to_building_block().proto.ByteSize()


def build_paths(num_clients, num_examples):
  """{path: (round_fn, build_s, dataset computation bytes, process)}; round_fn(state) -> state."""
  process = fedtff.build_fed_avg(
      keras_model, client_data(num_clients, 1, 'file').element_type_structure,
      client_optimizer=fedtff.build_optimizer('sgd', 0.02))
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
    build_s = time.perf_counter() - start
    paths[feed] = (lambda state, composed=composed: composed.next(state, ids).state,
                   build_s, _proto_bytes(data.dataset_computation), composed)
  return paths


def bench_size(num_clients, num_examples, rounds):
  paths = build_paths(num_clients, num_examples)
  initial = paths['python'][3].initialize()
  weights = paths['python'][3].get_model_weights(initial)
  states = {name: path[3].set_model_weights(path[3].initialize(), weights)
            for name, path in paths.items()}
  first, times = {}, {name: [] for name in PATHS}
  for round_num in range(rounds + 1):
    shift = round_num % len(PATHS)  # Rotate the order: each path runs first as often.
    for name in PATHS[shift:] + PATHS[:shift]:
      start = time.perf_counter()
      states[name] = paths[name][0](states[name])
      elapsed = time.perf_counter() - start
      if round_num == 0:
        first[name] = elapsed
      else:
        times[name].append(elapsed)
  final = {name: tf.nest.flatten(paths[name][3].get_model_weights(states[name]).trainable)
           for name in PATHS}
  difference = max(float(np.max(np.abs(a - b))) for name in PATHS[1:]
                   for a, b in zip(final['python'], final[name]))
  medians = {name: statistics.median(t) for name, t in times.items()}
  return {name: (paths[name][1], paths[name][2], first[name], medians[name]) for name in PATHS}, difference


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', nargs='+', default=['10x200', '50x200', '10x2000'],
                      help='clients x examples per client')
  parser.add_argument('--rounds', type=int, default=20, help='timed rounds after the first')
  args = parser.parse_args(argv)
  print(f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, '
        f'{platform.machine()}, Python {platform.python_version()}, TF {tf.__version__}, '
        f'TFF {tff.__version__}; load average {os.getloadavg()[0]:.1f}')
  print('workload: FedAvg, Dense 784->10, batch 20, 1 epoch, all clients every round; '
        f'median of {args.rounds} rounds after the first, paths in rotating order')
  print('| clients x examples | path | build s | dataset computation bytes | first round s '
        '| median s/round | vs python | vs constants |')
  print('|---|---|---|---|---|---|---|---|')
  differences = []
  for size in args.sizes:
    num_clients, num_examples = (int(n) for n in size.split('x'))
    with fedtff.local_runtime():
      results, difference = bench_size(num_clients, num_examples, args.rounds)
    for name, (build_s, size_bytes, first_s, median_s) in results.items():
      print(f'| {size} | {name} | {build_s:.2f} | {size_bytes if size_bytes else "-"} '
            f'| {first_s:.2f} | {median_s:.3f} | {median_s / results["python"][3]:.2f} '
            f'| {median_s / results["constants"][3]:.2f} |', flush=True)
    differences.append(f'{size} {difference:.1e}')
  print(f'largest weight difference from the python path after all rounds: {", ".join(differences)}')
  print(f'load average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main(sys.argv[1:])
