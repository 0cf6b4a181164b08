"""Benchmarks per-round client dataset creation for 3,400 clients over 200 rounds (docs/data.md).

  .venv/bin/python scripts/bench_data.py                        # every source and mode
  .venv/bin/python scripts/bench_data.py --sources=sqlite --modes=traced --rounds=50

EMNIST-shaped data (28x28 float pixels, 62 classes), in memory (`fedtff.data.from_arrays`) or as
a TFF SQLite file (`fedtff.data.load_tff_dataset`), shuffled, mapped and batched. Every round
samples --clients_per_round clients and builds their datasets eagerly, traced, or on the TFF
worker (`fedtff.research.bench_tools.dataset_round_fn`), timing them and the RSS; prints medians of the
first and last 20 rounds and their ratio (flat: near 1). A fresh process per source and mode.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

import collections
import itertools

from absl import flags
import numpy as np
import tensorflow as tf

from experiments import cli
import fedtff
from fedtff.research import bench_tools as bt

_SOURCES = flags.DEFINE_multi_enum('sources', ['arrays', 'sqlite'], ['arrays', 'sqlite'],
                                   'Where client data lives.')
_MODES = flags.DEFINE_multi_enum('modes', list(bt.DATASET_MODES), list(bt.DATASET_MODES),
                                 'How client datasets are built.')
_CLIENTS = flags.DEFINE_integer('clients', 3400, 'Clients in the federated dataset.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 50, 'Clients sampled per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 200, 'Rounds to run.')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 10, 'Examples per client.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the data and the client sampling.')
_FEED = flags.DEFINE_enum('feed', 'file', ['file', 'constants'],
                          "How TFF gets from_arrays' rows (fedtff.data.from_arrays(feed=...)).")
WINDOW = 20


def client_data(source, directory):
  """`(ClientData, element_fn)` of the source's raw clients."""
  pixels, labels = bt.random_arrays(_CLIENTS.value * _EXAMPLES.value, (28, 28), 62, seed=_SEED.value)
  if source == 'arrays':
    add_channel = lambda e: collections.OrderedDict(x=tf.expand_dims(e['x'], -1), y=e['y'])
    return fedtff.data.from_arrays(pixels, labels, np.split(np.arange(len(labels)), _CLIENTS.value),
                                   feed=_FEED.value), add_channel
  example = lambda k: {'label': labels[k], 'pixels': pixels[k]}
  rows = itertools.chain((('all_train', f'writer{k // _EXAMPLES.value:05d}', example(k))
                          for k in range(len(labels))), [('all_test', 'writer00000', example(0))])
  fedtff.data.write_sql_client_data(os.path.join(directory, 'emnist_all.sqlite'), rows)
  return fedtff.data.load_tff_dataset('emnist_full', cache_dir=directory)[0], fedtff.data.emnist_map()


def run_one(source, mode):
  name = f'{source}/{mode}'
  spec = fedtff.data.ClientPreprocessing(batch_size=20, shuffle_buffer=10, shuffle_seed=_SEED.value)
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    data, element_fn = client_data(source, directory)
    data = data.preprocess(spec.build(element_fn))
    print(f'{name}: built ClientData for {len(data.client_ids)} clients in '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    run, records = bt.dataset_round_fn(data, mode), []
    for round_num in range(1, _ROUNDS.value + 1):
      create_s, iterate_s, batches = run(fedtff.sample_clients(
          data.client_ids, _PER_ROUND.value, round_num=round_num, seed=_SEED.value))
      records.append((create_s, iterate_s, bt.rss_bytes(children=mode == 'tff')))
      if round_num == 1 or round_num % 50 == 0:
        print(f'{name} round {round_num:4d}: {create_s * 1e3:7.1f} ms + {iterate_s * 1e3:7.1f} ms, '
              f'rss {records[-1][2] / bt.MIB:7.1f} MiB, {batches} batches', flush=True)
  print(f'{name}: {_CLIENTS.value} clients, {_PER_ROUND.value} per round, {_ROUNDS.value} rounds '
        f'(medians of the first and last {WINDOW} rounds)')
  create_s, iterate_s, rss = zip(*records)
  print(bt.window_ratio_line('create+iterate (worker)' if mode == 'tff' else 'dataset creation/round',
                             create_s, WINDOW, 1e3, 'ms'))
  if any(iterate_s):
    print(bt.window_ratio_line('iteration/round', iterate_s, WINDOW, 1e3, 'ms'))
  print(bt.window_ratio_line('resident memory', rss, WINDOW, 1 / bt.MIB, 'MiB'), flush=True)


def main(argv):
  del argv
  combinations = list(itertools.product(_SOURCES.value, _MODES.value))
  if len(combinations) == 1:
    return run_one(*combinations[0])
  shared = [f'--{f.name}={f.value}' for f in (_CLIENTS, _PER_ROUND, _ROUNDS, _EXAMPLES, _SEED, _FEED)]
  for source, mode in combinations:  # A fresh process each, so memory figures do not mix.
    subprocess.run([sys.executable, __file__, f'--sources={source}', f'--modes={mode}'] + shared,
                   check=True)


if __name__ == '__main__':
  cli.run(main, verbose=quiet_tf.VERBOSE)
