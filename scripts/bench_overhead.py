"""Benchmark: a fedtff-built FedAvg (or FedProx) process against the one built by hand in TFF.

Both processes run on the same clients (the TFF tutorial workload: Dense
784->10, batch 20, SGD 0.02) on the same fedtff-owned worker, alternating round
by round in ABBA order so that machine noise hits both alike. Prints the median seconds per
round of each and their ratio (fedtff / raw TFF).

With `--algorithm fedprox` it compares fedtff's FedProx client work (its own,
with the proximal term's sign corrected) against TFF 0.87's
`build_weighted_fed_prox`, mu = 1: the same work per step, opposite sign.

  .venv/bin/python scripts/bench_overhead.py [--clients 10] [--examples 200] [--rounds 30]
      [--algorithm fedavg|fedprox]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import fedtff


def keras_model():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                              tf.keras.layers.Dense(10)])


def client_datasets(num_clients, num_examples):
  rng = np.random.default_rng(0)
  return [tf.data.Dataset.from_tensor_slices((
      rng.uniform(size=(num_examples, 784)).astype(np.float32),
      rng.integers(0, 10, num_examples).astype(np.int32))).batch(20)
          for _ in range(num_clients)]


MU = 1.0


def raw_tff_process(element_spec, algorithm):
  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(), input_spec=element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
  client, server = tff.learning.optimizers.build_sgdm(0.02), tff.learning.optimizers.build_sgdm(1.0)
  if algorithm == 'fedprox':
    return tff.learning.algorithms.build_weighted_fed_prox(model_fn, MU, client, server)
  return tff.learning.algorithms.build_weighted_fed_avg(model_fn, client, server)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', type=int, default=10)
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--algorithm', choices=('fedavg', 'fedprox'), default='fedavg')
  args = parser.parse_args(argv)
  datasets = client_datasets(args.clients, args.examples)
  options = dict(proximal_strength=MU) if args.algorithm == 'fedprox' else {}
  processes = {
      'raw TFF': raw_tff_process(datasets[0].element_spec, args.algorithm),
      'fedtff': fedtff.build_learning_process(
          keras_model, datasets[0], algorithm=args.algorithm,
          client_optimizer=fedtff.build_optimizer('sgd', 0.02), **options),
  }
  states = {name: p.initialize() for name, p in processes.items()}
  times = {name: [] for name in processes}
  for round_num in range(args.rounds + 2):
    order = list(processes.items())
    if round_num % 2:  # ABBA order: neither process always runs right after the other.
      order.reverse()
    for name, process in order:
      start = time.perf_counter()
      states[name] = process.next(states[name], datasets).state
      if round_num >= 2:  # The first rounds include tracing and compilation.
        times[name].append(time.perf_counter() - start)
  medians = {name: statistics.median(t) for name, t in times.items()}
  print(f'workload: {args.algorithm}, {args.clients} clients x {args.examples} examples, Dense 784->10, '
        f'batch 20; {args.rounds} alternating rounds each')
  for name, median in medians.items():
    print(f'{name:8s} median {median:.4f} s/round')
  print(f"ratio fedtff / raw TFF: {medians['fedtff'] / medians['raw TFF']:.3f}")


if __name__ == '__main__':
  main(sys.argv[1:])
