"""Differential tests: the compiled engine against the TFF engine, over the option space.

For one combination (an experiment config), `check` builds both engines the
way the runner does (`fedtff.runner.experiment`: the same task, builder options and
sampled, round-tagged clients), shrunk for speed (`shrink`: few clients per
round, few examples per client, TFF's stand-in data for hosted datasets; the
config's algorithm, aggregator, weighting, schedule and model are kept),
starts both from the same initial state and runs `rounds` rounds. After each
round it compares every leaf of the TFF state (the compiled engine's state
converted with `to_tff_state`: weights, optimizer and aggregator state) and
every metric the TFF engine reports, value by value within `atol + rtol * |tff|`
(`allowed_difference`: `TOLERANCE` and `RELATIVE_TOLERANCE`, the form of
`np.isclose`). (Evaluation runs on TFF for both engines in the runner, so equal
weights give equal eval metrics.)

DP noise cannot be equal (TFF's DP aggregator draws its own noise), so a
noised DP config is compared as its noiseless twin (noise multiplier 0), and
each engine's noise is checked statistically: in round 1, from the same state
and clients, the noised minus the noiseless server weights under server SGD
(whose first step is `-lr * aggregate`) must have mean 0 and the standard
deviation `lr * z * C / m` of the Gaussian mechanism (McMahan et al., ICLR
2018, arXiv 1710.06963; with adaptive clipping `z` is the value share of the
noise, Andrew et al., NeurIPS 2021, arXiv 1905.03871), each within six
standard errors over the model's coordinates.

The distributed Skellam mean also rounds each client's rotated update at
random, with seeds neither engine shares, so its noiseless twin is compared
within `rounding_tolerance`: one quantization step `1/s` per rotated
coordinate, `sqrt(d') / s` in L2 a round, over the rounds run (or `tolerance`
if larger). Quantizing compression (TFF's `EncodedSumFactory`) also rounds at
random, unseeded, so a config that quantizes is compared as its unquantized
twin (the threshold above every tensor's size: the rest of the aggregator
compared within the tolerance), and each engine's round-1 rounding is checked
against its bound (`check_quantization`): one quantization step per client,
`sum_i step_i / sum_i w_i` per coordinate of the weighted mean, as
tests/test_compiled_quantize.py bounds the sums.

Dropout draws each engine's own unseeded masks too, so a model with dropout
layers (`fedtff.models.DROPOUT_MODELS`) is compared with the config key
`model.dropout=False` on both engines (`_twin`: the same model without its
dropout layers), and `check_dropout_rate` checks separately that with dropout
on, both engines drop activations at the layer's rate and scale the kept ones
by `1/(1-rate)` (Srivastava et al., JMLR 2014): a statement about the rate and
the scaling, not about equal masks.

Float32 rounding, amplified by a deep network over 3 rounds, can exceed the
tolerance although both engines do the same maths in a different order (other
kernels: the compiled round is XLA-compiled). So `check(..., dtype='float64')`
runs both engines with Keras' floatx set to float64 (`keras_floatx`): their
models, and with them the weights, gradients, optimizer states and aggregates,
are float64, and float64 values must agree within `FLOAT64_TOLERANCE`
(1e-9, plus `FLOAT64_RELATIVE_TOLERANCE` of TFF's value), 10^4 times tighter
than the float32 bar; what TFF keeps in float32 whatever the model (its `loss`
metric, hyperparameters) within the float32 tolerance. That decides whether the
maths is equal. The models of `FLOAT64_MODELS` (the ResNet-18 of
`reddi.py:cifar100_image`) are checked in float64 by default (`default_dtype`);
everything else in float32 at 1e-5 (docs/performance.md has both measurements).

Each combination ends as one `Outcome`: passed; failed (the largest
difference and where, or an exception raised while building or running
either engine, with its traceback); refused by the compiled engine (its
one-line reason, a `ConfigError` ending "use engine='tff'.": the engine's
remaining gaps); or invalid: refused by a validation step the runner runs
before building anything (`config_lib.validate`'s `ConfigError`, the task's
checks, the TFF builder's option checks `builder._check_options`), one line
naming the option. Nothing else is invalid: a TypeError, or any exception
from a build or a round, is a failure.
`shipped_combinations` enumerates configs/*.py and their variants,
`grid_combinations` algorithm x aggregator x weighting x schedule x model
kind. scripts/differential.py runs them; docs/performance.md has the tally.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import glob
import itertools
import json
import math
import os
import tempfile
import traceback as traceback_lib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.research import benchmarks
from fedtff.runner import client_states
from fedtff.runner import config as config_lib
from fedtff import data
from fedtff import models
from fedtff.runner import experiment
from fedtff import compiled
from fedtff.research import sweeps
from fedtff import tasks
from fedtff.runner import training
from fedtff.algorithms import builder
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from fedtff.privacy import ddp
from fedtff.privacy import mechanisms

# Values agree if |tff - compiled| <= TOLERANCE + RELATIVE_TOLERANCE * |tff| (`allowed_difference`).
# TOLERANCE is the 1e-5. RELATIVE_TOLERANCE admits float32 rounding of large values:
# 1e-6 is 8.4 ulps at the bottom of a binade (ulp 2^-23 of the value) and 16.8 at its top.
# Measured (docs/performance.md): reddi.py:stackoverflow_tag:fedadagrad's Adagrad preconditioner
# (values up to 87) differs between the engines by up to 5 ulps, 1.53e-5 (2 ulps) at 71.17, and
# each engine is within 4.7 ulps of a float64 NumPy reference, so they may differ by ~9 ulps (1.1e-6
# of the value). Below |tff| = 1 the tolerance stays within 1.1e-5; at 71.17 it is 8.1e-5.
TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 1e-6
# Float64 mode (`check(..., dtype='float64')`): both engines build their models in float64 (Keras
# floatx), so weights, gradients, optimizer states and aggregates are float64, and two engines
# doing the same maths in a different order differ by float64 rounding. Float64 values compare
# within `FLOAT64_TOLERANCE + FLOAT64_RELATIVE_TOLERANCE * |tff|`, far below TOLERANCE; values
# TFF keeps in float32 whatever the model (its `loss` metric, optimizer hyperparameters) within
# the float32 tolerance above.
FLOAT64_TOLERANCE = 1e-9
FLOAT64_RELATIVE_TOLERANCE = 1e-12
DTYPES = ('float32', 'float64')
# Models checked in float64 by default (`default_dtype`): deep enough that float32 rounding,
# amplified over 3 rounds, exceeds TOLERANCE although both engines do the same maths
# (docs/performance.md: reddi.py:cifar100_image's ResNet-18 differs by up to 1.7e-4 in float32).
FLOAT64_MODELS = ('resnet18_group_norm',)
ROUNDS = 3
PASSED, FAILED, REFUSED, INVALID = 'passed', 'failed', 'refused', 'invalid'
# The rates of the dropout layers of the shipped models (emnist_cnn's), probed by
# `check_dropout_rate`.
DROPOUT_RATES = (0.25, 0.5)
_USE_TFF = "use engine='tff'."
STATUSES = (PASSED, FAILED, REFUSED, INVALID)
# A statistic passes within this many standard errors.
NOISE_SIGMAS = 6.0
# The grid's model kinds: (dataset, model) on small data (hosted ones on TFF's stand-ins).
MODEL_KINDS = {'dense': ('digits', 'mlp'), 'conv': ('emnist_digits', 'fedavg_cnn'),
               'sequence': ('shakespeare', 'char_lstm')}
# The grid's aggregator settings per kind (fixed norms; DP with noise, so its std is checked).
GRID_AGGREGATORS = {
    'mean': {}, 'robust': {'aggregator.clip_norm': 0.5},
    'compression': {}, 'secure': {}, 'masking_simulation': {'aggregator.clip_norm': 1.0},
    'dp': {'aggregator.clip_norm': 0.5, 'aggregator.noise_multiplier': 1.0},
}


@dataclasses.dataclass(frozen=True)
class Combination:
  """One point of the option space: a name and its (unshrunk) config."""
  name: str
  config: ml_collections.ConfigDict


@dataclasses.dataclass
class Outcome:
  """What `check` found for one combination.

  Attributes:
    name: The combination's name.
    status: One of `STATUSES`.
    max_difference: The largest absolute difference over weights, state and
      metrics (passed or failed), or None.
    where: Where it occurred, e.g. 'round 2 metric client_work/train/loss'.
    message: The reason (refused, invalid, failed) or the noise check's result.
    share: The largest difference as a share of its value's tolerance
      (`allowed_difference`; passed needs at most 1), or None.
    share_where: Where that share occurred.
    traceback: The traceback of an exception that made the check fail, or ''.
    dtype: The float type both engines computed in (`DTYPES`).
  """
  name: str
  status: str
  max_difference: Optional[float] = None
  where: str = ''
  message: str = ''
  share: Optional[float] = None
  share_where: str = ''
  traceback: str = ''
  dtype: str = 'float32'

  def line(self) -> str:
    """One line: `<status> <name>: <detail>`, with `[float64]` after the name if so checked."""
    detail = self.message
    if self.max_difference is not None:
      detail = f'max |diff| {self.max_difference:.3g} at {self.where}' + (
          f', {self.share:.2g} of its tolerance at {self.share_where}' if self.share is not None
          else '') + (f'; {self.message}' if self.message else '')
    dtype = ' [float64]' if self.dtype == 'float64' else ''
    return f'{self.status:8s} {self.name}{dtype}: {detail}'


@dataclasses.dataclass
class Difference:
  """The largest difference between the engines, absolute and as a share of the tolerance."""
  largest: float = 0.0
  where: str = 'nothing'
  share: float = 0.0
  share_where: str = 'nothing'

  def update(self, other: 'Difference', prefix: str) -> None:
    """Keeps the larger of each of `self` and `other` (whose places get `prefix`)."""
    if other.largest > self.largest or self.where == 'nothing':
      self.largest, self.where = other.largest, f'{prefix} {other.where}'
    if other.share > self.share or self.share_where == 'nothing':
      self.share, self.share_where = other.share, f'{prefix} {other.share_where}'


def allowed_difference(expected: np.ndarray, atol: float = TOLERANCE,
                       rtol: float = RELATIVE_TOLERANCE) -> np.ndarray:
  """The largest |expected - actual| that passes, value by value: `atol + rtol * |expected|`.

  The one tolerance of the harness (`TOLERANCE`, `RELATIVE_TOLERANCE`: float32
  rounding of large values), in `np.isclose`'s form with TFF's value as `expected`.
  """
  return atol + rtol * np.abs(expected)


def shrink(config: ml_collections.ConfigDict, *, rounds: int = ROUNDS,
           clients_per_round: int = 3, max_elements: int = 64) -> ml_collections.ConfigDict:
  """`config` on tiny data for `rounds` rounds, its options otherwise kept.

  The cap on examples per client is high enough that clients still differ in
  size (digits: 9 to 77 examples over 60 clients), so weighting matters.
  """
  config = config.copy_and_resolve_references()
  config.total_rounds = rounds
  config.rounds_per_eval = rounds
  config.clients_per_round = min(config.clients_per_round, clients_per_round)
  if config.data.max_elements == 0 or config.data.max_elements > max_elements:
    config.data.max_elements = max_elements
  if config.data.dataset in tasks.HOSTED_DATASETS:
    config.data.synthetic_standin = True
    config.clients_per_round = min(config.clients_per_round, 2)  # The stand-ins have 2-3 clients.
  return config


def shipped_combinations(configs_dir: str) -> Iterator[Combination]:
  """Every config in `configs_dir` and each of its `VARIANTS`, with its `SMOKE_OVERRIDES`
  but `jit_compile`: the compiled engine is checked as runs use it, XLA by default."""
  for path in sorted(glob.glob(os.path.join(configs_dir, '*.py'))):
    module = benchmarks.load_config_file(path)
    base = os.path.basename(path)
    overrides = {key: value for key, value in getattr(module, 'SMOKE_OVERRIDES', {}).items()
                 if key != 'jit_compile'}
    for variant in getattr(module, 'VARIANTS', (None,)):
      config = module.get_config(variant) if variant else module.get_config()
      config = sweeps.point_config(config, overrides)
      yield Combination(base + (f':{variant}' if variant else ''), config)


def grid_combinations() -> Iterator[Combination]:
  """algorithm x aggregator kind x weighting x client lr schedule x model kind."""
  axes = itertools.product(registry.ALGORITHMS, GRID_AGGREGATORS, (True, False),
                           schedules.SCHEDULES, MODEL_KINDS)
  for algorithm, kind, weighted, schedule, model_kind in axes:
    config = config_lib.base_config()
    config.data.dataset, config.model.name = MODEL_KINDS[model_kind]
    if model_kind == 'dense':
      config.data.num_clients, config.model.hidden_units = 20, (16,)
    config.algorithm.name, config.algorithm.weighted = algorithm, weighted
    if algorithm == 'fedprox':
      config.algorithm.proximal_strength = 0.5
    if algorithm == 'qfedavg':
      config.algorithm.q = 1.0
    if algorithm == 'ditto':
      config.algorithm.ditto_lambda = 0.5
    config.client.lr_schedule, config.client.lr_decay_steps = schedule, 2
    config.aggregator.kind = kind
    for key, value in GRID_AGGREGATORS[kind].items():  # Unvalidated: check() sorts out invalid.
      config.aggregator[key.partition('.')[2]] = value
    config.clients_per_round = 3
    yield Combination(f'grid:{algorithm}/{kind}/{"weighted" if weighted else "unweighted"}/'
                      f'{schedule}/{model_kind}', config)


def _noised(config: ml_collections.ConfigDict) -> bool:
  return config.aggregator.kind == 'dp' and (config.privacy.target_epsilon is not None or (
      config.aggregator.noise_multiplier or 0.0) > 0)


def _noiseless(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  twin = config.copy_and_resolve_references()
  twin.aggregator.noise_multiplier, twin.privacy.target_epsilon = 0.0, None
  twin.privacy.delta = None
  return twin


def _validate(config: ml_collections.ConfigDict) -> Optional[Outcome]:
  """INVALID if the config is refused on the TFF engine, REFUSED if only on the compiled one."""
  for engine, status in (('tff', INVALID), ('compiled', REFUSED)):
    candidate = config.copy_and_resolve_references()
    candidate.engine = engine
    try:
      config_lib.validate(candidate)
    except config_lib.ConfigError as e:
      return Outcome('', status, message=str(e))
  return None


def client_ids(config, task, round_num: int) -> List[str]:
  """Round `round_num`'s sampled clients, round-tagged, as the runner draws them."""
  return data.round_client_ids(round_num, training.sample_clients(
      task.train_data.client_ids, config.clients_per_round, round_num=round_num,
      seed=config.seed, sampling=config.privacy.sampling))


