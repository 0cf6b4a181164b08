"""Benchmarks per-round client dataset creation for 3,400 clients over 200 rounds.

  .venv/bin/python scripts/bench_data.py                        # every source and mode
  .venv/bin/python scripts/bench_data.py --sources=sqlite --modes=traced --rounds=50

Builds EMNIST-shaped federated data (28x28 float pixels, 62 classes) with
--clients clients, either in memory (`fedtff.data.from_arrays`) or as a TFF
SQLite file read by `fedtff.data.load_tff_dataset`, preprocessed with
`ClientPreprocessing` (shuffle, map, batch). Every round samples
--clients_per_round clients and builds their datasets one of three ways:

* eager: `client_data.create_tf_dataset_for_client(id)`, TFF's Python path;
* traced: `fedtff.data.client_dataset_fn(client_data)(id)`, traced once;
* tff: `client_data.dataset_computation` inside a federated computation that
  counts each client's batches on fedtff's TFF worker (arrays: read from
  one file per client, or with --feed=constants embedded in the computation).

It times creation and iteration per round (one figure for tff, where both
happen in the worker; the other modes iterate in one traced `tf.function`, as
training does, since a Python `for` loop over a dataset adds TF's own eager
iterator costs) and records resident memory (the worker's included for
tff), then prints the medians of the first and last 20 rounds and their ratio:
flat is a ratio near 1. Each source and mode runs in a fresh process.
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
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from experiments import cli
import fedtff

_SOURCES = flags.DEFINE_multi_enum('sources', ['arrays', 'sqlite'], ['arrays', 'sqlite'],
                                   'Where client data lives.')
_MODES = flags.DEFINE_multi_enum('modes', ['eager', 'traced', 'tff'], ['eager', 'traced', 'tff'],
                                 'How client datasets are built.')
_CLIENTS = flags.DEFINE_integer('clients', 3400, 'Clients in the federated dataset.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 50, 'Clients sampled per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 200, 'Rounds to run.')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 10, 'Examples per client.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the data and the client sampling.')
_FEED = flags.DEFINE_enum('feed', 'file', ['file', 'constants'],
                          "How TFF gets from_arrays' rows (fedtff.data.from_arrays(feed=...)).")
WINDOW = 20


def _pixels_and_labels(num_examples, seed):
  rng = np.random.default_rng(seed)
  return rng.uniform(size=(num_examples, 28, 28)).astype(np.float32), rng.integers(0, 62, num_examples)


def _add_channel(element):
  return collections.OrderedDict(x=tf.expand_dims(element['x'], -1), y=element['y'])


def arrays_client_data(directory):
  del directory  # In memory.
  pixels, labels = _pixels_and_labels(_CLIENTS.value * _EXAMPLES.value, _SEED.value)
  partition = np.split(np.arange(len(labels)), _CLIENTS.value)
  return fedtff.data.from_arrays(pixels, labels, partition, feed=_FEED.value), _add_channel


def sqlite_client_data(directory):
  pixels, labels = _pixels_and_labels(_CLIENTS.value * _EXAMPLES.value, _SEED.value)
  train = (('all_train', f'writer{k // _EXAMPLES.value:05d}',
            {'label': labels[k], 'pixels': pixels[k]}) for k in range(len(labels)))
  test = [('all_test', 'writer00000', {'label': labels[0], 'pixels': pixels[0]})]
  path = os.path.join(directory, 'emnist_all.sqlite')
  if not os.path.exists(path):
    fedtff.data.write_sql_client_data(path, itertools.chain(train, test))
  train, _ = fedtff.data.load_tff_dataset('emnist_full', cache_dir=directory)
  return train, fedtff.data.emnist_map()


def _resident_bytes(with_children):
  process = psutil.Process()
  processes = [process] + (process.children(recursive=True) if with_children else [])
  return sum(p.memory_info().rss for p in processes)


def python_round_fn(client_data, traced):
  """Builds the cohort's datasets in Python, then counts their batches in a `tf.function`."""
  dataset_fn = (fedtff.data.client_dataset_fn(client_data) if traced
                else client_data.create_tf_dataset_for_client)
  num_batches = tf.function(lambda dataset: dataset.reduce(np.int64(0), lambda count, _: count + 1))

  def run(cohort):
    start = time.perf_counter()
    datasets = [dataset_fn(c) for c in cohort]
    created = time.perf_counter()
    batches = sum(int(num_batches(dataset)) for dataset in datasets)
    return created - start, time.perf_counter() - created, batches

  return run


