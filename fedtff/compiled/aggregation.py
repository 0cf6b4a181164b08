"""The model-update aggregators the compiled engine computes inside its round graph.

Each mirrors the arithmetic of the `tff.aggregators` factory that
`fedtff.algorithms.aggregators.build_aggregator` builds for the same `AggregatorSpec`:

* `mean`: `MeanFactory` (sum of `update * weight`, divided by the sum of the
  weights) or, unweighted, `UnweightedMeanFactory` (divided by the number of
  clients);
* `robust`: `zeroing_factory` then `clipping_factory` around the mean. An
  update whose global L-infinity norm (the largest absolute coordinate, TFF's
  `zeroing_factory` default) exceeds the zeroing norm is zeroed; one whose
  global L2 norm exceeds the clipping norm is scaled down to it. Each norm is
  fixed (`clip_norm`, `zeroing_norm`) or adaptive: TFF's
  `PrivateQuantileEstimationProcess.no_noise` with geometric updates (Andrew
  et al. 2021, arXiv 1905.03871, without noise). The round uses the reported
  norm `multiplier * C + increment`; then `C <- C * exp(-lr * (fraction -
  target))`, `fraction` the share of this round's clients whose (pre-zeroing,
  pre-clipping) norm is at most `C`. Clipping adapts `C` from 1.0 towards the
  `target_unclipped_quantile` (lr 0.2); zeroing from 10.0 towards the 0.98
  quantile (lr ln 10, reported as `2 C + 1`), as `fedtff.algorithms.aggregators` sets
  them. The clipping estimator sees the norms after zeroing, as in TFF. There
  is no randomness: the results equal TFF's.
* `dp` with a fixed `clip_norm`: `DifferentiallyPrivateFactory.gaussian_fixed`
  (McMahan et al., "Learning Differentially Private Recurrent Language
  Models", ICLR 2018): clip each update in L2, sum, add Gaussian noise of
  standard deviation `noise_multiplier * clip_norm`, divide by
  `clients_per_round`. The noise is drawn by TensorFlow's stateless RNG from
  the round's noise seed (`result`), which the runner derives from a secret
  drawn from the OS, so it is not TFF's draw and cannot be regenerated from
  the public config.
* `dp` with adaptive clipping (`clip_norm` None):
  `DifferentiallyPrivateFactory.gaussian_adaptive` (Andrew et al., "Differentially
  Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871), as
  TF Privacy's `QuantileAdaptiveClipSumQuery` with geometric updates computes
  it: clip each update to the current norm `C`, sum, add noise `z_v * C`,
  divide by `clients_per_round`; sum the bits `[norm <= C] - 1/2`, add noise
  `sigma_b`, divide by `clients_per_round`, add 1/2, clamp to [0, 1] and set
  `C <- C * exp(-lr * (fraction - target))`. `z_v` and `sigma_b` are
  `fedtff.privacy.mechanisms.adaptive_noise_split`'s. `C` is the state's
  `aggregator` field. Its noise comes from the same round seed.

* `secure`: `fedtff.privacy.mechanisms.secure_mean`,
  TFF's `SecureSumFactory` in the mean: each coordinate of the (weighted)
  update is clipped to `[-bound, bound]` and quantized to 32 bits with
  deterministic rounding, by TFF's own client and server shift functions
  (`tensorflow_federated...aggregators.primitives`); the integers are summed,
  dequantized and divided by the weights' secure sum (quantized in
  `[0, 2**20 - 1]`) or the number of clients. TFF's local runtime sums the
  integers in the clear (int64, no wrap-around), as here. The bound is
  `clip_norm`, or (None) adaptive: `2 C`, with `C` TFF's no-noise quantile
  estimate (from 50, towards the 0.95 quantile of each client's largest
  |coordinate|, lr 1.0), whose records `[max <= C] - 1/2` and `1.0` are
  themselves summed securely in `[-1, 1]`. No randomness: the results equal
  TFF's. As `build_aggregator`, it applies no zeroing.

* `masking_simulation`: `fedtff.privacy.masking_simulation`'s arithmetic with
  the masks left out, because they cancel in the sum: each update is clipped
  to L2 norm `clip_norm`, quantized to the levels `-L..L`, encoded mod
  `2**masking_bits` and summed mod `2**masking_bits` (wrapping around); the sum
  is decoded, dequantized and divided by the number of clients. The functions
  are the module's own; the result equals TFF's bit for bit before the
  division. As there, more clients than `clients_per_round` are refused
  (`check_round`), and a model too large for the bits is refused at build.

* `compression`: TFF's `EncodedSumFactory.quantize_above_threshold` in the
  mean (with clipping if `clip_norm` is set and zeroing if `zeroing`, as
  `build_aggregator` wraps it): each tensor of the (weighted) update with more
  than `quantization_threshold` elements is quantized to `quantization_bits`
  with randomized rounding (`fedtff.compiled.quantize`, drawn from the round's
  noise seed, not TFF's: within one quantization step of TFF's); smaller
  tensors are summed as they are, exactly as TFF.

* the robust rules (`median`, `trimmed_mean`, `krum`, `multi_krum`, `bulyan`,
  `geometric_median`) and update-side attacks: the round keeps each client's
  flattened update in a `tf.TensorArray` (`Accumulator.secure`) and applies
  `fedtff.algorithms.robust.server_update`, the function the TFF engine's
  `RobustFactory` applies to the updates it gathers. These rounds run without
  XLA (the stack's size is the cohort's).

* `privacy.mechanism='ddp_skellam'` (`fedtff.privacy.ddp.ddp_aggregator`'s
  factory): the distributed Skellam mean of `fedtff.compiled.ddp`.

Anything else (custom factories) is refused with a `ValueError`: those run on the
TFF engine.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from tensorflow_federated.python.aggregators import primitives

from fedtff.algorithms import aggregators
from fedtff.algorithms import attacks
from fedtff.algorithms import robust
from fedtff.compiled import ddp as compiled_ddp
from fedtff.compiled import quantize
from fedtff.compiled import tree as tree_lib
from fedtff.privacy import masking_simulation
from fedtff.privacy import mechanisms

_USE_TFF = "use engine='tff'"
_KINDS = ('mean', 'robust', 'dp', 'secure', 'masking_simulation', 'compression') + robust.RULES  # The AggregatorSpec kinds computed here.


@dataclasses.dataclass(frozen=True)
class AdaptiveClip:
  """DP adaptive clipping's parameters; see the module docstring."""
  initial_clip: float
  target_quantile: float
  learning_rate: float
  value_noise_multiplier: float
  count_stddev: float