class _Engines:
  """Both engines of one config, on one task, built as the runner builds them."""

  def __init__(self, config, task, z: Optional[float], *, compiled_options=None):
    options = experiment._process_options(config, task, z)  # pylint: disable=protected-access
    self.config, self.task = config, task
    self.compiled = experiment.build_compiled_process(config, task, options=dict(options,
                                                                         **(compiled_options or {})))
    self.tff = experiment.build_process(config, task, options=options)
    self.composed = tff.simulation.compose_dataset_computation_with_learning_process(
        task.train_data.dataset_computation, self.tff) if not _is_stateful(config) else None
    self.batches = compiled.RoundBatches(task.train_data, batch_size=config.data.batch_size)
    self.stateful = _is_stateful(config) and self._stateful_rounds(task, config.data.batch_size)

  def _stateful_rounds(self, task, batch_size: int):
    """SCAFFOLD, Ditto: each engine's rounds as the runner drives them, each with its own store."""
    self._directories = [tempfile.TemporaryDirectory() for _ in range(2)]
    # pylint: disable=protected-access  # The runner's own stateful rounds.
    self.composed = experiment._TffStatefulRounds(self.tff, task.train_data.dataset_computation)
    rounds = experiment._CompiledStatefulRounds(self.compiled, task.train_data, batch_size, None)
    # pylint: enable=protected-access
    for each, directory in zip((self.composed, rounds), self._directories):
      each.store = client_states.ClientStateStore(directory.name, task.train_data.client_ids,
                                                  each.state_size)
    return rounds

  def initial_states(self) -> Tuple[Any, Any]:
    weights = tff_model.initial_weights(self.task.model_fn, self.config.seed)
    tff_state = self.tff.set_model_weights(self.tff.initialize(), weights)
    return tff_state, self.compiled.from_tff_state(tff_state)

  def next(self, round_num: int, tff_state, compiled_state):
    """Round `round_num` on both engines: `(tff_output, compiled_output)`."""
    ids = client_ids(self.config, self.task, round_num)
    if self.stateful:
      return self.composed.next(tff_state, ids), self.stateful.next(compiled_state, ids)
    return (self.composed.next(tff_state, ids),
            self.compiled.next(compiled_state, self.batches.tagged_batches(ids),
                           noise_seed=[round_num, 20260]))


