"""Benchmark: the fast backend against TFF and against a hand-written round.

compare (default): FedAvg on the TFF tutorial workload (Dense 784->10, batch
20, one local epoch, client SGD 0.02, every client in every round) for 10x200,
50x200 and 10x2000 clients x examples. Per workload, one table row with the
median seconds per round of
  * fedtff TFF: `fedtff.build_fed_avg` composed with the ClientData's dataset
    computation, fed client ids (as the fedtff runner does);
  * raw TFF: `tff.learning.algorithms.build_weighted_fed_avg`, fed datasets;
  * fast: `fedtff.fast.build_fast_process` (XLA), and without XLA;
  * limit: a minimal hand-written whole-round `tf.function` over the same
    tensors (matmul, cross-entropy, SGD, weighted mean), with and without XLA.
All variants alternate round by round (ABBA order) after warm-up rounds, so
machine noise hits them alike.

scale: `fedtff.run_experiment` on each backend (config.backend), 10, 100 and
1000 clients per round sampled from a population of 3,400 clients of 30
examples (`npz_dir` files), on the quickstart's 64->64->10 MLP (FedAvgM, batch
10), each in a fresh subprocess: median seconds per round, RSS after round 2
and before the last round (memory over rounds), peak RSS of the Python process
plus its TFF worker, and a linear fit of time per round against clients per
round.

profile: where a TFF round's time goes (argument serialization, RPCs to the
TFF worker, execution, result deserialization) for raw TFF and fedtff TFF.

  .venv/bin/python scripts/bench.py [--mode compare|scale|profile|all] [--rounds 10]
      [--scale_rounds 200]
"""

import argparse
import collections
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import psutil
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.executors import value_serialization

import fedtff
from fedtff import fast

tf.get_logger().setLevel('ERROR')  # Each variant builds its own tf.functions: no retracing notes.

WORKLOADS = ((10, 200), (50, 200), (10, 2000))
BATCH_SIZE, LEARNING_RATE = 20, 0.02


def dense_model():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                              tf.keras.layers.Dense(10)])


def random_client_data(num_clients, num_examples, num_features, batch_size):
  """`(ClientData, batched ClientData)` of uniform features and 10 random labels."""
  rng = np.random.default_rng(0)
  total = num_clients * num_examples
  client_data = fedtff.data.from_arrays(
      rng.uniform(size=(total, num_features)).astype(np.float32),
      rng.integers(0, 10, total).astype(np.int32),
      np.array_split(np.arange(total), num_clients))
  return client_data, client_data.preprocess(lambda d: d.batch(batch_size))


# compare: one round function per variant; each returns after the round is done.

def fedtff_tff_round(batched):
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      batched.dataset_computation,
      fedtff.build_fed_avg(dense_model, batched.element_type_structure,
                           client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE)))
  return _stateful(process.initialize(), lambda s: process.next(s, batched.client_ids).state)


def raw_tff_round(batched):
  datasets = [batched.create_tf_dataset_for_client(i) for i in batched.client_ids]

  def model_fn():
    return tff.learning.models.from_keras_model(
        dense_model(), input_spec=datasets[0].element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])

  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, tff.learning.optimizers.build_sgdm(LEARNING_RATE),
      tff.learning.optimizers.build_sgdm(1.0))
  return _stateful(process.initialize(), lambda s: process.next(s, datasets).state)


def fast_round(batched, jit_compile):
  process = fast.build_fast_process(dense_model, batched.element_type_structure,
                                    client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE),
                                    jit_compile=jit_compile)
  padded = fast.PaddedClientData(batched, resident=True)
  ids = batched.client_ids
  return _stateful(process.initialize(), lambda s: process.next(s, padded.batches(ids)).state)