class Quantile(mechanisms.AdaptiveNorm):
  """An adaptive norm (`fedtff.privacy.mechanisms.AdaptiveNorm`, the parameters the
  TFF engine builds its estimation process from) with that process's arithmetic
  (see the module docstring)."""

  @classmethod
  def of(cls, norm: mechanisms.AdaptiveNorm) -> 'Quantile':
    return cls(**dataclasses.asdict(norm))

  def report(self, estimate: tf.Tensor) -> tf.Tensor:
    """The norm used in a round, from the estimate `C` (TFF's affine map)."""
    if self.multiplier == 1.0 and self.increment == 0.0:
      return estimate
    return self.multiplier * estimate + self.increment

  def next(self, estimate: tf.Tensor, below_sum: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """`NoPrivacyQuantileEstimatorQuery.get_noised_result` with geometric updates."""
    below = below_sum / count + 0.5
    below = tf.minimum(1.0, tf.maximum(0.0, below))
    update = tf.constant(self.learning_rate, tf.float32) * (
        below - tf.constant(self.target, tf.float32))
    return estimate * tf.math.exp(-update)


# The TFF engine's adaptive norms, defined once: fedtff.algorithms.aggregators' robust
# zeroing and fedtff.privacy.mechanisms.secure_mean's bound (secure_estimation=True).
_ADAPTIVE_ZERO = Quantile.of(aggregators.ADAPTIVE_ZEROING)
_SECURE_BOUND = Quantile.of(mechanisms.SECURE_BOUND)


@dataclasses.dataclass(frozen=True)
class Aggregation:
  """What the round graph does with client updates; see the module docstring.

  Attributes:
    weighted: Whether the mean weights updates by the client weights.
    clip_norm: Fixed L2 clipping norm, or None.
    zeroing_norm: Fixed L2 norm above which an update is zeroed, or None.
    noise_stddev: For DP: the Gaussian noise on the sum (None without DP).
    denominator: For DP: what the noised sum is divided by.
    adaptive: For DP with adaptive clipping: its parameters (then `clip_norm`
      and `noise_stddev` are None: they follow the state's clip norm).
    clip_quantile: For `robust` with adaptive clipping: its estimator.
    tree: For DP-FTRL: the tree whose noise replaces DP-FedAvg's (then
      `clip_norm`, `noise_stddev` and `denominator` are the tree's, and the
      state is the tree's, advanced outside the round graph: `before_round`).
    zero_quantile: For adaptive zeroing: its estimator.
    secure_bound: For `secure`: the fixed per-coordinate bound.
    masking: For `masking_simulation`: its factory (clip bound, bits, levels).
    compression_threshold: For `compression`: tensors with more elements than
      this are quantized; smaller ones are summed as they are.
    quantization_bits: For `compression`: the quantized tensors' bits.
  """
  weighted: bool
  clip_norm: Optional[float] = None
  zeroing_norm: Optional[float] = None
  noise_stddev: Optional[float] = None
  denominator: Optional[float] = None
  adaptive: Optional[AdaptiveClip] = None
  clip_quantile: Optional[Quantile] = None
  zero_quantile: Optional[Quantile] = None
  secure_bound: Optional[float] = None
  masking: Optional[masking_simulation.MaskingSimulationSumFactory] = None
  compression_threshold: Optional[int] = None
  secure_quantile: Optional[Quantile] = None
  skellam: Optional[compiled_ddp.Skellam] = None  # The distributed Skellam mean.
  quantization_bits: Optional[int] = None
  robust_rule: Optional[robust.Rule] = None  # Gathered: a robust rule (or 'mean' with an attack).
  attack: Optional[attacks.AttackSpec] = None  # Gathered: the update-side attack.
  tree: Optional[tree_lib.TreeAggregation] = None  # DP-FTRL: the tree's noise (fedtff.compiled.tree).

  @property
  def clips(self) -> bool:
    """Whether `robust` clipping (fixed or adaptive) applies."""
    return self.clip_norm is not None or self.clip_quantile is not None

  @property
  def zeroes(self) -> bool:
    """Whether zeroing (fixed or adaptive) applies."""
    return self.zeroing_norm is not None or self.zero_quantile is not None

  @property
  def is_dp(self) -> bool:
    return self.noise_stddev is not None or self.adaptive is not None

  def initial_state(self) -> Any:
    """The aggregator's part of the compiled state: the DP clip norm; or for
    adaptive robust norms, a dict of their estimates `C` ('clipping_norm',
    'zeroing_norm'); or ()."""
    if self.tree is not None:
      return self.tree.initial_state()
    if self.adaptive is not None:
      return tf.constant(self.adaptive.initial_clip, tf.float32)
    if self.skellam is not None:  # The rotation seed.
      return compiled_ddp.initial_state()
    if self.robust_rule is not None:  # The round, with an update attack.
      return tf.nest.map_structure(tf.constant, robust.initial_state(self.attack))
    estimates = collections.OrderedDict(
        (name, tf.constant(quantile.initial, tf.float32))
        for name, quantile in (('zeroing_norm', self.zero_quantile),
                               ('clipping_norm', self.clip_quantile),
                               ('secure_bound', self.secure_quantile)) if quantile is not None)
    return estimates or ()


def round_state_template(aggregation: Aggregation, state: Any) -> Any:
  """The aggregator state the round graph takes, shaped like a round's: for
  DP-FTRL the round's tree noise (`tree.RoundNoise`) in place of the tree;
  otherwise `state` itself."""
  return aggregation.tree.round_noise_template(state) if aggregation.tree else state


def before_round(aggregation: Aggregation, state: Any) -> Tuple[Any, Any]:
  """Runs outside the round graph, before it: `(the aggregator state the round
  takes, the aggregator state after the round if decided here, else None)`.

  DP-FTRL's tree advances here (its level buffers change shape, which XLA does
  not compile): the round takes the tree's noise, and the advanced tree is the
  state after the round. Every other aggregation's state passes through.
  """
  if aggregation.tree is None:
    return state, None
  return aggregation.tree.advance(state)


def after_round(round_state: Any, decided_before: Any) -> Any:
  """The aggregator state after the round: what `before_round` decided, or what
  the round graph returned."""
  return round_state if decided_before is None else decided_before


def xla_compatible(aggregation: Aggregation) -> bool:
  """Whether XLA compiles the aggregation: not the distributed Skellam mean, whose
  Poisson draws XLA has no kernel for (its round runs as a plain TF graph)."""
  return aggregation.skellam is None and aggregation.robust_rule is None


def _refuse(what: str) -> ValueError:
  return ValueError(f'The compiled engine does not implement {what}; {_USE_TFF}.')


def from_spec(aggregator: Any, *, weighted: bool) -> Aggregation:
  """The `Aggregation` of `aggregator`, an `AggregatorSpec` or None (mean).

  Raises:
    ValueError: For an aggregator the compiled engine does not implement, or
      options that do not fit (fedtff's own checks of the spec).
  """
  if aggregator is None:
    return Aggregation(weighted)
  tree = tree_lib.from_factory(aggregator)
  if tree is not None:  # DP-FedAvg's clipping and sum; the tree's noise.
    return Aggregation(weighted, clip_norm=tree.clip_norm, noise_stddev=tree.noise_stddev,
                       denominator=tree.denominator, tree=tree)
  skellam = compiled_ddp.from_factory(aggregator)
  if skellam is not None:
    aggregators.check_weighting(aggregator, weighted=weighted, algorithm='The distributed '
                                'Skellam mean')
    return Aggregation(weighted, skellam=skellam)
  if not isinstance(aggregator, aggregators.AggregatorSpec):
    raise ValueError(
        'The compiled engine does not implement custom tff.aggregators factories (got '
        f"{type(aggregator).__name__}); pass fedtff.AggregatorSpec('mean', 'robust' or 'dp' with "
        f'fixed norms), or {_USE_TFF}.')
  aggregators.build_aggregator(aggregator, weighted=weighted)  # fedtff's checks of the options.
  spec = aggregator
  if aggregators.gathers(spec):
    attack = spec.attack if spec.attack is not None and spec.attack.on_updates else None
    return Aggregation(weighted, robust_rule=robust.rule_of(spec) or robust.Rule('mean'),
                       attack=attack)
  if spec.kind not in _KINDS:  # compression, masking_simulation, and any added later.
    raise _refuse(f'the {spec.kind!r} aggregator')
  if spec.kind == 'mean':
    return Aggregation(weighted)
  if spec.kind == 'compression':  # Clipping only with a clip_norm, as build_aggregator.
    return Aggregation(weighted, clip_norm=spec.clip_norm,
                       zeroing_norm=spec.zeroing_norm if spec.zeroing else None,
                       zero_quantile=(_ADAPTIVE_ZERO if spec.zeroing and spec.zeroing_norm is None
                                      else None),
                       compression_threshold=spec.quantization_threshold,
                       quantization_bits=spec.quantization_bits)
  if spec.kind == 'masking_simulation':
    return Aggregation(weighted, masking=masking_simulation.MaskingSimulationSumFactory(
        spec.clip_norm, spec.clients_per_round, bits=spec.masking_bits))
  if spec.kind == 'secure':
    # As fedtff.algorithms.aggregators.build_aggregator: `secure_mean` alone (it applies no zeroing).
    if spec.clip_norm is None:  # mechanisms.secure_mean's estimator, summed securely.
      return Aggregation(weighted, secure_bound=0.0, secure_quantile=_SECURE_BOUND)
    return Aggregation(weighted, secure_bound=float(spec.clip_norm))
  if spec.kind == 'dp' and spec.clip_norm is None:
    value_multiplier, count_stddev = mechanisms.adaptive_noise_split(
        spec.noise_multiplier, spec.clients_per_round, spec.clipped_count_stddev)
    return Aggregation(weighted, denominator=float(spec.clients_per_round), adaptive=AdaptiveClip(
        mechanisms.DEFAULT_INITIAL_CLIP, spec.target_unclipped_quantile,
        mechanisms.DEFAULT_CLIP_LEARNING_RATE, value_multiplier, count_stddev))
  if spec.kind == 'dp':
    return Aggregation(weighted, noise_stddev=spec.noise_multiplier * spec.clip_norm,
                       denominator=float(spec.clients_per_round), clip_norm=spec.clip_norm)
  clip_quantile = (Quantile.of(aggregators.adaptive_clipping(spec.target_unclipped_quantile))
                   if spec.clip_norm is None else None)
  zero_quantile = _ADAPTIVE_ZERO if spec.zeroing and spec.zeroing_norm is None else None
  return Aggregation(weighted, clip_norm=spec.clip_norm,
                     zeroing_norm=spec.zeroing_norm if spec.zeroing else None,
                     clip_quantile=clip_quantile, zero_quantile=zero_quantile)


def _global_l2_norm(values: List[tf.Tensor]) -> tf.Tensor:
  """TFF's `robust._global_l2_norm`, operation for operation."""
  squares = [tf.cast(tf.norm(v, ord=2) ** 2, tf.float32) for v in values]
  return tf.math.sqrt(tf.reduce_sum(tf.stack(squares)))


def _global_inf_norm(values: List[tf.Tensor]) -> tf.Tensor:
  """TFF's `robust._global_inf_norm` (`zeroing_factory`'s default norm)."""
  norms = [tf.cast(tf.norm(v, ord=np.inf), tf.float32) for v in values]
  return tf.reduce_max(tf.stack(norms))


def _zero(values: List[tf.Tensor], norm) -> Tuple[List[tf.Tensor], tf.Tensor, tf.Tensor]:
  """`zeroing_factory`'s zero_fn: (values, global L-inf norm, whether zeroed)."""
  global_norm = _global_inf_norm(values)
  should_zero = global_norm > norm
  zeroed = tf.cond(should_zero, lambda: [tf.zeros_like(v) for v in values], lambda: values)
  return zeroed, global_norm, tf.cast(should_zero, tf.int32)


def _clip(values: List[tf.Tensor], norm) -> Tuple[List[tf.Tensor], tf.Tensor, tf.Tensor]:
  """`clipping_factory`'s clip_fn: (values, global L2 norm, whether clipped)."""
  global_norm = _global_l2_norm(values)
  divisor = global_norm / norm
  clipped = tf.cond(global_norm > norm,
                    lambda: [v / tf.cast(divisor, v.dtype) for v in values], lambda: values)
  return clipped, global_norm, tf.cast(global_norm > norm, tf.int32)


def _below(norm: tf.Tensor, estimate: tf.Tensor) -> tf.Tensor:
  """`QuantileEstimatorQuery.preprocess_record`: [norm <= C] - 1/2."""
  return tf.cast(norm <= estimate, tf.float32) - 0.5


def robust_norms(aggregation: Aggregation, state: Any) -> Tuple[Any, Any]:
  """The (zeroing, clipping) norms a round uses: fixed, or reported from `state`."""
  zero = (aggregation.zero_quantile.report(state['zeroing_norm'])
          if aggregation.zero_quantile is not None else aggregation.zeroing_norm)
  clip = (aggregation.clip_quantile.report(state['clipping_norm'])
          if aggregation.clip_quantile is not None else aggregation.clip_norm)
  return zero, clip


class Accumulator(NamedTuple):
  """The running sums of one round's aggregation (a `tf.while_loop` variable)."""
  value_sum: List[tf.Tensor]
  weight_sum: tf.Tensor
  zeroed: tf.Tensor
  clipped: tf.Tensor
  below_sum: tf.Tensor  # Adaptive clipping: the sum of [norm <= C] - 1/2.
  zero_below_sum: tf.Tensor  # Adaptive zeroing: the same for the zeroing estimate.
  count: tf.Tensor  # The number of clients (the quantile estimators' denominator).
  secure: Any = ()  # For `secure`: a `SecureSums`.


class SecureSums(NamedTuple):
  """`secure`'s integer sums and clipped counts (`SecureSumFactory`'s measurements)."""
  values: List[tf.Tensor]  # The quantized (int64) sums of the (weighted) updates.
  weight: tf.Tensor  # The quantized sum of the weights (weighted means only).
  upper_clipped: tf.Tensor
  lower_clipped: tf.Tensor
  weight_upper_clipped: tf.Tensor
  weight_lower_clipped: tf.Tensor
  bound_below: tf.Tensor  # Adaptive bound: quantized sum of [|value| max <= C] - 1/2.
  bound_ones: tf.Tensor  # Adaptive bound: quantized sum of the clients' 1.0 weights.


_WEIGHT_BOUNDS = mechanisms.SECURE_WEIGHT_BOUNDS  # secure_mean's range of the weights' sum.


def initial(trainable: List[tf.Tensor], aggregation: Optional[Aggregation] = None,
            noise_seed: Optional[tf.Tensor] = None) -> Accumulator:
  """The round's empty sums (`aggregation` adds `secure`'s integer sums; the
  distributed Skellam mean's also carry `noise_seed`)."""
  zero = tf.constant(0, tf.int32)
  secure = ()
  if aggregation is not None and aggregation.skellam is not None:
    secure = compiled_ddp.initial(aggregation.skellam, noise_seed)
  if _quantizes(aggregation, trainable):  # The seed of the rounding.
    secure = tf.convert_to_tensor(noise_seed, tf.int64)
  if aggregation is not None and aggregation.masking is not None:
    size = sum(int(np.prod(v.shape)) for v in trainable)
    aggregation.masking.check_quantization(size)  # TFF's refusal, with its message.
    secure = tf.zeros([size], tf.int64)  # The residues' sum mod 2**bits.
  if aggregation is not None and aggregation.robust_rule is not None:  # The clients' updates.
    size = sum(int(np.prod(v.shape)) for v in trainable)
    secure = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[size])
  if aggregation is not None and aggregation.secure_bound is not None:
    secure = SecureSums([tf.zeros(v.shape, tf.int64) for v in trainable],
                        tf.constant(0, tf.int64), zero, zero, zero, zero,
                        tf.constant(0, tf.int64), tf.constant(0, tf.int64))
  return Accumulator([tf.zeros_like(v) for v in trainable], tf.constant(0.0), zero, zero,
                     tf.constant(0.0), tf.constant(0.0), tf.constant(0.0), secure)