def _is_stateful(config) -> bool:
  return registry.get(config.algorithm.name).stateful_clients


def _check_options(options: Dict[str, Any]) -> None:
  """The TFF builder's own option checks (a one-line ValueError: invalid), run before either
  engine is built, so that an error from a build is never taken for one of them."""
  builder._check_options(  # pylint: disable=protected-access
      options['algorithm'], **{k: options[k] for k in (
          'server_optimizer', 'client_optimizer', 'client_learning_rate_schedule',
          'proximal_strength', 'weighted')}, q=options.get('q'),
      population_size=options.get('population_size'), aggregator=options['aggregator'],
      ditto_lambda=options.get('ditto_lambda'))
  if isinstance(options['aggregator'], aggregators.AggregatorSpec):
    aggregators.build_aggregator(options['aggregator'], weighted=options['weighted'])


def _leaves(structure: Any, prefix: str = '') -> Dict[str, Any]:
  """Nested mappings, named tuples and lists as {'a/b/0': leaf}."""
  if hasattr(structure, '_asdict'):
    structure = structure._asdict()
  if isinstance(structure, (dict, collections.OrderedDict)) or hasattr(structure, 'items'):
    items = list(structure.items())
  elif isinstance(structure, (list, tuple)):
    items = list(enumerate(structure))
  else:
    return {prefix.rstrip('/'): structure}
  out = {}
  for key, value in items:
    out.update(_leaves(value, f'{prefix}{key}/'))
  return out


