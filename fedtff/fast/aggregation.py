"""The model-update aggregators the fast backend computes inside its round graph.

Each mirrors the arithmetic of the `tff.aggregators` factory that
`fedtff.aggregators.build_aggregator` builds for the same `AggregatorSpec`:

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
  quantile (lr ln 10, reported as `2 C + 1`), as `fedtff.aggregators` sets
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

Anything else (compression, secure sums, the masking simulation, custom
factories) is refused with a `ValueError`: those run on the
TFF backend.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from fedtff import aggregators
from fedtff.privacy import mechanisms

_USE_TFF = "use backend='tff'"
_KINDS = ('mean', 'robust', 'dp')  # The AggregatorSpec kinds computed here.


@dataclasses.dataclass(frozen=True)
class AdaptiveClip:
  """DP adaptive clipping's parameters; see the module docstring."""
  initial_clip: float
  target_quantile: float
  learning_rate: float
  value_noise_multiplier: float
  count_stddev: float


@dataclasses.dataclass(frozen=True)
class Quantile:
  """An adaptive robust norm: `PrivateQuantileEstimationProcess.no_noise`'s
  parameters (see the module docstring)."""
  initial: float
  target: float
  learning_rate: float
  multiplier: float = 1.0
  increment: float = 0.0

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


# fedtff.aggregators' adaptive robust norms (`_clip` and `_zero` there).
_ADAPTIVE_CLIP = dict(initial=1.0, learning_rate=0.2)
_ADAPTIVE_ZERO = Quantile(initial=10.0, target=0.98, learning_rate=2.302585, multiplier=2.0,
                          increment=1.0)


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
    zero_quantile: For adaptive zeroing: its estimator.
  """
  weighted: bool
  clip_norm: Optional[float] = None
  zeroing_norm: Optional[float] = None
  noise_stddev: Optional[float] = None
  denominator: Optional[float] = None
  adaptive: Optional[AdaptiveClip] = None
  clip_quantile: Optional[Quantile] = None
  zero_quantile: Optional[Quantile] = None

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
    """The aggregator's part of the fast state: the DP clip norm; or for
    adaptive robust norms, a dict of their estimates `C` ('clipping_norm',
    'zeroing_norm'); or ()."""
    if self.adaptive is not None:
      return tf.constant(self.adaptive.initial_clip, tf.float32)
    estimates = collections.OrderedDict(
        (name, tf.constant(quantile.initial, tf.float32))
        for name, quantile in (('zeroing_norm', self.zero_quantile),
                               ('clipping_norm', self.clip_quantile)) if quantile is not None)
    return estimates or ()


def _refuse(what: str) -> ValueError:
  return ValueError(f'The fast backend does not implement {what}; {_USE_TFF}.')


def from_spec(aggregator: Any, *, weighted: bool) -> Aggregation:
  """The `Aggregation` of `aggregator`, an `AggregatorSpec` or None (mean).

  Raises:
    ValueError: For an aggregator the fast backend does not implement, or
      options that do not fit (fedtff's own checks of the spec).
  """
  if aggregator is None:
    return Aggregation(weighted)
  if not isinstance(aggregator, aggregators.AggregatorSpec):
    raise ValueError(
        'The fast backend does not implement custom tff.aggregators factories (got '
        f"{type(aggregator).__name__}); pass fedtff.AggregatorSpec('mean', 'robust' or 'dp' with "
        f'fixed norms), or {_USE_TFF}.')
  aggregators.build_aggregator(aggregator, weighted=weighted)  # fedtff's checks of the options.
  spec = aggregator
  if spec.kind not in _KINDS:  # compression, secure, masking_simulation, and any added later.
    raise _refuse(f'the {spec.kind!r} aggregator')
  if spec.kind == 'mean':
    return Aggregation(weighted)
  if spec.kind == 'dp' and spec.clip_norm is None:
    value_multiplier, count_stddev = mechanisms.adaptive_noise_split(
        spec.noise_multiplier, spec.clients_per_round, spec.clipped_count_stddev)
    return Aggregation(weighted, denominator=float(spec.clients_per_round), adaptive=AdaptiveClip(
        mechanisms.DEFAULT_INITIAL_CLIP, spec.target_unclipped_quantile,
        mechanisms.DEFAULT_CLIP_LEARNING_RATE, value_multiplier, count_stddev))
  if spec.kind == 'dp':
    return Aggregation(weighted, noise_stddev=spec.noise_multiplier * spec.clip_norm,
                       denominator=float(spec.clients_per_round), clip_norm=spec.clip_norm)
  clip_quantile = (Quantile(target=spec.target_unclipped_quantile, **_ADAPTIVE_CLIP)
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


def initial(trainable: List[tf.Tensor]) -> Accumulator:
  zero = tf.constant(0, tf.int32)
  return Accumulator([tf.zeros_like(v) for v in trainable], tf.constant(0.0), zero, zero,
                     tf.constant(0.0), tf.constant(0.0), tf.constant(0.0))


def accumulate(aggregation: Aggregation, acc: Accumulator, update: List[tf.Tensor],
               weight: tf.Tensor, clip_state: Any = ()) -> Accumulator:
  """Adds one client's update (zeroed, clipped and weighted as configured).

  `clip_state` is the state's clip norm with adaptive clipping.
  """
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
  if aggregation.weighted and not aggregation.is_dp:
    update = [v * tf.cast(weight, v.dtype) for v in update]
  else:
    weight = tf.constant(1.0)
  return Accumulator([s + v for s, v in zip(acc.value_sum, update)], acc.weight_sum + weight,
                     acc.zeroed + zeroed, acc.clipped + clipped, acc.below_sum + below,
                     acc.zero_below_sum + zero_below, acc.count + 1.0)


def _noised(value: tf.Tensor, stddev, noise_seed: tf.Tensor, index: int) -> tf.Tensor:
  """`value` plus Gaussian noise, stateless from the round's seed and the tensor's index."""
  seed = tf.random.experimental.stateless_fold_in(noise_seed, index)
  return value + tf.random.stateless_normal(tf.shape(value), seed=seed,
                                            stddev=tf.cast(stddev, value.dtype), dtype=value.dtype)


def result(aggregation: Aggregation, acc: Accumulator, noise_seed: tf.Tensor,
           clip_state: Any = ()) -> Tuple[List[tf.Tensor], Any]:
  """The aggregate (the (weighted) mean, or the DP mean noised from `noise_seed`,
  int64 [2]) and the next clip state."""
  if aggregation.adaptive is not None:
    return _adaptive_result(aggregation, acc, clip_state, noise_seed)
  if aggregation.is_dp:
    noised = [_noised(s, aggregation.noise_stddev, noise_seed, i)
              for i, s in enumerate(acc.value_sum)]
    return [tf.truediv(s, tf.cast(aggregation.denominator, s.dtype)) for s in noised], clip_state
  return ([tf.math.divide(s, tf.cast(acc.weight_sum, s.dtype)) for s in acc.value_sum],
          _next_estimates(aggregation, acc, clip_state))


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
  if aggregation.adaptive is not None:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(clip=clip_state),
                                   dp=())
  if aggregation.is_dp:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(), dp=())
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
  """TFF's aggregator state `template` with the fast state's clip norm written in.

  With adaptive DP clipping the clip norm sits in the DP query's state
  (`DPAggregatorState.query_state`: `NormalizedQuery` around
  `QuantileAdaptiveClipSumQuery`): the sum query's `l2_norm_clip` and `stddev`
  and the quantile estimator's `current_estimate`. Otherwise the state is
  constant and `template` is returned.
  """
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


def from_tff_state(aggregation: Aggregation, tff_state: Any) -> Any:
  """The fast state's clip norm from TFF's aggregator state (see `to_tff_state`)."""
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