def _quantizes(aggregation: Optional[Aggregation], values: List[tf.Tensor]) -> bool:
  """Whether `compression` quantizes a tensor of `values`."""
  return (aggregation is not None and aggregation.compression_threshold is not None and
          quantize.quantizes(values, aggregation.compression_threshold))


def _secure_bounds(aggregation: Aggregation, state: Any = ()) -> Tuple[tf.Tensor, tf.Tensor]:
  """(lower, upper): fixed, or the adaptive bound reported from `state` and its negative."""
  if aggregation.secure_quantile is not None:
    upper = tf.cast(aggregation.secure_quantile.report(state['secure_bound']), tf.float32)
    return upper * -1.0, upper
  return (tf.constant(-aggregation.secure_bound, tf.float32),
          tf.constant(aggregation.secure_bound, tf.float32))


_RECORD_BOUNDS = (-1.0, 1.0)  # SecureSumFactory(1.0) sums the quantile records.


def _quantize(values: List[tf.Tensor], lower: tf.Tensor, upper: tf.Tensor):
  """`SecureSumFactory`'s client side: (int64 values, [upper < max], [lower > min]).

  The quantization is TFF's own (`primitives._client_tensor_shift_for_secure_sum`:
  clip to [lower, upper], scale to [0, 2**32 - 1], round to nearest).
  """
  value_max = tf.reduce_max(tf.stack([tf.reduce_max(v) for v in values]))
  value_min = tf.reduce_min(tf.stack([tf.reduce_min(v) for v in values]))
  quantized = [primitives._client_tensor_shift_for_secure_sum(v, lower, upper)  # pylint: disable=protected-access
               for v in values]
  return (quantized, tf.cast(upper < value_max, tf.int32),
          tf.cast(lower > value_min, tf.int32))