def _max_difference(expected: Any, actual: Any, what: str, atol: float = TOLERANCE,
                    rtol: float = RELATIVE_TOLERANCE,
                    float64: Optional[Tuple[float, float]] = None) -> Difference:
  """The largest |expected - actual| over matching numeric leaves, absolute and as a
  share of `allowed_difference`, and where; inf where a leaf is missing or differs in
  shape or non-finiteness. `float64`: `(atol, rtol)` of the leaves TFF holds in float64
  (float64 mode), or None to compare them as the others."""
  found = Difference()
  expected, actual = _leaves(expected), _leaves(actual)
  for key, value in expected.items():
    a = np.asarray(value)
    if a.dtype.kind not in 'fiub':
      continue
    if key not in actual or np.shape(actual[key]) != a.shape:
      where = f'{what} {key} (missing or of another shape in the compiled engine)'
      return Difference(math.inf, where, math.inf, where)
    b = np.asarray(actual[key], dtype=np.float64)
    value_dtype, a = a.dtype, a.astype(np.float64)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
      return Difference(math.inf, f'{what} {key} (finite on one engine only)', math.inf,
                        f'{what} {key} (finite on one engine only)')
    tolerance = float64 if float64 is not None and value_dtype == np.float64 else (atol, rtol)
    diff = np.abs(np.where(np.isfinite(a), a - b, 0.0))
    share = diff / allowed_difference(np.where(np.isfinite(a), a, 0.0), *tolerance)
    found.update(Difference(float(np.max(diff, initial=0.0)), key,
                            float(np.max(share, initial=0.0)), key), what)
  return found


