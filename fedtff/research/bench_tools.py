"""What the speed and memory benchmarks in scripts/bench*.py share.

Not to be confused with `fedtff.research.benchmarks`, which reruns the papers' suites.
The scripts are glue over these pieces:

* models: `tutorial_model`, the Dense 784->10 of TFF's FedAvg tutorial, and
  `mlp_model`, the quickstart's 64->64->10;
* synthetic clients: `random_arrays`, `random_client_data` (`from_arrays`),
  `random_datasets`, and `generated_population`, a `ClientData` of any number
  of clients whose examples are drawn from the client id when read, so it
  holds nothing but the ids;
* processes and rounds on the tutorial workload: `raw_tff_process` (built by
  hand from `tff.learning`), `fedtff_tff_round`, `raw_tff_round`, `compiled_round`
  and `limit_round`, a hand-written whole-round `tf.function`;
* timing: `alternate` runs several round functions in alternating order after
  warm-up rounds, so that machine noise hits all alike, and `StepTimer` adds up
  where a TFF round's time goes;
* memory and CPU: `rss_bytes`, `worker_rss_bytes`, `PeakRss`, `cpu_seconds`;
* TFF workers to run on: `tff_workers`;
* checkouts sharing one venv: `share_setup`, so that the quickstart benchmark's
  two checkouts both pass scripts/setup.sh's stamp check;
* runs in a fresh Python process (`run_in_subprocess`), for memory figures
  that do not mix: `scale_run` (`fedtff.run_experiment` on an `npz_dir`
  population) and `population_run` (the compiled engine's round loop over a
  generated population);
* client datasets built per round: `dataset_round_fn`;
* DP noise calibration (scripts/bench_calibration.py): `bisection_noise_multiplier`,
  the search fedtff used before, and `timed_calibration`, which counts the
  accountant evaluations of a calibration;
* reporting: `machine_line`, `markdown_table`, `markdown_row`, `max_abs_difference`,
  `window_ratio_line`.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import psutil
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.executors import value_serialization

import fedtff
from fedtff import compiled
from fedtff.execution import runtime
from fedtff.execution import site_data
from fedtff.execution import sites
from fedtff.privacy import accounting
from fedtff.runner import experiment

TUTORIAL_BATCH_SIZE, TUTORIAL_LEARNING_RATE = 20, 0.02  # TFF's FedAvg tutorial.
MIB = 2**20


# Models.

def tutorial_model() -> tf.keras.Model:
  """Dense 784->10, the model of TFF's FedAvg tutorial."""
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                              tf.keras.layers.Dense(10)])


def mlp_model() -> tf.keras.Model:
  """The quickstart's MLP: 64 features, one hidden layer of 64, 10 classes."""
  return fedtff.models.mlp((64,), 10, hidden_units=(64,))


# Synthetic clients.

def random_arrays(num_examples: int, feature_shape: Sequence[int], num_classes: int, *,
                  seed: int = 0, normal: bool = False):
  """`(features float32, labels int32)`: uniform (or standard normal) features,
  uniform labels."""
  rng = np.random.default_rng(seed)
  shape = (num_examples,) + tuple(feature_shape)
  features = rng.normal(size=shape) if normal else rng.uniform(size=shape)
  return features.astype(np.float32), rng.integers(0, num_classes, num_examples).astype(np.int32)


def random_client_data(num_clients: int, num_examples: int, *, num_features: int = 784,
                       feed: Optional[str] = None):
  """`num_clients` equal `from_arrays` clients of `random_arrays` (10 classes)."""
  features, labels = random_arrays(num_clients * num_examples, (num_features,), 10)
  options = {'feed': feed} if feed else {}
  return fedtff.data.from_arrays(features, labels,
                                 np.array_split(np.arange(len(labels)), num_clients), **options)