def _accumulate_secure(aggregation: Aggregation, sums: SecureSums, update: List[tf.Tensor],
                       weight: tf.Tensor, state: Any = ()) -> SecureSums:
  """Adds one client to `secure`'s sums (weighted: `update * weight` and the weight)."""
  if aggregation.weighted:
    update = [v * tf.cast(weight, v.dtype) for v in update]
  quantized, upper, lower = _quantize(update, *_secure_bounds(aggregation, state))
  bound_below, bound_ones = sums.bound_below, sums.bound_ones
  if aggregation.secure_quantile is not None:  # _create_update_state_single_process.
    value_max = tf.reduce_max(tf.stack([tf.reduce_max(v) for v in update]))
    value_min = tf.reduce_min(tf.stack([tf.reduce_min(v) for v in update]))
    abs_max = tf.maximum(tf.abs(value_min), tf.abs(value_max))
    record = [_below(abs_max, state['secure_bound']), tf.constant(1.0)]
    low, high = (tf.constant(b, tf.float32) for b in _RECORD_BOUNDS)
    below_q, ones_q = [primitives._client_tensor_shift_for_secure_sum(r, low, high)  # pylint: disable=protected-access
                       for r in record]
    bound_below, bound_ones = bound_below + below_q, bound_ones + ones_q
  weight_sum, weight_upper, weight_lower = sums.weight, sums.weight_upper_clipped, (
      sums.weight_lower_clipped)
  if aggregation.weighted:
    low, high = _WEIGHT_BOUNDS
    (quantized_weight,), w_upper, w_lower = _quantize(
        [weight], tf.constant(low, tf.float32), tf.constant(high, tf.float32))
    weight_sum, weight_upper, weight_lower = (
        weight_sum + quantized_weight, weight_upper + w_upper, weight_lower + w_lower)
  return SecureSums([s + q for s, q in zip(sums.values, quantized)], weight_sum,
                    sums.upper_clipped + upper, sums.lower_clipped + lower,
                    weight_upper, weight_lower, bound_below, bound_ones)