def limit_round(client_data, num_clients, num_examples, jit_compile):
  """A minimal whole-round FedAvg `tf.function` over eager tensors (full batches)."""
  shape = [num_clients, num_examples // BATCH_SIZE, BATCH_SIZE]
  rows = [client_data.create_tf_dataset_for_client(i).batch(num_examples).get_single_element()
          for i in client_data.client_ids]
  x = tf.reshape(tf.stack([r['x'] for r in rows]), shape + [784])
  y = tf.reshape(tf.stack([r['y'] for r in rows]), shape)

  @tf.function(jit_compile=jit_compile)
  def round_fn(kernel, bias):
    delta_kernel, delta_bias = tf.zeros_like(kernel), tf.zeros_like(bias)
    for c in tf.range(shape[0]):
      k, b = kernel, bias
      for j in tf.range(shape[1]):
        with tf.GradientTape() as tape:
          tape.watch([k, b])
          logits = tf.matmul(x[c, j], k) + b
          loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[c, j], logits))
        grad_k, grad_b = tape.gradient(loss, [k, b])
        k, b = k - LEARNING_RATE * grad_k, b - LEARNING_RATE * grad_b
      delta_kernel += float(num_examples) * (kernel - k)
      delta_bias += float(num_examples) * (bias - b)
    total = float(num_clients * num_examples)
    return kernel - delta_kernel / total, bias - delta_bias / total

  def run(state):
    state = round_fn(*state)
    state[0].numpy()
    return state

  return _stateful((tf.zeros([784, 10]), tf.zeros([10])), run)


def _stateful(state, step):
  """A no-argument round function that carries `state` from round to round."""
  box = [state]

  def run_round():
    box[0] = step(box[0])

  return run_round


def time_alternating(rounds_by_name, rounds, warmup):
  """Median seconds per round of each function, run in ABBA order after warm-up."""
  times = collections.defaultdict(list)
  for round_num in range(warmup + rounds):
    order = list(rounds_by_name.items())
    if round_num % 2:
      order.reverse()
    for name, run_round in order:
      start = time.perf_counter()
      run_round()
      if round_num >= warmup:
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(times[name]) for name in rounds_by_name}


def compare_workload(num_clients, num_examples, rounds, warmup):
  client_data, batched = random_client_data(num_clients, num_examples, 784, BATCH_SIZE)
  variants = {
      'fedtff TFF (ids)': fedtff_tff_round(batched),
      'raw TFF (datasets)': raw_tff_round(batched),
      'fast (XLA)': fast_round(batched, jit_compile=True),
      'fast (no XLA)': fast_round(batched, jit_compile=False),
      'limit': limit_round(client_data, num_clients, num_examples, jit_compile=False),
      'limit (XLA)': limit_round(client_data, num_clients, num_examples, jit_compile=True),
  }
  return time_alternating(variants, rounds, warmup)


def run_compare(args):
  print(f'compare: FedAvg, Dense 784->10, batch {BATCH_SIZE}, 1 epoch, SGD {LEARNING_RATE}, '
        f'all clients every round; median s/round of {args.rounds} alternating rounds after '
        f'{args.warmup} warm-up rounds')
  header = None
  for num_clients, num_examples in WORKLOADS:
    medians = compare_workload(num_clients, num_examples, args.rounds, args.warmup)
    if header is None:
      header = list(medians)
      print('| clients x examples | ' + ' | '.join(header)
            + ' | raw TFF / fast | fast / best limit |')
      print('|---' * (len(header) + 3) + '|')
    best_limit = min(medians['limit'], medians['limit (XLA)'])
    print(f'| {num_clients}x{num_examples} | '
          + ' | '.join(f'{medians[name]:.4f}' for name in header)
          + f" | {medians['raw TFF (datasets)'] / medians['fast (XLA)']:.1f}x"
          + f" | {medians['fast (XLA)'] / best_limit:.2f} |", flush=True)


# scale: the experiment runner on each backend; each (backend, clients per round) in
# its own process, for a clean peak RSS.

SCALE_COHORTS = (10, 100, 1000)
SCALE_POPULATION, SCALE_TEST_CLIENTS, SCALE_EXAMPLES = 3400, 10, 30


def _rss_bytes(process):
  """The RSS of `process` plus its children (the TFF worker)."""
  total = 0
  for member in [process] + process.children(recursive=True):
    try:
      total += member.memory_info().rss
    except psutil.Error:
      pass
  return total