def random_datasets(num_clients: int, num_examples: int,
                    batch_size: int = TUTORIAL_BATCH_SIZE) -> List[tf.data.Dataset]:
  """Batched `(x, y)` datasets of random 784-pixel examples, one per client."""
  rng = np.random.default_rng(0)
  return [tf.data.Dataset.from_tensor_slices((
      rng.uniform(size=(num_examples, 784)).astype(np.float32),
      rng.integers(0, 10, num_examples).astype(np.int32))).batch(batch_size)
          for _ in range(num_clients)]


def generated_examples(client_id: tf.Tensor, num_examples: int, num_features: int,
                       num_classes: int = 10) -> tf.data.Dataset:
  """A client's `{'x', 'y'}` examples, drawn (stateless) from its id alone.

  Uniform features and labels; the seed is a hash of the id, so a client's
  examples are the same wherever and whenever they are built, and nothing is
  stored.
  """
  seed = tf.stack([tf.strings.to_hash_bucket_fast(client_id, 2**31 - 1), tf.constant(0, tf.int64)])
  features = tf.random.stateless_uniform((num_examples, num_features), seed=seed)
  labels = tf.random.stateless_uniform((num_examples,), seed=seed + 1, minval=0,
                                       maxval=num_classes, dtype=tf.int32)
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=features, y=labels))


def generated_population(num_clients: int, num_examples: int, num_features: int = 64):
  """A `ClientData` of `num_clients` clients ids '000000'... of `generated_examples`.

  It holds only the ids, so a run over it measures what the engine itself
  keeps per client of the population.
  """
  client_ids = [f'{k:06d}' for k in range(num_clients)]
  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      client_ids, lambda client_id: generated_examples(client_id, num_examples, num_features))


# Processes and round functions; each round function takes no argument and
# returns once the round is done.

class Stateful:
  """A no-argument round function that carries `state` through `step` each call."""

  def __init__(self, state: Any, step: Callable[[Any], Any]):
    self.state, self._step = state, step

  def __call__(self) -> None:
    self.state = self._step(self.state)


def raw_tff_process(element_spec: Any, *, algorithm: str = 'fedavg',
                    proximal_strength: float = 1.0):
  """The tutorial's weighted FedAvg (or FedProx) built with `tff.learning` alone."""
  def model_fn():
    return tff.learning.models.from_keras_model(
        tutorial_model(), input_spec=element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
  client = tff.learning.optimizers.build_sgdm(TUTORIAL_LEARNING_RATE)
  server = tff.learning.optimizers.build_sgdm(1.0)
  if algorithm == 'fedprox':
    return tff.learning.algorithms.build_weighted_fed_prox(model_fn, proximal_strength, client,
                                                           server)
  return tff.learning.algorithms.build_weighted_fed_avg(model_fn, client, server)


def fedtff_tff_round(batched) -> Callable[[], None]:
  """fedtff's FedAvg composed with `batched`'s dataset computation, fed client ids."""
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      batched.dataset_computation,
      fedtff.build_fed_avg(tutorial_model, batched.element_type_structure,
                           client_optimizer=fedtff.build_optimizer('sgd', TUTORIAL_LEARNING_RATE)))
  return Stateful(process.initialize(), lambda s: process.next(s, batched.client_ids).state)


def raw_tff_round(batched) -> Callable[[], None]:
  """`raw_tff_process` fed `batched`'s datasets."""
  datasets = [batched.create_tf_dataset_for_client(i) for i in batched.client_ids]
  process = raw_tff_process(datasets[0].element_spec)
  return Stateful(process.initialize(), lambda s: process.next(s, datasets).state)


def compiled_round(batched, *, jit_compile: bool) -> Callable[[], None]:
  """The compiled engine's FedAvg over all of `batched`'s clients, padded once."""
  process = compiled.build_compiled_process(
      tutorial_model, batched.element_type_structure,
      client_optimizer=fedtff.build_optimizer('sgd', TUTORIAL_LEARNING_RATE), jit_compile=jit_compile)
  padded = compiled.PaddedClientData(batched, resident=True)
  ids = batched.client_ids
  return Stateful(process.initialize(), lambda s: process.next(s, padded.batches(ids)).state)