def _next_secure_bound(aggregation: Aggregation, acc: Accumulator, state: Any) -> Any:
  """The adaptive bound's estimate after the round, from the securely summed records."""
  summands = tf.cast(acc.count, tf.int32)
  low, high = (tf.constant(b, tf.float32) for b in _RECORD_BOUNDS)
  below, ones = [primitives._server_tensor_shift_for_secure_sum(  # pylint: disable=protected-access
      summands, s, low, high, tf.float32) for s in (acc.secure.bound_below, acc.secure.bound_ones)]
  return collections.OrderedDict(secure_bound=aggregation.secure_quantile.next(
      state['secure_bound'], below, ones))


def _secure_result(aggregation: Aggregation, acc: Accumulator, state: Any = ()
                  ) -> List[tf.Tensor]:
  """`SecureSumFactory`'s server side (TFF's dequantization), then the mean."""
  summands = tf.cast(acc.count, tf.int32)
  lower, upper = _secure_bounds(aggregation, state)
  sums = [primitives._server_tensor_shift_for_secure_sum(  # pylint: disable=protected-access
      summands, s, lower, upper, tf.float32) for s in acc.secure.values]
  if aggregation.weighted:
    low, high = _WEIGHT_BOUNDS
    denominator = primitives._server_tensor_shift_for_secure_sum(  # pylint: disable=protected-access
        summands, acc.secure.weight, tf.constant(low, tf.float32),
        tf.constant(high, tf.float32), tf.float32)
  else:
    denominator = summands  # SecureSumFactory(1, 0) sums the clients' ones exactly.
  return [tf.math.divide(s, tf.cast(denominator, s.dtype)) for s in sums]