def tff_round_fn(client_data):
  """Builds the cohort's datasets from ids in the TFF worker and counts their batches."""

  @tff.tensorflow.computation(client_data.dataset_computation.type_signature.result)
  def num_batches(dataset):
    return dataset.reduce(np.int64(0), lambda count, _: count + 1)

  @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
  def count(client_ids):
    datasets = tff.federated_map(client_data.dataset_computation, client_ids)
    return tff.federated_sum(tff.federated_map(num_batches, datasets))

  def run(cohort):
    start = time.perf_counter()
    batches = count(cohort)
    return time.perf_counter() - start, 0.0, int(batches)

  return run


def _ratio_line(name, values, scale, unit):
  first, last = np.median(values[:WINDOW]) * scale, np.median(values[-WINDOW:]) * scale
  return (f'  {name:<22} first {WINDOW}: {first:8.1f} {unit}   last {WINDOW}: {last:8.1f} {unit}'
          f'   ratio {last / first:.3f}')


def report(name, records):
  create_s, iterate_s, rss = (np.array(column) for column in zip(*records))
  print(f'{name}: {_CLIENTS.value} clients, {_PER_ROUND.value} per round, {_ROUNDS.value} rounds '
        f'(medians of the first and last {WINDOW} rounds)')
  label = 'create+iterate (worker)' if name.endswith('tff') else 'dataset creation/round'
  print(_ratio_line(label, create_s, 1e3, 'ms'))
  if iterate_s.any():
    print(_ratio_line('iteration/round', iterate_s, 1e3, 'ms'))
  print(_ratio_line('resident memory', rss, 2.0**-20, 'MiB'), flush=True)


def bench(name, client_data, mode):
  run = tff_round_fn(client_data) if mode == 'tff' else python_round_fn(client_data, mode == 'traced')
  records = []
  for round_num in range(1, _ROUNDS.value + 1):
    cohort = fedtff.sample_clients(client_data.client_ids, _PER_ROUND.value,
                                   round_num=round_num, seed=_SEED.value)
    create_s, iterate_s, batches = run(cohort)
    records.append((create_s, iterate_s, _resident_bytes(mode == 'tff')))
    if round_num == 1 or round_num % 50 == 0:
      print(f'{name} round {round_num:4d}: {create_s * 1e3:7.1f} ms + {iterate_s * 1e3:7.1f} ms, '
            f'rss {records[-1][2] / 2**20:7.1f} MiB, {batches} batches', flush=True)
  report(name, records)


def run_one(source, mode):
  spec = fedtff.data.ClientPreprocessing(batch_size=20, shuffle_buffer=10, shuffle_seed=_SEED.value)
  builders = {'arrays': arrays_client_data, 'sqlite': sqlite_client_data}
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    client_data, element_fn = builders[source](directory)
    client_data = client_data.preprocess(spec.build(element_fn))
    print(f'{source}/{mode}: built ClientData for {len(client_data.client_ids)} clients in '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    bench(f'{source}/{mode}', client_data, mode)


def main(argv):
  del argv
  combinations = list(itertools.product(_SOURCES.value, _MODES.value))
  if len(combinations) == 1:
    run_one(*combinations[0])
    return
  shared = [f'--{flag.name}={flag.value}'
            for flag in (_CLIENTS, _PER_ROUND, _ROUNDS, _EXAMPLES, _SEED, _FEED)]
  for source, mode in combinations:  # A fresh process each, so memory figures do not mix.
    subprocess.run([sys.executable, __file__, f'--sources={source}', f'--modes={mode}'] + shared,
                   check=True)


if __name__ == '__main__':
  cli.run(main, verbose=quiet_tf.VERBOSE)