def compare_rounds(engines: _Engines, rounds: int, atol: float = TOLERANCE,
                   rtol: float = RELATIVE_TOLERANCE,
                   float64: Optional[Tuple[float, float]] = None) -> Difference:
  """Runs `rounds` rounds on both engines from the same state; the largest difference
  (`float64`: the tolerance of float64 values, `_max_difference`)."""
  tff_state, compiled_state = engines.initial_states()
  worst = Difference()
  for round_num in range(1, rounds + 1):
    tff_output, compiled_output = engines.next(round_num, tff_state, compiled_state)
    tff_state, compiled_state = tff_output.state, compiled_output.state
    worst.update(_max_difference(
        tff_state, engines.compiled.to_tff_state(compiled_state, tff_state), 'state', atol, rtol,
        float64), f'round {round_num}')
    worst.update(_max_difference(tff_output.metrics, compiled_output.metrics, 'metric', atol,
                                 rtol, float64), f'round {round_num}')
  return worst


def rounding_tolerance(config: ml_collections.ConfigDict, task: tasks.Task,
                       rounds: int) -> float:
  """`rounds * sqrt(d') / s` for the distributed Skellam mean's noiseless twin, else 0."""
  if config.aggregator.kind != 'dp' or config.privacy.mechanism != ddp.MECHANISM:
    return 0.0
  bits = ddp.DEFAULT_BITS if config.privacy.ddp_bits is None else config.privacy.ddp_bits
  params = ddp.skellam_parameters(0.0, config.clients_per_round, config.aggregator.clip_norm,
                                  bits, ddp.model_dim(task.model_fn))
  return rounds * math.sqrt(params.padded_dim) / params.scale


def expected_noise_std(config: ml_collections.ConfigDict, z: float) -> float:
  """The std of round 1's noise on each coordinate of the aggregate: `z C / m`, with
  `z` the value share `(z^-2 - (2 sigma_b)^-2)^-1/2` under adaptive clipping."""
  aggregator, m = config.aggregator, config.clients_per_round
  if aggregator.clip_norm is not None:
    return z * aggregator.clip_norm / m
  sigma_b = aggregator.clipped_count_stddev
  if sigma_b is None:
    sigma_b = mechanisms.default_clipped_count_stddev(z, m)  # A choice of fedtff's, not maths.
  value_z = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
  return value_z * mechanisms.DEFAULT_INITIAL_CLIP / m  # Round 1 clips at the initial norm.


def noise_statistics(noise: np.ndarray, expected_std: float) -> Tuple[bool, str]:
  """Whether `noise` looks like N(0, expected_std^2) i.i.d.: mean and std within
  `NOISE_SIGMAS` standard errors."""
  n = noise.size
  std, mean = float(np.std(noise)), float(np.mean(noise))
  ok = (abs(std / expected_std - 1) <= NOISE_SIGMAS / math.sqrt(2 * n)
        and abs(mean) <= NOISE_SIGMAS * expected_std / math.sqrt(n))
  return ok, f'std {std:.4g} vs {expected_std:.4g}, mean {mean:.2g} over {n}'