def _accumulate_masked(factory: masking_simulation.MaskingSimulationSumFactory,
                       residue_sum: tf.Tensor, update: List[tf.Tensor]) -> tf.Tensor:
  """Adds one client's residues mod `2**bits`: the masking simulation without its
  masks, which cancel in the sum (fedtff.privacy.masking_simulation's own
  clip, quantize and encode)."""
  ms = masking_simulation
  clipped = ms.clip(ms.flatten(update), factory._clip_bound, factory._norm)  # pylint: disable=protected-access
  residues = ms.encode(ms.quantize(clipped, factory._clip_bound, factory._levels),  # pylint: disable=protected-access
                       factory._bits)  # pylint: disable=protected-access
  return ms.encode(residue_sum + residues, factory._bits)  # pylint: disable=protected-access


def _masked_result(factory: masking_simulation.MaskingSimulationSumFactory, acc: Accumulator,
                   trainable_sum: List[tf.Tensor]) -> List[tf.Tensor]:
  """Decodes the residues' sum (wrapping mod `2**bits`) and divides by the clients."""
  ms = masking_simulation
  count = tf.cast(acc.count, tf.int32)
  total = ms.dequantize(ms.decode(acc.secure, factory._bits),  # pylint: disable=protected-access
                        factory._clip_bound, factory._levels)  # pylint: disable=protected-access
  sums = ms.unflatten(total, [tf.TensorSpec(s.shape, s.dtype) for s in trainable_sum])
  return [tf.math.divide(s, tf.cast(count, s.dtype)) for s in sums]


def check_round(aggregation: Aggregation, num_clients: int) -> None:
  """Refuses a round the aggregator cannot take, as TFF's process fails it.

  Raises:
    ValueError: For the masking simulation, more clients than its
      `clients_per_round` (TFF's key table holds that many keys; its server
      check fails the round); for a robust rule, fewer clients than it needs
      (`fedtff.algorithms.robust.Rule.check_cohort`).
  """
  if aggregation.robust_rule is not None:
    aggregation.robust_rule.check_cohort(num_clients)
  masking = aggregation.masking
  if masking is not None and num_clients > masking._max_clients:  # pylint: disable=protected-access
    raise ValueError(
        f'The masking_simulation aggregator takes at most clients_per_round='
        f'{masking._max_clients} clients per round, got {num_clients}.')  # pylint: disable=protected-access


def _secure_measurements(aggregation: Aggregation, sums: SecureSums, state: Any = ()
                        ) -> collections.OrderedDict:
  lower, upper = _secure_bounds(aggregation, state)
  value = collections.OrderedDict(
      secure_upper_clipped_count=sums.upper_clipped,
      secure_lower_clipped_count=sums.lower_clipped,
      secure_upper_threshold=upper, secure_lower_threshold=lower)
  if aggregation.weighted:
    low, high = _WEIGHT_BOUNDS
    weight = collections.OrderedDict(
        secure_upper_clipped_count=sums.weight_upper_clipped,
        secure_lower_clipped_count=sums.weight_lower_clipped,
        secure_upper_threshold=tf.constant(high, tf.float32),
        secure_lower_threshold=tf.constant(low, tf.float32))
    return collections.OrderedDict(mean_value=value, mean_weight=weight)
  zero = tf.constant(0, tf.int32)
  count = collections.OrderedDict(  # SecureSumFactory(1, 0) over the clients' ones.
      secure_upper_clipped_count=zero, secure_lower_clipped_count=zero,
      secure_upper_threshold=tf.constant(1, tf.int32), secure_lower_threshold=zero)
  return collections.OrderedDict(mean_value=value, mean_count=count)


def accumulate(aggregation: Aggregation, acc: Accumulator, update: List[tf.Tensor],
               weight: tf.Tensor, clip_state: Any = ()) -> Accumulator:
  """Adds one client's update (zeroed, clipped and weighted as configured).

  `clip_state` is the state's clip norm with adaptive clipping.
  """
  if aggregation.skellam is not None:  # clip_state: the rotation seed.
    return acc._replace(secure=compiled_ddp.accumulate(aggregation.skellam, acc.secure, update,
                                                       acc.count, clip_state),
                        count=acc.count + 1.0)
  if aggregation.robust_rule is not None:  # Kept for the rule: the update, flattened.
    return acc._replace(secure=acc.secure.write(tf.cast(acc.count, tf.int32),
                                                robust.flatten(update)),
                        count=acc.count + 1.0)
  zeroed = clipped = tf.constant(0, tf.int32)
  below = zero_below = tf.constant(0.0)
  zero_norm, clip_norm = robust_norms(aggregation, clip_state) if not aggregation.is_dp else (
      None, None)
  if zero_norm is not None:
    update, norm, zeroed = _zero(update, zero_norm)
    if aggregation.zero_quantile is not None:
      zero_below = _below(norm, clip_state['zeroing_norm'])
  if aggregation.adaptive is not None:  # TF Privacy's GaussianSumQuery and QuantileEstimatorQuery.
    update, norm = tf.clip_by_global_norm(update, clip_state)
    below = tf.cast(norm <= clip_state, tf.float32) - 0.5
  elif aggregation.is_dp:
    update, _ = tf.clip_by_global_norm(update, aggregation.clip_norm)
  elif clip_norm is not None:
    update, norm, clipped = _clip(update, clip_norm)
    if aggregation.clip_quantile is not None:
      below = _below(norm, clip_state['clipping_norm'])
  secure = acc.secure
  if aggregation.masking is not None:
    secure = _accumulate_masked(aggregation.masking, secure, update)
  if aggregation.secure_bound is not None:
    secure = _accumulate_secure(aggregation, secure, update, weight, clip_state)
  if aggregation.weighted and not aggregation.is_dp:
    update = [v * tf.cast(weight, v.dtype) for v in update]
  else:
    weight = tf.constant(1.0)
  if _quantizes(aggregation, update):  # EncodedSumFactory sums the (weighted) value.
    update = quantize.encoded_values(
        update, bits=aggregation.quantization_bits, threshold=aggregation.compression_threshold,
        seed=tf.random.experimental.stateless_fold_in(secure, tf.cast(acc.count, tf.int64)))
  return Accumulator([s + v for s, v in zip(acc.value_sum, update)], acc.weight_sum + weight,
                     acc.zeroed + zeroed, acc.clipped + clipped, acc.below_sum + below,
                     acc.zero_below_sum + zero_below, acc.count + 1.0, secure)


