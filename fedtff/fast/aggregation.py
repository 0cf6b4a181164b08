"""The model-update aggregators the fast backend computes inside its round graph.

Each mirrors the arithmetic of the `tff.aggregators` factory that
`fedtff.aggregators.build_aggregator` builds for the same `AggregatorSpec`:

* `mean`: `MeanFactory` (sum of `update * weight`, divided by the sum of the
  weights) or, unweighted, `UnweightedMeanFactory` (divided by the number of
  clients);
* `robust` with a fixed `clip_norm` (and optionally a fixed `zeroing_norm`):
  `zeroing_factory` then `clipping_factory` around the mean; an update whose
  global L2 norm exceeds the bound is zeroed, or scaled down to it;
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

Anything else (adaptive robust norms, compression, secure sums, the masking
simulation, custom factories) is refused with a `ValueError`: those run on the
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
  """
  weighted: bool
  clip_norm: Optional[float] = None
  zeroing_norm: Optional[float] = None
  noise_stddev: Optional[float] = None
  denominator: Optional[float] = None
  adaptive: Optional[AdaptiveClip] = None

  @property
  def is_dp(self) -> bool:
    return self.noise_stddev is not None or self.adaptive is not None

  def initial_state(self) -> Any:
    """The aggregator's part of the fast state: the clip norm, or ()."""
    if self.adaptive is None:
      return ()
    return tf.constant(self.adaptive.initial_clip, tf.float32)


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
  if spec.clip_norm is None:
    raise _refuse(f'adaptive clipping (the {spec.kind!r} aggregator without clip_norm)')
  if spec.kind == 'dp':
    return Aggregation(weighted, noise_stddev=spec.noise_multiplier * spec.clip_norm,
                       denominator=float(spec.clients_per_round), clip_norm=spec.clip_norm)
  if spec.zeroing and spec.zeroing_norm is None:
    raise _refuse('adaptive zeroing (zeroing=True without zeroing_norm)')
  return Aggregation(weighted, clip_norm=spec.clip_norm,
                     zeroing_norm=spec.zeroing_norm if spec.zeroing else None)


def _global_l2_norm(values: List[tf.Tensor]) -> tf.Tensor:
  """TFF's `robust._global_l2_norm`, operation for operation."""
  squares = [tf.cast(tf.norm(v, ord=2) ** 2, tf.float32) for v in values]
  return tf.math.sqrt(tf.reduce_sum(tf.stack(squares)))


def _zero(values: List[tf.Tensor], norm: float) -> Tuple[List[tf.Tensor], tf.Tensor]:
  should_zero = _global_l2_norm(values) > norm
  zeroed = tf.cond(should_zero, lambda: [tf.zeros_like(v) for v in values], lambda: values)
  return zeroed, tf.cast(should_zero, tf.int32)


def _clip(values: List[tf.Tensor], norm: float) -> Tuple[List[tf.Tensor], tf.Tensor]:
  global_norm = _global_l2_norm(values)
  divisor = global_norm / norm
  clipped = tf.cond(global_norm > norm,
                    lambda: [v / tf.cast(divisor, v.dtype) for v in values], lambda: values)
  return clipped, tf.cast(global_norm > norm, tf.int32)


class Accumulator(NamedTuple):
  """The running sums of one round's aggregation (a `tf.while_loop` variable)."""
  value_sum: List[tf.Tensor]
  weight_sum: tf.Tensor
  zeroed: tf.Tensor
  clipped: tf.Tensor
  below_sum: tf.Tensor  # Adaptive clipping: the sum of [norm <= C] - 1/2.


def initial(trainable: List[tf.Tensor]) -> Accumulator:
  zero = tf.constant(0, tf.int32)
  return Accumulator([tf.zeros_like(v) for v in trainable], tf.constant(0.0), zero, zero,
                     tf.constant(0.0))


def accumulate(aggregation: Aggregation, acc: Accumulator, update: List[tf.Tensor],
               weight: tf.Tensor, clip_state: Any = ()) -> Accumulator:
  """Adds one client's update (zeroed, clipped and weighted as configured).

  `clip_state` is the state's clip norm with adaptive clipping.
  """
  zeroed = clipped = tf.constant(0, tf.int32)
  below = tf.constant(0.0)
  if aggregation.zeroing_norm is not None:
    update, zeroed = _zero(update, aggregation.zeroing_norm)
  if aggregation.adaptive is not None:  # TF Privacy's GaussianSumQuery and QuantileEstimatorQuery.
    update, norm = tf.clip_by_global_norm(update, clip_state)
    below = tf.cast(norm <= clip_state, tf.float32) - 0.5
  elif aggregation.is_dp:
    update, _ = tf.clip_by_global_norm(update, aggregation.clip_norm)
  elif aggregation.clip_norm is not None:
    update, clipped = _clip(update, aggregation.clip_norm)
  if aggregation.weighted and not aggregation.is_dp:
    update = [v * tf.cast(weight, v.dtype) for v in update]
  else:
    weight = tf.constant(1.0)
  return Accumulator([s + v for s, v in zip(acc.value_sum, update)], acc.weight_sum + weight,
                     acc.zeroed + zeroed, acc.clipped + clipped, acc.below_sum + below)


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
          clip_state)


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
                 clip_state: Any = ()) -> collections.OrderedDict:
  """The aggregator measurements, in the nesting TFF's factories report them.

  `clip_state` is the clip norm after the round, as TFF reports it.
  """
  if aggregation.adaptive is not None:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(clip=clip_state),
                                   dp=())
  if aggregation.is_dp:
    return collections.OrderedDict(dp_query_metrics=collections.OrderedDict(), dp=())
  inner = (collections.OrderedDict(mean_value=(), mean_weight=()) if aggregation.weighted
           else collections.OrderedDict(mean_value=(), mean_count=()))
  if aggregation.clip_norm is not None:
    inner = collections.OrderedDict(clipping=inner,
                                    clipping_norm=tf.constant(aggregation.clip_norm),
                                    clipped_count=acc.clipped)
  if aggregation.zeroing_norm is not None:
    inner = collections.OrderedDict(zeroing=inner,
                                    zeroing_norm=tf.constant(aggregation.zeroing_norm),
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


def from_tff_state(aggregation: Aggregation, tff_state: Any) -> Any:
  """The fast state's clip norm from TFF's aggregator state (see `to_tff_state`)."""
  if aggregation.adaptive is None:
    return ()
  return tf.constant(tff_state.query_state.numerator_state.sum_state.l2_norm_clip, tf.float32)