class PeakRss:
  """Samples the RSS of this process plus its children (the TFF worker)."""

  def __init__(self, interval_s=0.02):
    self.peak_bytes = 0
    self._interval_s = interval_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    me = psutil.Process()
    while not self._stop.is_set():
      self.peak_bytes = max(self.peak_bytes, _rss_bytes(me))
      self._stop.wait(self._interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def write_scale_clients(directory):
  """The population plus the test clients, SCALE_EXAMPLES examples each, as
  `<id>.npz` files (64 standard-normal features, 10 random labels)."""
  rng = np.random.default_rng(0)
  for k in range(SCALE_POPULATION + SCALE_TEST_CLIENTS):
    np.savez(os.path.join(directory, f'{k:05d}.npz'),
             x=rng.normal(size=(SCALE_EXAMPLES, 64)).astype(np.float32),
             y=rng.integers(0, 10, SCALE_EXAMPLES).astype(np.int32))


def scale_config(backend, data_dir, clients_per_round, rounds):
  """configs/quickstart.py's model, batches and FedAvgM on the clients in `data_dir`;
  one evaluation and one checkpoint, after the last round."""
  config = fedtff.config.base_config()  # mlp (64,), batch 10, client SGD 0.1, server SGD 1.0.
  config.backend = backend
  config.data.dataset, config.data.path = 'npz_dir', data_dir
  config.data.num_test_clients = SCALE_TEST_CLIENTS
  config.server.momentum = 0.9
  config.clients_per_round = clients_per_round
  config.total_rounds = config.rounds_per_eval = config.rounds_per_checkpoint = rounds
  config.output.tensorboard = False
  return config


def scale_worker(backend, clients_per_round, rounds, data_dir):
  """Runs `fedtff.run_experiment`; prints its round times and RSS as one JSON line."""
  me, per_round = psutil.Process(), []
  with PeakRss() as rss, tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    fedtff.run_experiment(
        scale_config(backend, data_dir, clients_per_round, rounds), workdir,
        progress_fn=lambda row: per_round.append((row['round_time_s'], _rss_bytes(me))))
    wall_s = time.perf_counter() - start
  times = [seconds for seconds, _ in per_round]
  rss_mb = [rss_bytes / 2**20 for _, rss_bytes in per_round]
  # RSS after round 2 and before the last round's evaluation.
  print(json.dumps(dict(first_s=times[0], median_s=statistics.median(times[1:]),
                        rss_early_mb=rss_mb[1], rss_late_mb=rss_mb[max(1, len(rss_mb) - 2)],
                        peak_mb=rss.peak_bytes / 2**20, wall_s=wall_s)))


def scale_rounds(backend, clients_per_round, rounds):
  """`rounds` on fast; on TFF as many rounds of 10 clients, at least 3 rounds."""
  return rounds if backend == 'fast' else max(3, rounds * 10 // clients_per_round)


def _scale_run(backend, clients_per_round, rounds, data_dir):
  command = [sys.executable, __file__, '--scale_worker', backend, str(clients_per_round),
             str(rounds), data_dir]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def run_scale(args):
  print(f'scale: fedtff.run_experiment, FedAvgM, MLP 64->64->10, batch 10, clients of '
        f'{SCALE_EXAMPLES} examples sampled from {SCALE_POPULATION} (npz_dir); median s/round '
        'after the first round; RSS = Python + TFF worker, after round 2 and before the last '
        'round (its evaluation), and the peak over the run')
  print('| clients/round | backend | rounds | first round s | median s/round | ms/client '
        '| RSS MB round 2 | RSS MB last round | RSS late / early | peak RSS MB | run wall s |')
  print('|---' * 11 + '|')
  medians = collections.defaultdict(dict)
  with tempfile.TemporaryDirectory() as data_dir:
    write_scale_clients(data_dir)
    for clients_per_round in SCALE_COHORTS:
      for backend in ('tff', 'fast'):
        rounds = scale_rounds(backend, clients_per_round, args.scale_rounds)
        r = _scale_run(backend, clients_per_round, rounds, data_dir)
        medians[backend][clients_per_round] = r['median_s']
        print(f"| {clients_per_round} | {backend} | {rounds} | {r['first_s']:.2f} "
              f"| {r['median_s']:.4f} | {1000 * r['median_s'] / clients_per_round:.3f} "
              f"| {r['rss_early_mb']:.0f} | {r['rss_late_mb']:.0f} "
              f"| {r['rss_late_mb'] / r['rss_early_mb']:.3f} | {r['peak_mb']:.0f} "
              f"| {r['wall_s']:.1f} |", flush=True)
  print('\nmarginal cost of a client (ms per added client per round, from the medians); '
        'linear growth means the two columns agree:')
  print('| backend | 10 -> 100 clients | 100 -> 1000 clients | ratio |')
  print('|---' * 4 + '|')
  for backend, t in medians.items():
    low, high = [1000 * (t[b] - t[a]) / (b - a) for a, b in zip(SCALE_COHORTS, SCALE_COHORTS[1:])]
    print(f'| {backend} | {low:.3f} | {high:.3f} | {high / low:.2f} |')
  print('\ntff / fast, median s/round: ' + ', '.join(
      f'{c} clients {medians["tff"][c] / medians["fast"][c]:.0f}x' for c in SCALE_COHORTS))


# profile: time spent in TFF's execution-context steps, by wrapping them.

class StepTimer:
  """Wraps TFF's value (de)serialization and worker RPCs to total their time."""

  STEPS = {'serialize_value': 'serialize arguments (Python)',
           'deserialize_value': 'deserialize results (Python)',
           'create_value': 'RPC create_value (send, worker loads)',
           'create_call': 'RPC create_call',
           'create_struct': 'RPC create_struct/selection',
           'create_selection': 'RPC create_struct/selection',
           'compute': 'RPC compute (worker executes, returns)'}

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self._depth = 0
    for name in ('serialize_value', 'deserialize_value'):  # As the remote executor calls them.
      setattr(value_serialization, name, self._timed(getattr(value_serialization, name), name))
    stub = tff.framework.RemoteExecutorGrpcStub
    for name in ('create_value', 'create_call', 'create_struct', 'create_selection', 'compute'):
      setattr(stub, name, self._timed(getattr(stub, name), name))

  def _timed(self, fn, name):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
      self._depth += 1
      start = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self._depth -= 1
        if self._depth == 0:  # Only the outermost call: serialization recurses.
          self.seconds[self.STEPS[name]] += time.perf_counter() - start
    return timed


def profile_steps(timer, run_round, rounds, warmup):
  """Mean seconds per round in each of `timer`'s steps, the rest, and the total."""
  for _ in range(warmup):
    run_round()
  timer.seconds.clear()
  start = time.perf_counter()
  for _ in range(rounds):
    run_round()
  total = time.perf_counter() - start
  steps = dict(timer.seconds)
  steps['other (Python, asyncio, type checks)'] = total - sum(steps.values())
  steps['total'] = total
  return {step: seconds / rounds for step, seconds in steps.items()}


def run_profile(args):
  timer = StepTimer()
  print('profile: where a TFF round goes, FedAvg, Dense 784->10 '
        f'(seconds per round, mean of {args.rounds} rounds after {args.warmup} warm-up)')
  columns = {}
  for num_clients, num_examples in (WORKLOADS[0], WORKLOADS[2]):
    _, batched = random_client_data(num_clients, num_examples, 784, BATCH_SIZE)
    workload = f'{num_clients}x{num_examples}'
    columns[f'{workload} raw TFF'] = profile_steps(timer, raw_tff_round(batched), args.rounds,
                                                   args.warmup)
    columns[f'{workload} fedtff TFF (ids)'] = profile_steps(timer, fedtff_tff_round(batched),
                                                            args.rounds, args.warmup)
  steps = list(dict.fromkeys(step for column in columns.values() for step in column))
  steps.append(steps.pop(steps.index('total')))
  print('| step | ' + ' | '.join(columns) + ' |')
  print('|---' * (len(columns) + 1) + '|')
  for step in steps:
    print(f'| {step} | ' + ' | '.join(f'{c.get(step, 0.0):.4f}' for c in columns.values()) + ' |')


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mode', choices=('compare', 'scale', 'profile', 'all'), default='compare')
  parser.add_argument('--rounds', type=int, default=10, help='timed rounds per variant')
  parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
  parser.add_argument('--scale_rounds', type=int, default=200,
                      help='scale: rounds on fast, and on TFF at 10 clients/round (fewer at '
                      'more clients per round, at least 3)')
  parser.add_argument('--scale_worker', nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.scale_worker:
    backend, clients_per_round, rounds, data_dir = args.scale_worker
    scale_worker(backend, int(clients_per_round), int(rounds), data_dir)
    return
  for mode, run in (('compare', run_compare), ('scale', run_scale), ('profile', run_profile)):
    if args.mode in (mode, 'all'):
      run(args)


if __name__ == '__main__':
  main(sys.argv[1:])