def _noised(value: tf.Tensor, stddev, noise_seed: tf.Tensor, index: int) -> tf.Tensor:
  """`value` plus Gaussian noise, stateless from the round's seed and the tensor's index."""
  seed = tf.random.experimental.stateless_fold_in(noise_seed, index)
  return value + tf.random.stateless_normal(tf.shape(value), seed=seed,
                                            stddev=tf.cast(stddev, value.dtype), dtype=value.dtype)


def result(aggregation: Aggregation, acc: Accumulator, noise_seed: tf.Tensor,
           clip_state: Any = ()) -> Tuple[List[tf.Tensor], Any]:
  """The aggregate (the (weighted) mean, or the DP mean noised from `noise_seed`,
  int64 [2]) and the next clip state (DP-FTRL: its mean with the round's tree
  noise, `clip_state`; see `before_round`)."""
  if aggregation.tree is not None:
    return tree_lib.mean(aggregation.tree, acc.value_sum, clip_state), ()
  if aggregation.adaptive is not None:
    return _adaptive_result(aggregation, acc, clip_state, noise_seed)
  if aggregation.robust_rule is not None:
    return _robust_result(aggregation, acc, clip_state)
  if aggregation.skellam is not None:
    return compiled_ddp.result(aggregation.skellam, acc.secure, acc.count, clip_state,
                               [tf.TensorSpec(s.shape, s.dtype) for s in acc.value_sum])
  if aggregation.is_dp:
    noised = [_noised(s, aggregation.noise_stddev, noise_seed, i)
              for i, s in enumerate(acc.value_sum)]
    return [tf.truediv(s, tf.cast(aggregation.denominator, s.dtype)) for s in noised], clip_state
  if aggregation.secure_bound is not None:
    if aggregation.secure_quantile is not None:
      return (_secure_result(aggregation, acc, clip_state),
              _next_secure_bound(aggregation, acc, clip_state))
    return _secure_result(aggregation, acc), clip_state
  if aggregation.masking is not None:
    return _masked_result(aggregation.masking, acc, acc.value_sum), clip_state
  return ([tf.math.divide(s, tf.cast(acc.weight_sum, s.dtype)) for s in acc.value_sum],
          _next_estimates(aggregation, acc, clip_state))


def _robust_result(aggregation: Aggregation, acc: Accumulator, round_index: Any):
  """The rule (after the attack) over the kept updates; the next round's index."""
  specs = [tf.TensorSpec(s.shape, s.dtype) for s in acc.value_sum]
  attack = aggregation.attack
  update = robust.server_update(aggregation.robust_rule, attack, acc.secure.stack(),
                                round_index if attack is not None else 0)
  return robust.unflatten(update, specs), (round_index + 1 if attack is not None else round_index)


def _next_estimates(aggregation: Aggregation, acc: Accumulator, state: Any) -> Any:
  """The adaptive robust norms' estimates after the round (or `state`, ())."""
  if not state:
    return state
  new = collections.OrderedDict()
  if aggregation.zero_quantile is not None:
    new['zeroing_norm'] = aggregation.zero_quantile.next(
        state['zeroing_norm'], acc.zero_below_sum, acc.count)
  if aggregation.clip_quantile is not None:
    new['clipping_norm'] = aggregation.clip_quantile.next(
        state['clipping_norm'], acc.below_sum, acc.count)
  return new


def _adaptive_result(aggregation: Aggregation, acc: Accumulator, clip: tf.Tensor,
                     noise_seed: tf.Tensor):
  """QuantileAdaptiveClipSumQuery.get_noised_result with geometric updates."""
  adaptive, denominator = aggregation.adaptive, aggregation.denominator
  stddev = clip * adaptive.value_noise_multiplier
  mean = [tf.truediv(_noised(s, stddev, noise_seed, i), tf.cast(denominator, s.dtype))
          for i, s in enumerate(acc.value_sum)]
  count_index = len(acc.value_sum)  # The count's noise: an index no value tensor uses.
  below = _noised(acc.below_sum, adaptive.count_stddev, noise_seed, count_index) / denominator + 0.5
  below = tf.minimum(1.0, tf.maximum(0.0, below))
  new_clip = clip * tf.math.exp(-adaptive.learning_rate * (below - adaptive.target_quantile))
  return mean, tf.maximum(new_clip, 0.0)


def measurements(aggregation: Aggregation, acc: Accumulator,
                 clip_state: Any = (), *, round_state: Any = ()) -> collections.OrderedDict:
  """The aggregator measurements, in the nesting TFF's factories report them.

  `clip_state` is the DP clip norm after the round, as TFF reports it;
  `round_state` the state the round started from (adaptive robust norms are
  reported as used in the round).
  """
  if aggregation.tree is not None:
    return tree_lib.measurements(aggregation.tree)
  if aggregation.adaptive is not None:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(clip=clip_state),
                                   dp=())
  if aggregation.skellam is not None:
    return compiled_ddp.measurements(aggregation.skellam, acc.secure)
  if aggregation.robust_rule is not None:  # RobustFactory measures nothing.
    return ()
  if aggregation.is_dp:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(), dp=())
  if aggregation.secure_bound is not None:
    inner = _secure_measurements(aggregation, acc.secure, round_state)
  elif aggregation.masking is not None:
    inner = collections.OrderedDict(
        mean_value=collections.OrderedDict(masked_clients=tf.cast(acc.count, tf.int32)),
        mean_count=())
  else:
    inner = (collections.OrderedDict(mean_value=(), mean_weight=()) if aggregation.weighted
             else collections.OrderedDict(mean_value=(), mean_count=()))
  zero_norm, clip_norm = robust_norms(aggregation, round_state)
  if clip_norm is not None:
    inner = collections.OrderedDict(clipping=inner,
                                    clipping_norm=tf.convert_to_tensor(clip_norm, tf.float32),
                                    clipped_count=acc.clipped)
  if zero_norm is not None:
    inner = collections.OrderedDict(zeroing=inner,
                                    zeroing_norm=tf.convert_to_tensor(zero_norm, tf.float32),
                                    zeroed_count=acc.zeroed)
  return inner


