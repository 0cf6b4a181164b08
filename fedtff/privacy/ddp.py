"""Distributed DP: the distributed Skellam mechanism under secure summation.

The mechanism is Agarwal, Kairouz and Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021 (arXiv 2110.04995),
Algorithm 1, as TFF 0.87's `DistributedDpSumFactory` (`tensorflow_federated/python/aggregators/distributed_dp.py`) builds it
with `mechanism='distributed_skellam'`. Each sampled client, on its own device:

1. flattens its model update to a vector of `d` coordinates, zero-pads it to
   `d'` (the next power of 2) and rotates it with a randomized Hadamard
   transform (orthogonal: the L2 norm is kept);
2. clips it to L2 norm `C`;
3. scales it by `s` and rounds each coordinate stochastically to an integer
   (unconditional randomized rounding, TFF's `beta=0`): each coordinate moves
   by less than 1, so the integer vector has L2 norm at most
   `Delta2 = s * (C + sqrt(d') / s + 1e-5)` and, being an integer vector, L1
   norm at most `Delta1 = ceil(Delta2 * min(sqrt(d'), Delta2))`. TF Privacy's
   `DistributedSkellamSumQuery` asserts both bounds on every record, so a
   record that broke them would stop the round rather than be released;
4. adds its noise share, i.i.d. symmetric Skellam noise `Poisson(l) -
   Poisson(l)` per coordinate with variance `2 l = (z C s)**2 / m`;
5. reduces it modulo `2**bits` for secure summation.

The server receives only the sum modulo `2**bits` (secure summation), divides
by `s`, rotates back and divides by the `m` clients. A sum of independent
Skellam variables is Skellam, so the noise on the integer sum is exactly
Skellam with variance `mu = (z C s)**2` per coordinate: a central noise of
standard deviation `z C` in the model's units, as DP-FedAvg's with the same
`z`, plus the rounding error. Everything after the noisy integer sum
(modular reduction, unscaling, rotation, division) is post-processing.

fedtff builds this pipeline from TFF's own aggregators with one change: TF
Privacy 0.9.0's `DistributedSkellamSumQuery` seeds its Poisson draws with the
clock (`tf.timestamp() * 10**6`): anyone who knows roughly when a client
noised its update can enumerate the candidate seeds, and two clients that
noise within the same microsecond would draw the same noise (not observed in
fedtff's runtime, but nothing prevents it). fedtff's query
(`OsSeededSkellamSumQuery`) draws the noise from TF's unseeded Poisson op,
which TF seeds from the OS. It also refuses TFF's `auto_l2_clip` (and
`ddp_secure_aggregator`'s adaptive zeroing, whose norm estimate is not
noised): the clip `C` is fixed.

What fedtff accounts for, exactly:

* Unit: one client with all of its data (user-level DP).
* Neighbouring relation: replace-one. Each round the `m` sampled clients all
  add their noise share, so the noise on the sum is Skellam with variance
  `mu` in both neighbouring federations; replacing one client's integer
  vector by another moves the sum by L2 norm at most `2 Delta2` and L1 norm at
  most `2 Delta1`.
* Accountant: Agarwal et al.'s Rényi DP bound for the multi-dimensional
  Skellam mechanism (Theorem 3.5 / Corollary 3.6, as evaluated by the authors'
  code in the google-research/federated repository), for integer orders
  `alpha > 1`, with noise variance `mu` and sensitivities `D2`, `D1`:

      eps(alpha) = alpha D2**2 / (2 mu)
                   + min(((2 alpha - 1) D2**2 + 6 D1) / (4 mu**2), 3 D1 / (2 mu)),

  whose first term is the Gaussian mechanism's RDP at standard deviation
  `sqrt(mu)`. `T` rounds compose by adding RDP (Mironov 2017); dp_accounting's
  `rdp.compute_epsilon` converts to `(epsilon, delta)` (Canonne, Kamath and
  Steinke 2020, Proposition 12).
* Sampling: fedtff samples `m` of `N` clients without replacement each round,
  but **no amplification by sampling is claimed**: the bound is that of every
  round releasing the whole federation's noisy sum, which holds whatever the
  sampling and whatever an observer knows of it. It is an upper bound, larger
  than DP-FedAvg's amplified epsilon at the same `z`.
* Dropouts: the noise adds up to `mu` only if all `m` clients report. fedtff's
  round loop has no dropouts; a deployment would need to account for fewer
  noise shares.
* Threat model: under secure summation the server sees only the noisy sum.
  fedtff's local runtime lowers TFF's secure-sum intrinsics to plain sums
  (`fedtff.execution.runtime`), so here the protocol is simulated: the epsilon is what a
  deployment with real secure aggregation would give.

    factory = fedtff.privacy.ddp.ddp_aggregator(1.0, 10, clip=1.0, dim=4810)
    fedtff.privacy.ddp.epsilon(1.0, 10, clip=1.0, dim=4810, rounds=100, delta=2e-4)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Optional

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators import discretization
from tensorflow_federated.python.aggregators import modular_clipping
from tensorflow_federated.python.aggregators import robust
from tensorflow_federated.python.core.impl.compiler import transformations
from tensorflow_federated.python.core.impl.computation import computation_impl

from fedtff.privacy import accounting

MECHANISM = 'ddp_skellam'
DEFAULT_BITS = 20  # tff.learning.ddp_secure_aggregator's default.
MIN_BITS, MAX_BITS = 1, 22  # TFF's range (float32 holds integers up to 2**24).
MODCLIP_PROB = 1e-4  # TFF's default target probability of a modular wrap-around.
MAX_SCALE = 1e6  # TFF's cap on the scale factor (distributed_dp.MAX_SCALE_FACTOR).
NORM_LEEWAY = 1e-5  # TFF's leeway on the inflated L2 bound, for float32 rounding.
# Integer orders: Agarwal et al.'s bound is stated for integer alpha > 1.
ORDERS = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class SkellamParameters:
  """The integer-domain parameters of one round of the distributed Skellam mean.

  Attributes:
    dim: `d`, the update's coordinates.
    padded_dim: `d'`, the next power of 2 (the Hadamard transform's length).
    scale: `s`, the factor applied before rounding.
    l2_bound: `Delta2`, each client's integer vector's L2 bound (asserted).
    l1_bound: `Delta1`, its L1 bound (asserted).
    local_stddev: Each client's Skellam noise standard deviation (float32, as
      the query holds it), in integer units.
    variance: `mu = m * local_stddev**2`: the variance of the noise on each
      coordinate of the integer sum.
  """
  dim: int
  padded_dim: int
  scale: float
  l2_bound: float
  l1_bound: int
  local_stddev: float
  variance: float


def _check(noise_multiplier, clients_per_round, clip, bits, dim):
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be nonnegative, got {noise_multiplier}.')
  if not (isinstance(clients_per_round, (int, np.integer)) and clients_per_round >= 1):
    raise ValueError(f'clients_per_round must be a positive integer, got {clients_per_round!r}.')
  if clip is None or not clip > 0:
    raise ValueError(f'The distributed Skellam mechanism needs a fixed, positive L2 clip norm, '
                     f'got {clip!r}.')
  if not (isinstance(bits, (int, np.integer)) and MIN_BITS <= bits <= MAX_BITS):
    raise ValueError(f'bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}.')
  if not (isinstance(dim, (int, np.integer)) and dim >= 1):
    raise ValueError(f'dim must be a positive integer, got {dim!r}.')
  check_bits(bits, clients_per_round)


def check_bits(bits: int, clients_per_round: int) -> None:
  """Refuses a bit width whose modular sum would often wrap around (TFF's check)."""
  if not (isinstance(bits, (int, np.integer)) and MIN_BITS <= bits <= MAX_BITS):
    raise ValueError(f'bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}.')
  k = _modclip_stddevs()
  if 2**(2 * bits) < clients_per_round * k**2:
    raise ValueError(f'bits={bits} is too small for {clients_per_round} clients per round: the '
                     f'modular sum needs 2**(2*bits) >= clients_per_round * {k:.3f}**2.')


@functools.lru_cache(maxsize=None)
def _modclip_stddevs() -> float:
  """`k`: the normal quantile of TFF's modular wrap-around probability."""
  return statistics.NormalDist().inv_cdf(1 - MODCLIP_PROB / 2)


@functools.lru_cache(maxsize=256)
def skellam_parameters(noise_multiplier: float, clients_per_round: int, clip: float,
                       bits: int, dim: int) -> SkellamParameters:
  """The scale, norm bounds and noise TFF's distributed Skellam sum uses.

  The scale is TFF's heuristic (`distributed_dp._heuristic_scale_factor`,
  Kairouz, Liu and Steinke 2021, Section 4.4): `k` standard deviations of the
  noisy integer sum fit in `bits` bits, capped at `1e6`. The norm bounds are
  TFF's for `beta=0` (module docstring), rounded up to what float32 holds,
  since the query asserts them in float32.

  Args:
    noise_multiplier: `z`: the central noise standard deviation over `clip`.
    clients_per_round: `m`, the clients whose noise shares add up.
    clip: `C`, the L2 clip norm.
    bits: The secure sum's bit width.
    dim: `d`, the number of coordinates of a model update.
  """
  _check(noise_multiplier, clients_per_round, clip, bits, dim)
  padded = 2**math.ceil(math.log2(dim))
  central = noise_multiplier * clip
  local = central / math.sqrt(clients_per_round)
  k, m = _modclip_stddevs(), clients_per_round
  scale = math.sqrt(2.0**(2 * bits) - m * k**2) / (
      2 * k * math.sqrt(clip**2 * m**2 / padded + m * local**2))
  scale = min(scale, MAX_SCALE)
  inflated = clip + math.sqrt(padded) / scale
  l2_bound = _float32_up((inflated + NORM_LEEWAY) * scale)
  l1_bound = math.ceil(l2_bound * min(math.sqrt(padded), l2_bound))
  local_stddev = float(np.float32(local * scale))
  return SkellamParameters(dim=dim, padded_dim=padded, scale=scale, l2_bound=l2_bound,
                           l1_bound=l1_bound, local_stddev=local_stddev,
                           variance=m * local_stddev**2)


def _float32_up(value: float) -> float:
  """The smallest float32 at least `value`."""
  rounded = np.float32(value)
  if float(rounded) < value:
    rounded = np.nextafter(rounded, np.float32(np.inf))
  return float(rounded)


def skellam_rdp(order: int, l2_sensitivity: float, l1_sensitivity: float,
                variance: float) -> float:
  """Agarwal et al.'s (2021) RDP bound of the Skellam mechanism at integer `order`.

  Args:
    order: `alpha`, an integer above 1.
    l2_sensitivity: `D2`.
    l1_sensitivity: `D1`.
    variance: `mu`, the Skellam noise variance per coordinate.
  """
  if not (isinstance(order, (int, np.integer)) and order >= 2):
    raise ValueError(f'order must be an integer of at least 2, got {order!r}.')
  a, d2, d1, mu = order, l2_sensitivity, l1_sensitivity, variance
  return a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2),
                                    3 * d1 / (2 * mu))