def _sgd_server(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with a server step linear in the aggregate: SGD (fedavg for the server-optimizer
  algorithms, which fix theirs), as the noise check needs."""
  config = config_lib.resolve(config)
  if config.server.optimizer != 'sgd':
    config.algorithm.name = 'fedavg'
    config.server.optimizer, config.server.learning_rate, config.server.momentum = 'sgd', 1.0, 0.0
  return config


def check_noise(config, task, z: float, clean: Optional[_Engines] = None) -> Tuple[bool, str]:
  """Each engine's round-1 noise (noised minus noiseless weights) against its std.

  `clean`: the noiseless engines of `config`, reused if its server step is SGD.
  """
  sgd_config = _sgd_server(config)
  if clean is None or config_lib.resolve(config).server.optimizer != 'sgd':
    clean = _Engines(sgd_config, task, 0.0)
  noised = _Engines(sgd_config, task, z)
  scale = sgd_config.server.learning_rate * expected_noise_std(sgd_config, z)
  weights = {}
  for key, engines in (('noised', noised), ('clean', clean)):
    tff_state, compiled_state = engines.initial_states()
    tff_output, compiled_output = engines.next(1, tff_state, compiled_state)
    for engine, state in (('tff', tff_output.state), ('compiled', compiled_output.state)):
      trainable = getattr(engines, engine).get_model_weights(state).trainable
      weights[key, engine] = np.concatenate([np.ravel(w) for w in trainable])
  results = [(engine,) + noise_statistics(weights['noised', engine] - weights['clean', engine],
                                          scale) for engine in ('tff', 'compiled')]
  return all(ok for _, ok, _ in results), '; '.join(f'{e} noise {m}' for e, _, m in results)


def _quantizes(config: ml_collections.ConfigDict, task: tasks.Task) -> bool:
  """Whether `config`'s compression quantizes a trainable tensor (more elements than its
  threshold: TFF's `EncodedSumFactory.quantize_above_threshold`)."""
  if config.aggregator.kind != 'compression':
    return False
  return any(int(np.prod(w.shape)) > config.aggregator.quantization_threshold
             for w in task.model_fn().trainable_weights)


def _unquantized(config: ml_collections.ConfigDict, task: tasks.Task) -> ml_collections.ConfigDict:
  """`config` with its compression's threshold above every tensor's size: exact sums."""
  twin = config.copy_and_resolve_references()
  twin.aggregator.quantization_threshold = ddp.model_dim(task.model_fn)
  return twin


def _trainable(process, state) -> List[np.ndarray]:
  return [np.asarray(w, np.float64) for w in process.get_model_weights(state).trainable]


def quantization_bound(config: ml_collections.ConfigDict, exact: _Engines, state,
                       ids: List[str]) -> List[np.ndarray]:
  """One quantization step per client of the weighted mean, per trainable tensor.

  `sum_i step_i / sum_i w_i` with `step_i = (max - min)(w_i u_i) / (2**bits - 1)`
  for a tensor of more elements than the threshold (else 0): TFF quantizes each
  client's weighted update `w_i u_i` tensor by tensor, rounding each value down
  or up by less than a step. Client i's update `u_i` (clipped or zeroed as the
  aggregator does) and weight come from a round of `exact` (the unquantized twin
  under server SGD) from `state` on client i alone.
  """
  aggregator, lr = config.aggregator, config.server.learning_rate
  before = _trainable(exact.tff, state)
  steps, total = [np.zeros(()) for _ in before], 0.0
  for client_id in ids:
    output = exact.composed.next(state, [client_id])
    weight = (float(output.metrics['client_work']['train']['num_examples'])
              if config.algorithm.weighted else 1.0)
    for k, (old, new) in enumerate(zip(before, _trainable(exact.tff, output.state))):
      if old.size > aggregator.quantization_threshold:
        value = weight * (new - old) / lr
        steps[k] = steps[k] + (value.max() - value.min()) / (2 ** aggregator.quantization_bits - 1)
    total += weight
  return [step / max(total, 1.0) for step in steps]


def check_quantization(config: ml_collections.ConfigDict, task: tasks.Task,
                       z: Optional[float]) -> Tuple[bool, str]:
  """Each engine's round-1 weights against the unquantized twin's, within `lr` times one
  step per client (`quantization_bound`) plus `allowed_difference`, under server SGD."""
  sgd_config = _sgd_server(config)
  quantized = _Engines(sgd_config, task, z)
  exact = _Engines(_unquantized(sgd_config, task), task, z)
  tff_state, compiled_state = quantized.initial_states()
  tff_output, compiled_output = quantized.next(1, tff_state, compiled_state)
  exact_state, _ = exact.initial_states()
  ids = client_ids(sgd_config, task, 1)
  reference = _trainable(exact.tff, exact.composed.next(exact_state, ids).state)
  lr = sgd_config.server.learning_rate
  allowed = [lr * bound + allowed_difference(r) for r, bound in zip(
      reference, quantization_bound(sgd_config, exact, exact_state, ids))]
  shares = {}
  for engine, state in (('tff', tff_output.state), ('compiled', compiled_output.state)):
    weights = _trainable(getattr(quantized, engine), state)
    shares[engine] = max(float(np.max(np.abs(w - r) / a))
                         for w, r, a in zip(weights, reference, allowed))
  return (all(share <= 1 for share in shares.values()),
          'round-1 quantization error ' + ', '.join(f'{e} {s:.2g}' for e, s in shares.items())
          + ' of one step per client')


def _twin(config: ml_collections.ConfigDict, task: tasks.Task, noised: bool,
          quantizes: bool) -> ml_collections.ConfigDict:
  """The deterministic config compared round by round: noiseless, unquantized."""
  config = _noiseless(config) if noised else config
  return _unquantized(config, task) if quantizes else config


def _randomized_checks(config, task, z, engines: _Engines, noised: bool,
                       quantizes: bool) -> Tuple[bool, str]:
  """The statistical noise check and the quantization bound, where they apply."""
  results = []
  if noised:
    results.append(check_noise(config, task, z, clean=engines))
  if quantizes:
    results.append(check_quantization(config, task, z))
  return all(ok for ok, _ in results), '; '.join(message for _, message in results)


def _without_dropout(config: ml_collections.ConfigDict) -> Tuple[ml_collections.ConfigDict, bool]:
  """`config` with `model.dropout=False` (both engines' model without its dropout layers), and
  whether that changed the model: each engine draws its own dropout masks, unseeded."""
  if config.model.name not in models.DROPOUT_MODELS or not config.model.dropout:
    return config, False
  config = config.copy_and_resolve_references()
  config.model.dropout = False
  return config, True


def _failure(name: str, error: BaseException) -> Outcome:
  """A check that raised: failed, with the exception's one line and its traceback."""
  return Outcome(name, FAILED, message=f'{type(error).__name__}: {error}'.splitlines()[0],
                 traceback=''.join(traceback_lib.format_exception(error)))


@contextlib.contextmanager
def keras_floatx(dtype: str) -> Iterator[None]:
  """Keras makes models (variables and layer computations) in `dtype` inside the block."""
  previous = tf.keras.backend.floatx()
  tf.keras.backend.set_floatx(dtype)
  try:
    yield
  finally:
    tf.keras.backend.set_floatx(previous)


def default_dtype(config: ml_collections.ConfigDict) -> str:
  """The float type `check` compares `config` in: 'float64' for a model of `FLOAT64_MODELS`
  (float32 rounding alone exceeds the tolerance), else 'float32'."""
  return 'float64' if config.model.name in FLOAT64_MODELS else 'float32'


def check(combination: Combination, *, rounds: int = ROUNDS,
          tolerance: float = TOLERANCE, compiled_options: Optional[Dict[str, Any]] = None,
          dtype: Optional[str] = None) -> Outcome:
  """Runs one combination on both engines and compares them (module docstring).

  Args:
    combination: The config to check (shrunk here with `shrink`).
    rounds: Rounds run from the same state (at least 3 for the issue's bar).
    tolerance: The absolute part `atol` of `allowed_difference`.
    compiled_options: Builder options overriding the compiled engine's only, to
      test the harness itself (e.g. another client optimizer).
    dtype: 'float32' or 'float64': the float type of both engines' models
      (`keras_floatx`), and so of their weights, gradients, optimizer states and
      aggregates; in float64 those compare within `FLOAT64_TOLERANCE` (plus
      `FLOAT64_RELATIVE_TOLERANCE` of TFF's value), the values TFF keeps in float32
      within `tolerance`. None: `default_dtype` of the config.

  Returns:
    The `Outcome`. An exception raised after the validation steps (building
    either engine, a round, a statistical check) is a failed outcome carrying
    its traceback, never invalid; only the compiled engine's own refusal
    (a `ConfigError` ending "use engine='tff'.") is refused.

  Raises:
    ValueError: If `dtype` is not None or one of `DTYPES`.
  """
  dtype = default_dtype(combination.config) if dtype is None else dtype
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {", ".join(DTYPES)} or None, got {dtype!r}.')
  float64 = (FLOAT64_TOLERANCE, FLOAT64_RELATIVE_TOLERANCE) if dtype == 'float64' else None
  with keras_floatx(dtype):
    outcome = _check(combination, rounds, tolerance, compiled_options, float64)
  return dataclasses.replace(outcome, dtype=dtype)


def _check(combination: Combination, rounds: int, tolerance: float,
           compiled_options: Optional[Dict[str, Any]],
           float64: Optional[Tuple[float, float]]) -> Outcome:
  """`check` in the current Keras floatx; `float64`: the tolerance of float64 values."""
  config = shrink(combination.config, rounds=rounds)
  refusal = _validate(config)
  if refusal:
    return dataclasses.replace(refusal, name=combination.name)
  # The algorithm's defaults, as run_experiment fills them; dropout off on both engines.
  config, dropout_off = _without_dropout(config_lib.resolve(config))
  try:  # The runner's checks before anything is built: a one-line ValueError each.
    task = tasks.build_task(config)
    experiment.check_task(config, task)
    z = experiment.noise_multiplier(config, task)
    noised, quantizes = _noised(config), _quantizes(config, task)
    twin, twin_z = _twin(config, task, noised, quantizes), 0.0 if noised else z
    # pylint: disable-next=protected-access
    _check_options(experiment._process_options(twin, task, twin_z))
  except ValueError as e:
    return Outcome(combination.name, INVALID, message=str(e))
  try:
    try:
      engines = _Engines(twin, task, twin_z, compiled_options=compiled_options)
    except config_lib.ConfigError as e:
      if str(e).endswith(_USE_TFF):  # The compiled engine's refusal: one of its gaps.
        return Outcome(combination.name, REFUSED, message=str(e))
      raise
    rounding = rounding_tolerance(config, task, rounds)
    if float64 is not None:  # The Skellam twin's rounding bound holds in float64 too.
      float64 = (max(float64[0], rounding), float64[1])
    found = compare_rounds(engines, rounds, atol=max(tolerance, rounding), float64=float64)
    ok, message = _randomized_checks(config, task, z, engines, noised, quantizes)
  except Exception as e:  # pylint: disable=broad-except  # Any other error is a failure.
    return _failure(combination.name, e)
  if dropout_off:
    message = '; '.join(m for m in ('dropout off on both engines (model.dropout=False)',
                                    message) if m)
  return Outcome(combination.name, PASSED if ok and found.share <= 1 else FAILED, found.largest,
                 found.where, message, found.share, found.share_where)


def _dropout_probe(features: int, rate: float) -> tf.keras.Model:
  """All-ones input -> Dropout(rate) -> a 2-logit linear layer, zero kernel, no bias."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(features,)), tf.keras.layers.Dropout(rate),
      tf.keras.layers.Dense(2, use_bias=False, kernel_initializer='zeros')])


def dropout_fraction(kernel_column: np.ndarray, rate: float) -> Tuple[bool, str]:
  """Whether a probe's trained kernel column shows dropout at `rate`.

  One SGD step at learning rate 1 on one example of label 0 from the zero
  kernel gives row i of column 0 the value `h_i / 2`, where `h_i` is input 1
  after dropout: 0 with probability `rate`, else `1 / (1 - rate)`. So the
  share of zero rows must be `rate` within `NOISE_SIGMAS` standard errors,
  and every other row exactly `0.5 / (1 - rate)` (`allowed_difference`).
  """
  n = kernel_column.size
  zero = np.abs(kernel_column) <= allowed_difference(0.0)
  kept = 0.5 / (1 - rate)
  share = float(np.mean(zero))
  scaled = bool(np.all(np.abs(kernel_column[~zero] - kept) <= allowed_difference(kept)))
  ok = scaled and abs(share - rate) <= NOISE_SIGMAS * math.sqrt(rate * (1 - rate) / n)
  return ok, (f'{share:.4f} of {n} dropped (rate {rate}), kept ones '
              + ('' if scaled else 'not ') + f'scaled to {kept:.4g}')


def check_dropout_rate(rate: float, *, features: int = 4000) -> Outcome:
  """With dropout on, both engines drop inputs at `rate` and scale the rest by `1/(1-rate)`.

  Each engine runs one FedAvg round (client and server SGD at learning rate 1,
  one client with one example of `features` ones and label 0) of
  `_dropout_probe`; `dropout_fraction` reads its dropout from the new kernel.
  The masks are each engine's own draws, so this checks the rate, the scaling
  and that training applies dropout, not that the engines' masks are equal.
  """
  name = f'dropout:rate={rate}'
  try:
    dataset = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=np.ones((1, features), np.float32), y=np.zeros((1,), np.int32))).batch(1)
    model_fn = functools.partial(_dropout_probe, features, rate)
    options = dict(algorithm='fedavg', client_optimizer=optimizers.build('sgd', 1.0),
                   server_optimizer=optimizers.build('sgd', 1.0))
    tff_process = builder.build_learning_process(model_fn, dataset, **options)
    compiled_process = compiled.build_compiled_process(model_fn, dataset, **options)
    kernels = {
        'tff': tff_process.get_model_weights(
            tff_process.next(tff_process.initialize(), [dataset]).state).trainable[0],
        'compiled': compiled_process.get_model_weights(compiled_process.next(
            compiled_process.initialize(), compiled.from_datasets([dataset])).state).trainable[0]}
    results = {engine: dropout_fraction(np.asarray(kernel)[:, 0], rate)
               for engine, kernel in kernels.items()}
  except Exception as e:  # pylint: disable=broad-except  # Any error is a failure.
    return _failure(name, e)
  return Outcome(name, PASSED if all(ok for ok, _ in results.values()) else FAILED,
                 message='; '.join(f'{engine} {m}' for engine, (_, m) in results.items()))


def family(name: str) -> str:
  """The row of the results table a combination counts in: its config file (Reddi et al.:
  file and task), the grid's model kind, or the dropout-rate checks."""
  if name.startswith('grid:'):
    return 'grid ' + name.rsplit('/', 1)[1]
  if name.startswith('dropout:'):
    return 'dropout'
  parts = name.split(':')
  return ':'.join(parts[:2]) if parts[0] == 'reddi.py' else parts[0]


def tally(outcomes: List[Outcome]) -> Dict[str, int]:
  """{'checked': n, 'passed': ..., 'failed': ..., 'refused': ..., 'invalid': ...}."""
  counts = collections.Counter(o.status for o in outcomes)
  return dict(checked=len(outcomes), **{s: counts[s] for s in STATUSES})


def tally_by_family(outcomes: List[Outcome], names: List[str]) -> Dict[str, Dict[str, Any]]:
  """`tally` per `family` of `names` (the selected combinations), with 'not run' (selected,
  no outcome) and the largest difference and share of its tolerance of those compared."""
  by_name = {o.name: o for o in outcomes}
  rows = {}
  for fam in dict.fromkeys(family(n) for n in names):
    chosen = [n for n in names if family(n) == fam]
    done = [by_name[n] for n in chosen if n in by_name]
    compared = [o for o in done if o.max_difference is not None]
    rows[fam] = dict(tally(done), **{'not run': len(chosen) - len(done)}, largest=max(
        (o.max_difference for o in compared), default=None), share=max(
            (o.share for o in compared if o.share is not None), default=None))
  return rows


def save_outcome(path: str, outcome: Outcome) -> None:
  """Appends `outcome` to the JSON-lines results file `path` (a checkpoint: one line each)."""
  with open(path, 'a') as f:
    f.write(json.dumps(dataclasses.asdict(outcome)) + '\n')
    f.flush()
    os.fsync(f.fileno())


def load_outcomes(path: str) -> List[Outcome]:
  """The outcomes saved in `path` (the last one per name), or [] if it does not exist."""
  if not os.path.exists(path):
    return []
  found = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        outcome = Outcome(**json.loads(line))
        found[outcome.name] = outcome
  return list(found.values())


def source_fingerprint(root: str) -> Dict[str, Tuple[int, int]]:
  """(mtime, size) of each .py file of fedtff/ and configs/ under `root`.

  A run must not see its source change: autograph reads a function's source
  from disk when it first converts it (`inspect.getsource`, by line number),
  so after an edit it converts whatever now stands at the old line. That was
  the FedProx TypeError (docs/performance.md).
  """
  paths = glob.glob(os.path.join(root, 'fedtff', '**', '*.py'), recursive=True)
  paths += glob.glob(os.path.join(root, 'configs', '*.py'))
  return {p: (os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in sorted(paths)}