def to_tff_state(aggregation: Aggregation, clip_state: Any, template: Any) -> Any:
  """TFF's aggregator state `template` with the compiled state's clip norm written in.

  With adaptive DP clipping the clip norm sits in the DP query's state
  (`DPAggregatorState.query_state`: `NormalizedQuery` around
  `QuantileAdaptiveClipSumQuery`): the sum query's `l2_norm_clip` and `stddev`
  and the quantile estimator's `current_estimate`. Otherwise the state is
  constant and `template` is returned.
  """
  if aggregation.tree is not None:
    return tree_lib.to_tff_state(clip_state, template)
  if aggregation.secure_quantile is not None:
    return _to_tff_secure_state(aggregation, clip_state, template)
  if aggregation.skellam is not None:
    return compiled_ddp.to_tff_state(clip_state, template)
  if aggregation.attack is not None:  # RobustFactory's state: the round index.
    return np.int32(clip_state)
  if aggregation.zero_quantile is not None or aggregation.clip_quantile is not None:
    return _to_tff_robust_state(aggregation, clip_state, template)
  if aggregation.adaptive is None:
    return template
  clip = np.float32(clip_state)
  query = template.query_state
  numerator = query.numerator_state
  sum_state = numerator.sum_state._replace(
      l2_norm_clip=clip, stddev=np.float32(clip * np.float32(numerator.noise_multiplier)))
  estimator = numerator.quantile_estimator_state._replace(current_estimate=clip)
  numerator = numerator._replace(sum_state=sum_state, quantile_estimator_state=estimator)
  return template._replace(query_state=query._replace(numerator_state=numerator))


def _robust_paths(aggregation: Aggregation) -> List[Tuple[str, Tuple[str, ...]]]:
  """Where each adaptive robust estimate sits in TFF's aggregator state.

  `zeroing_factory` wraps `clipping_factory`; each wrapper's state holds its
  norm process's state (`(QuantileEstimatorQuery state, ())`) under
  'zeroing_norm' or 'clipping_norm' and the inner state under 'inner_agg'.
  """
  paths = []
  outer = ('inner_agg',) if aggregation.zeroes else ()
  if aggregation.zero_quantile is not None:
    paths.append(('zeroing_norm', ('zeroing_norm',)))
  if aggregation.clip_quantile is not None:
    paths.append(('clipping_norm', outer + ('clipping_norm',)))
  return paths


def _to_tff_robust_state(aggregation: Aggregation, state: Any, template: Any) -> Any:
  def replace(node, path, estimate):
    if len(path) == 1:
      query_state, agg_state = node[path[0]]
      new = collections.OrderedDict(node)
      new[path[0]] = (query_state._replace(current_estimate=estimate), agg_state)
      return new
    new = collections.OrderedDict(node)
    new[path[0]] = replace(node[path[0]], path[1:], estimate)
    return new
  for name, path in _robust_paths(aggregation):
    template = replace(template, path, np.float32(state[name]))
  return template


def _to_tff_secure_state(aggregation: Aggregation, state: Any, template: Any) -> Any:
  """`secure_mean`'s state: the bound's quantile state is the value sum's state,
  under 'value_sum_process' (weighted) or first of the pair (unweighted)."""
  estimate = np.float32(state['secure_bound'])
  if aggregation.weighted:
    query_state, agg_state = template['value_sum_process']
    new = collections.OrderedDict(template)
    new['value_sum_process'] = (query_state._replace(current_estimate=estimate), agg_state)
    return new
  (query_state, agg_state), count_state = template
  return ((query_state._replace(current_estimate=estimate), agg_state), count_state)


def _secure_estimate(aggregation: Aggregation, tff_state: Any) -> Any:
  value_state = (tff_state['value_sum_process'] if aggregation.weighted else tff_state[0])
  return collections.OrderedDict(
      secure_bound=tf.constant(value_state[0].current_estimate, tf.float32))


def from_tff_state(aggregation: Aggregation, tff_state: Any) -> Any:
  """The compiled state's clip norm from TFF's aggregator state (see `to_tff_state`)."""
  if aggregation.tree is not None:
    return tree_lib.from_tff_state(aggregation.tree, tff_state)
  if aggregation.secure_quantile is not None:
    return _secure_estimate(aggregation, tff_state)
  if aggregation.skellam is not None:
    return compiled_ddp.from_tff_state(tff_state)
  if aggregation.attack is not None:
    return tf.constant(tff_state, tf.int32)
  if aggregation.zero_quantile is not None or aggregation.clip_quantile is not None:
    estimates = collections.OrderedDict()
    for name, path in _robust_paths(aggregation):
      node = tff_state
      for key in path:
        node = node[key]
      estimates[name] = tf.constant(node[0].current_estimate, tf.float32)
    return estimates
  if aggregation.adaptive is None:
    return ()
  return tf.constant(tff_state.query_state.numerator_state.sum_state.l2_norm_clip, tf.float32)