def round_rdp(noise_multiplier: float, clients_per_round: int, *, clip: float, bits: int,
              dim: int) -> np.ndarray:
  """The RDP of one round at `ORDERS`, under replace-one (sensitivities `2 Delta2`, `2 Delta1`)."""
  params = skellam_parameters(noise_multiplier, clients_per_round, clip, bits, dim)
  if noise_multiplier == 0:
    return np.full(len(ORDERS), np.inf)
  return np.array([skellam_rdp(a, 2 * params.l2_bound, 2 * params.l1_bound, params.variance)
                   for a in ORDERS])


def epsilon(noise_multiplier: float, clients_per_round: int, *, clip: float, dim: int,
            rounds: int, delta: float, bits: int = DEFAULT_BITS) -> float:
  """The epsilon at `delta` of `rounds` rounds (module docstring); `inf` without noise."""
  accounting._check_rounds(rounds)  # pylint: disable=protected-access
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  rdp = round_rdp(noise_multiplier, clients_per_round, clip=clip, bits=bits, dim=dim)
  if noise_multiplier == 0:
    return math.inf
  return float(dp_accounting.rdp.compute_epsilon(ORDERS, rounds * rdp, delta)[0])


@functools.lru_cache(maxsize=64)
def noise_multiplier_for_epsilon(target_epsilon: float, clients_per_round: int, *, clip: float,
                                 dim: int, rounds: int, delta: float,
                                 bits: int = DEFAULT_BITS) -> float:
  """The smallest `z` (within `accounting.DEFAULT_TOLERANCE`) spending at most `target_epsilon`."""
  if not target_epsilon > 0:
    raise ValueError(f'target_epsilon must be positive, got {target_epsilon}.')
  spends = lambda z: epsilon(z, clients_per_round, clip=clip, dim=dim, rounds=rounds,
                             delta=delta, bits=bits)
  return accounting.smallest_noise_multiplier(spends, target_epsilon, rounds)