def limit_round(client_data, num_clients: int, num_examples: int, *,
                jit_compile: bool) -> Callable[[], None]:
  """A minimal whole-round FedAvg `tf.function` over eager tensors (full batches).

  The tutorial's model, loss and SGD written out by hand (matmul,
  cross-entropy, a step per batch, the example-weighted mean of the updates):
  the least a whole round can cost in TensorFlow on this machine.
  """
  batch, rate = TUTORIAL_BATCH_SIZE, TUTORIAL_LEARNING_RATE
  shape = [num_clients, num_examples // batch, batch]
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
        k, b = k - rate * grad_k, b - rate * grad_b
      delta_kernel += float(num_examples) * (kernel - k)
      delta_bias += float(num_examples) * (bias - b)
    total = float(num_clients * num_examples)
    return kernel - delta_kernel / total, bias - delta_bias / total

  def run(state):
    state = round_fn(*state)
    state[0].numpy()
    return state

  return Stateful((tf.zeros([784, 10]), tf.zeros([10])), run)


DATASET_MODES = ('eager', 'traced', 'tff')


def dataset_round_fn(client_data, mode: str) -> Callable[[Sequence[str]], tuple]:
  """`cohort -> (creation s, iteration s, batches)`: builds the cohort's datasets, counts batches.

  `mode` is one of `DATASET_MODES`: 'eager' (`create_tf_dataset_for_client`, TFF's
  Python path) or 'traced' (`fedtff.data.client_dataset_fn`, traced once) build
  the datasets in Python and count their batches in a `tf.function` (as
  training iterates; a Python loop would add TF's eager iterator costs);
  'tff' builds and counts them from ids on the TFF worker
  (`dataset_computation` in a federated computation), one figure for both.
  """
  if mode == 'tff':
    @tff.tensorflow.computation(client_data.dataset_computation.type_signature.result)
    def num_batches(dataset):
      return dataset.reduce(np.int64(0), lambda count, _: count + 1)

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def count(client_ids):
      datasets = tff.federated_map(client_data.dataset_computation, client_ids)
      return tff.federated_sum(tff.federated_map(num_batches, datasets))

    def run_tff(cohort):
      start = time.perf_counter()
      batches = count(cohort)
      return time.perf_counter() - start, 0.0, int(batches)
    return run_tff
  dataset_fn = (fedtff.data.client_dataset_fn(client_data) if mode == 'traced'
                else client_data.create_tf_dataset_for_client)
  batches_of = tf.function(lambda dataset: dataset.reduce(np.int64(0), lambda count, _: count + 1))

  def run(cohort):
    start = time.perf_counter()
    datasets = [dataset_fn(c) for c in cohort]
    created = time.perf_counter()
    batches = sum(int(batches_of(dataset)) for dataset in datasets)
    return created - start, time.perf_counter() - created, batches
  return run


# Timing.

def alternate(round_fns: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: int = 0,
              order: str = 'abba') -> Dict[str, List[float]]:
  """Seconds of each of `rounds` timed rounds of every function, after `warmup`.

  Every round runs each function once. `order='abba'` reverses the order
  every other round (A B, B A, ...); `'rotate'` starts each round one
  function later (A B C, B C A, ...), so each runs first as often.
  """
  names = list(round_fns)
  times = {name: [] for name in names}
  for round_num in range(warmup + rounds):
    if order == 'abba':
      turn = names[::-1] if round_num % 2 else names
    else:
      shift = round_num % len(names)
      turn = names[shift:] + names[:shift]
    for name in turn:
      start = time.perf_counter()
      round_fns[name]()
      if round_num >= warmup:
        times[name].append(time.perf_counter() - start)
  return times


def medians(times: Mapping[str, Sequence[float]]) -> Dict[str, float]:
  return {name: statistics.median(values) for name, values in times.items()}


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

  def profile(self, run_round: Callable[[], None], rounds: int, warmup: int) -> Dict[str, float]:
    """Mean seconds per round in each step, the rest, and the total."""
    for _ in range(warmup):
      run_round()
    self.seconds.clear()
    start = time.perf_counter()
    for _ in range(rounds):
      run_round()
    total = time.perf_counter() - start
    steps = dict(self.seconds)
    steps['other (Python, asyncio, type checks)'] = total - sum(steps.values())
    steps['total'] = total
    return {step: seconds / rounds for step, seconds in steps.items()}


# Memory.

def rss_bytes(process: Optional[psutil.Process] = None, *, children: bool = True) -> int:
  """The RSS of `process` (default: this one), plus its children's (the TFF worker)."""
  process = process or psutil.Process()
  members = [process] + (process.children(recursive=True) if children else [])
  total = 0
  for member in members:
    try:
      total += member.memory_info().rss
    except psutil.Error:  # A child that just ended.
      pass
  return total


def worker_rss_bytes(name: str = 'worker_binary') -> int:
  """The RSS of this process's descendants called `name` (TFF's workers)."""
  total = 0
  for child in psutil.Process().children(recursive=True):
    try:
      total += child.memory_info().rss if child.name() == name else 0
    except psutil.Error:
      pass
  return total


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
  """The user plus system CPU seconds the processes have used."""
  return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


class CpuMeter:
  """Wraps a round function: records the CPU seconds of each call in `processes`
  (`processes_s`; empty if any is None, i.e. not a local process) and in this one (`own_s`)."""

  def __init__(self, round_fn: Callable[[], Any], processes: Sequence[Any]):
    self._round_fn = round_fn
    known = all(p is not None for p in processes)
    self._processes = [psutil.Process(p.pid) for p in processes] if known else []
    self.processes_s, self.own_s = [], []

  def __call__(self) -> None:
    me = [psutil.Process()]
    others, own = cpu_seconds(self._processes), cpu_seconds(me)
    self._round_fn()
    if self._processes:
      self.processes_s.append(cpu_seconds(self._processes) - others)
    self.own_s.append(cpu_seconds(me) - own)


class PeakRss:
  """Samples `rss_bytes()` in a thread while the block runs; `peak_bytes` is the largest.

  Call `sample()` for a reading that also counts towards the peak, so that no
  reported RSS can exceed the reported peak.
  """

  def __init__(self, interval_s: float = 0.02):
    self.peak_bytes = 0
    self._interval_s = interval_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def sample(self) -> int:
    """The RSS now, counted towards `peak_bytes`."""
    rss = rss_bytes()
    self.peak_bytes = max(self.peak_bytes, rss)
    return rss

  def _sample(self):
    while not self._stop.is_set():
      self.sample()
      self._stop.wait(self._interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


@contextlib.contextmanager
def tff_workers(addresses: Sequence[str]) -> Iterator[tuple]:
  """`(addresses, processes)`: the running workers at `addresses` (processes None),
  or three `fedtff.execution.runtime.WorkerProcess`es started on loopback and stopped after."""
  if addresses:
    yield list(addresses), [None] * len(addresses)
    return
  started = [runtime.WorkerProcess().start() for _ in range(3)]
  try:
    yield [w.address for w in started], started
  finally:
    for worker in started:
      worker.stop()


@contextlib.contextmanager
def listening_servers(commands: Sequence[Sequence[str]], log_dir: str,
                      timeout_s: float = 240.0) -> Iterator[List[subprocess.Popen]]:
  """Runs `python -m <command...>` for each command (e.g. `fedtff.execution.worker` or
  `fedtff.execution.site`), stderr to `log_dir/server<i>.log`, until each logs 'listening on';
  stops them all (SIGTERM, then SIGKILL after 30 s) on exit.

  Raises:
    RuntimeError: If one exits or is not listening within `timeout_s` (its log in the message).
  """
  procs, logs = [], []
  try:
    for i, command in enumerate(commands):
      logs.append(os.path.join(log_dir, f'server{i}.log'))
      with open(logs[-1], 'w') as log:
        procs.append(subprocess.Popen([sys.executable, '-m', *command], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=log))
    deadline = time.monotonic() + timeout_s
    for proc, log_path, command in zip(procs, logs, commands):
      while 'listening on' not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'{command[0]} did not start: {open(log_path).read()[-2000:]}')
        time.sleep(0.2)
    yield procs
  finally:
    for proc in procs:
      proc.terminate()
    for proc in procs:
      try:
        proc.wait(30)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def site_round_bytes(config, specs: Sequence[str]) -> int:
  """Bytes of the serialized round the trainer sends to the sites `specs` ('name=host:port')."""
  task = site_data.site_task(config, sites.federation(specs))
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      task.train_data.dataset_computation, experiment.build_process(config, task))
  return len(tff.framework.ConcreteComputation.get_proto(process.next).SerializeToString())