class SkellamPrivacyTracker:
  """Epsilon after each round of the distributed Skellam mean (`epsilon(round_num)`)."""

  def __init__(self, noise_multiplier: float, clients_per_round: int, delta: float, *,
               clip: float, bits: int, dim: int):
    self.delta = delta
    self._rdp = round_rdp(noise_multiplier, clients_per_round, clip=clip, bits=bits, dim=dim)

  def epsilon(self, round_num: int) -> float:
    if round_num < 0:
      raise ValueError(f'round_num must be nonnegative, got {round_num}.')
    if round_num == 0:
      return 0.0
    if np.isinf(self._rdp).all():
      return math.inf
    return float(dp_accounting.rdp.compute_epsilon(ORDERS, round_num * self._rdp,
                                                   self.delta)[0])


class OsSeededSkellamSumQuery(tfp.DistributedSkellamSumQuery):
  """TF Privacy's distributed Skellam sum query, with noise seeded by the OS.

  TF Privacy 0.9.0 seeds `tf.random.stateless_poisson` with the clock in
  microseconds; here each share comes from TF's stateful Poisson op without a
  seed, which TF seeds from the OS's entropy (TFF traces computations in fresh
  graphs, with no graph-level seed).
  """

  def add_noise_to_sample(self, local_stddev, record):
    local_stddev = tf.cast(local_stddev, tf.float64)
    lam = 0.5 * local_stddev * local_stddev

    def add_noise(v):
      first = tf.random.poisson(tf.shape(v), lam, dtype=tf.int64)
      second = tf.random.poisson(tf.shape(v), lam, dtype=tf.int64)
      return v + tf.cast(first - second, v.dtype)

    return tf.nest.map_structure(add_noise, record)