# scripts/setup.sh installs unless the venv's stamp is the fingerprint of these files.
SETUP_FILES = ('setup.cfg', 'pyproject.toml', os.path.join('scripts', 'setup.sh'))


def share_setup(checkout: str, reference: str) -> List[str]:
  """Copies `reference`'s setup files over `checkout`'s where they differ; their names.

  Two checkouts running in one venv (scripts/bench_quickstart.py's "before"
  worktree and the working tree) then both find it up to date. Otherwise, when
  their setup files differ, scripts/setup.sh in each finds the other's stamp and
  reinstalls the pinned stack and fedtff (about 15 s of CPU) at every switch
  between them, and the last one leaves the venv's editable fedtff pointing at
  its checkout.
  """
  copied = []
  for name in SETUP_FILES:
    source, target = os.path.join(reference, name), os.path.join(checkout, name)
    with open(source, 'rb') as theirs, open(target, 'rb') as ours:
      if theirs.read() != ours.read():
        shutil.copy2(source, target)
        copied.append(name)
  return copied


# Runs in a fresh process.

def run_in_subprocess(function: str, *args: Any) -> Any:
  """`function(*args)` of this module run in a fresh Python; its JSON result.

  The function prints its result as one JSON line (its last line of output).

  Raises:
    RuntimeError: If the process fails, with the end of its standard error.
  """
  code = (f'import json, sys; from fedtff.research import bench_tools; '
          f'print(json.dumps(bench_tools.{function}(*json.loads(sys.argv[1]))))')
  command = [sys.executable, '-c', code, json.dumps(list(args))]
  result = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  if result.returncode:
    raise RuntimeError(f'{function}{tuple(args)} failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


SCALE_POPULATION, SCALE_TEST_CLIENTS, SCALE_EXAMPLES = 3400, 10, 30


def write_npz_population(directory: str, num_clients: int, num_examples: int) -> None:
  """`<id>.npz` files of `num_examples` examples each: 64 standard-normal
  features and 10 random labels."""
  rng = np.random.default_rng(0)
  for k in range(num_clients):
    np.savez(os.path.join(directory, f'{k:05d}.npz'),
             x=rng.normal(size=(num_examples, 64)).astype(np.float32),
             y=rng.integers(0, 10, num_examples).astype(np.int32))


def scale_config(engine: str, data_dir: str, clients_per_round: int, rounds: int):
  """configs/quickstart.py's model, batches and FedAvgM on the clients in `data_dir`;
  one evaluation and one checkpoint, after the last round."""
  config = fedtff.runner.config.base_config()  # mlp (64,), batch 10, client SGD 0.1, server SGD 1.0.
  config.engine = engine
  config.data.dataset, config.data.path = 'npz_dir', data_dir
  config.data.num_test_clients = SCALE_TEST_CLIENTS
  config.server.momentum = 0.9
  config.clients_per_round = clients_per_round
  config.total_rounds = config.rounds_per_eval = config.rounds_per_checkpoint = rounds
  config.output.tensorboard = False
  return config


def scale_run(engine: str, clients_per_round: int, rounds: int, data_dir: str) -> dict:
  """`fedtff.run_experiment` of `scale_config`: its round times and RSS (MB).

  RSS after round 2 and before the last round's evaluation, and the peak.
  """
  me, per_round = psutil.Process(), []
  with PeakRss() as rss, tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    fedtff.run_experiment(
        scale_config(engine, data_dir, clients_per_round, rounds), workdir,
        progress_fn=lambda row: per_round.append((row['round_time_s'], rss_bytes(me))))
    wall_s = time.perf_counter() - start
  times = [seconds for seconds, _ in per_round]
  rss_mb = [rss / MIB for _, rss in per_round]
  return dict(first_s=times[0], median_s=statistics.median(times[1:]),
              rss_early_mb=rss_mb[1], rss_late_mb=rss_mb[max(1, len(rss_mb) - 2)],
              peak_mb=rss.peak_bytes / MIB, wall_s=wall_s)


SCALE_HEADER = ('clients/round', 'engine', 'rounds', 'first round s', 'median s/round',
                'ms/client', 'RSS MB round 2', 'RSS MB last round', 'RSS late / early',
                'peak RSS MB', 'run wall s')


def scale_rounds(engine: str, clients_per_round: int, rounds: int) -> int:
  """`rounds` on compiled; on TFF as many client-rounds as 10 clients x `rounds`, at least 3 rounds."""
  return rounds if engine == 'compiled' else max(3, rounds * 10 // clients_per_round)


def scale_row(clients_per_round: int, engine: str, rounds: int, r: Mapping[str, float]) -> str:
  """The `SCALE_HEADER` row of a `scale_run` result `r`."""
  return markdown_row([
      clients_per_round, engine, rounds, f"{r['first_s']:.2f}", f"{r['median_s']:.4f}",
      f"{1000 * r['median_s'] / clients_per_round:.3f}", f"{r['rss_early_mb']:.0f}",
      f"{r['rss_late_mb']:.0f}", f"{r['rss_late_mb'] / r['rss_early_mb']:.3f}",
      f"{r['peak_mb']:.0f}", f"{r['wall_s']:.1f}"])


def population_run(num_clients: int, clients_per_round: int, rounds: int,
                   num_examples: int = 30, warmup: int = 2, seed: int = 0) -> dict:
  """The compiled engine's training loop over a `generated_population`.

  What `fedtff.run_experiment` runs each round with `engine='compiled'`: sample
  `clients_per_round` ids (`fedtff.sample_clients`), tag them with the round,
  read and pad their round's batches (`fedtff.data.RoundClientData` with the
  quickstart's preprocessing, batch 10 shuffled, through
  `fedtff.compiled.RoundBatches`) and run the compiled round (FedAvgM on
  `mlp_model`). Returns the setup seconds, the median seconds per round after
  `warmup` rounds, and the RSS (MB) after the warm-up, at the end and at its
  peak (this process and its children).
  """
  with PeakRss() as peak:
    start = time.perf_counter()
    spec = fedtff.data.ClientPreprocessing(batch_size=10, shuffle_buffer=100)
    train = fedtff.data.RoundClientData(generated_population(num_clients, num_examples),
                                        spec.build(), seed=seed)
    process = compiled.build_compiled_process(
        mlp_model, train.element_type_structure, algorithm='fedavgm',
        client_optimizer=fedtff.build_optimizer('sgd', 0.1),
        server_optimizer=fedtff.build_optimizer('sgd', 1.0, momentum=0.9))
    batches = compiled.RoundBatches(train, batch_size=10)
    state, ids = process.initialize(), train.client_ids
    setup_s, times = time.perf_counter() - start, []
    for round_num in range(1, warmup + rounds + 1):
      if round_num == warmup + 1:
        rss_warm = peak.sample()
      start = time.perf_counter()
      cohort = fedtff.sample_clients(ids, clients_per_round, round_num=round_num, seed=seed)
      state = process.next(state, batches.batches(round_num, cohort)).state
      times.append(time.perf_counter() - start)
    rss_end = peak.sample()
  return dict(setup_s=setup_s, median_s=statistics.median(times[warmup:]),
              rss_warm_mb=rss_warm / MIB, rss_end_mb=rss_end / MIB, peak_mb=peak.peak_bytes / MIB)


# Reporting.

# DP noise calibration.

def bisection_noise_multiplier(spends: Callable[[float], float], target_epsilon: float, *,
                               tolerance: float = accounting.DEFAULT_TOLERANCE) -> float:
  """`accounting.smallest_noise_multiplier` as it was until commit eb15f10: doubling
  from 1 until `spends(z) <= target_epsilon`, then bisection until the bracket is
  narrower than `tolerance`; one evaluation per step."""
  low, high = 0.0, 1.0
  while spends(high) > target_epsilon:
    low, high = high, 2 * high
  while high - low > tolerance:
    middle = (low + high) / 2
    low, high = (low, middle) if spends(middle) <= target_epsilon else (middle, high)
  return high


def timed_calibration(calibrate: Callable[[], float], modules: Sequence[Any]
                     ) -> Dict[str, Any]:
  """`{'z', 'seconds', 'evaluations', 'pld_guesses'}` of `calibrate()`.

  `evaluations` counts calls of `module.epsilon` (what the searches evaluate)
  for each of `modules`, patched for the call; `pld_guesses` counts the coarse
  PLD evaluations of `accounting.PLD_GUESS_DISCRETIZATIONS`. The caches of
  `accounting.round_pld` and the `noise_multiplier_for_epsilon`s are cleared
  first, so nothing is reused from an earlier calibration.
  """
  counts = collections.Counter()
  def counted(key, function):
    def wrapper(*args, **kwargs):
      counts[key if key != 'pld' else kwargs['interval']] += 1
      return function(*args, **kwargs)
    return wrapper
  originals = [(module, 'epsilon', module.epsilon) for module in modules]
  originals.append((accounting, '_pld_epsilon', accounting._pld_epsilon))  # pylint: disable=protected-access
  for module, name, function in originals:
    module_key = 'pld' if name == '_pld_epsilon' else 'epsilon'
    setattr(module, name, counted(module_key, function))
    calibration_fn = getattr(module, 'noise_multiplier_for_epsilon', None)
    if calibration_fn is not None:
      calibration_fn.cache_clear()
  accounting.round_pld.cache_clear()
  try:
    start = time.perf_counter()
    z = calibrate()
    seconds = time.perf_counter() - start
  finally:
    for module, name, function in originals:
      setattr(module, name, function)
  return dict(z=z, seconds=seconds, evaluations=counts['epsilon'],
              pld_guesses=sum(counts[i] for i in accounting.PLD_GUESS_DISCRETIZATIONS))


def machine_line() -> str:
  """When and where: UTC time, cores, machine, versions, load average."""
  return (f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, '
          f'{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, '
          f'TF {tf.__version__}, TFF {tff.__version__}; load average '
          f'{os.getloadavg()[0]:.1f}')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]] = ()) -> str:
  """A markdown table of `header` and `rows`; without rows, its first two lines."""
  return '\n'.join(['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
                   + [markdown_row(row) for row in rows])


def markdown_row(cells: Sequence[Any]) -> str:
  """One markdown table row of the cells, `str()`ed."""
  return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def max_abs_difference(a: Any, b: Any) -> float:
  """The largest absolute difference between two structures of arrays (e.g. model weights)."""
  return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b))), default=0.0)


def window_ratio_line(name: str, values: Sequence[float], window: int, scale: float,
                      unit: str) -> str:
  """The medians of the first and last `window` values (times `scale`) and their ratio."""
  first = float(np.median(values[:window])) * scale
  last = float(np.median(values[-window:])) * scale
  return (f'  {name:<22} first {window}: {first:8.1f} {unit}   last {window}: {last:8.1f} {unit}'
          f'   ratio {last / first:.3f}')