def _num_elements(value_type) -> int:
  if isinstance(value_type, tff.TensorType):
    return int(np.prod(value_type.shape))
  return sum(_num_elements(t) for _, t in tff.structure.iter_elements(value_type))


class SkellamSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """The distributed Skellam sum of float updates of `dim` coordinates (module docstring).

  Args:
    noise_multiplier: `z`: the central noise standard deviation over `clip`.
    clients_per_round: `m`, the clients each round (each adds `1/m` of the
      noise variance).
    clip: `C`, the fixed L2 clip norm.
    dim: `d`, the update's coordinates; `create` refuses another size, so the
      accounting's `d` is the one summed.
    bits: The secure sum's bit width.
  """

  def __init__(self, noise_multiplier: float, clients_per_round: int, *, clip: float, dim: int,
               bits: int = DEFAULT_BITS):
    self.params = skellam_parameters(float(noise_multiplier), clients_per_round, float(clip),
                                     bits, dim)
    self.clip, self.bits = float(clip), bits

  def create(self, value_type):
    size = _num_elements(value_type)
    if size != self.params.dim:
      raise ValueError(f'The distributed Skellam sum was accounted for {self.params.dim} '
                       f'coordinates, but the update has {size}.')
    params, bits = self.params, self.bits
    inner = tff.aggregators.SecureModularSumFactory(2**bits, symmetric_range=True)
    inner = modular_clipping.ModularClippingSumFactory(-(2**(bits - 1)), 2**(bits - 1), inner)
    query = OsSeededSkellamSumQuery(l1_norm_bound=params.l1_bound,
                                    l2_norm_bound=params.l2_bound,
                                    local_stddev=params.local_stddev)
    inner = tff.aggregators.DifferentiallyPrivateFactory(query=query,
                                                         record_aggregation_factory=inner)
    inner = discretization.DiscretizationFactory(inner, scale_factor=params.scale,
                                                 stochastic=True, beta=0.0,
                                                 prior_norm_bound=self.clip)
    inner = robust.clipping_factory(
        self.clip, inner, clipped_count_sum_factory=tff.aggregators.SecureSumFactory(
            upper_bound_threshold=1, lower_bound_threshold=0))
    inner = tff.aggregators.HadamardTransformFactory(inner)
    return _flattened(tff.aggregators.concat_factory(inner).create(value_type))


def _flattened(process: tff.templates.AggregationProcess) -> tff.templates.AggregationProcess:
  """`process` with `next` in TFF's call-dominant form: the same computation, not nested.

  The nine nested aggregators serialize to a computation deeper than the
  protobuf parser's recursion limit (100) once the learning process and
  fedtff's dataset composition wrap it; TFF's compiler inlines it.
  """
  flat = transformations.to_call_dominant(process.next.to_building_block())
  next_fn = computation_impl.ConcreteComputation(
      computation_proto=flat.proto, context_stack=tff.framework.get_context_stack(),
      annotated_type=process.next.type_signature)
  return tff.templates.AggregationProcess(process.initialize, next_fn)


def ddp_aggregator(noise_multiplier: float, clients_per_round: int, *, clip: float, dim: int,
                   bits: int = DEFAULT_BITS) -> tff.aggregators.UnweightedAggregationFactory:
  """The distributed Skellam mean: `SkellamSumFactory` divided by the secure count of clients.

  Args:
    noise_multiplier: `z`: the central noise standard deviation over `clip`.
    clients_per_round: `m`.
    clip: `C`, the fixed L2 clip norm.
    dim: `d`, the model update's coordinates (the model's trainable weights).
    bits: The secure sum's bit width, 1 to 22.

  Returns:
    A `tff.aggregators.UnweightedMeanFactory`, for unweighted FedAvg.
  """
  return tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=SkellamSumFactory(noise_multiplier, clients_per_round, clip=clip,
                                          dim=dim, bits=bits),
      count_sum_factory=tff.aggregators.SecureSumFactory(upper_bound_threshold=1,
                                                         lower_bound_threshold=0))


@functools.lru_cache(maxsize=8)  # A run asks for it three times: z, aggregator, ledger.
def model_dim(model_fn) -> int:
  """The number of trainable coordinates of `model_fn()`'s model (what a round sums)."""
  model = model_fn()
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))
