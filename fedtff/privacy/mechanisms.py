"""Model-update aggregators for private FedAvg: DP-FedAvg and TFF's secure sum.

DP-FedAvg is McMahan, Ramage, Talwar and Zhang, "Learning Differentially
Private Recurrent Language Models", ICLR 2018 (arXiv 1710.06963). Adaptive
clipping is Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private
Learning with Adaptive Clipping", NeurIPS 2021 (arXiv 1905.03871). Secure
aggregation is Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017.

Both builders return `tff.aggregators.UnweightedAggregationFactory` objects
computing a mean, for unweighted FedAvg:

  process = fedtff.build_fed_avg(model_fn, spec, weighted=False,
                                 model_aggregator=fedtff.privacy.dp_aggregator(1.0, 10, clip=0.5))

TFF's local runtime computes a "secure" sum in the clear (fedtff's runtime
lowers the secure-sum intrinsics to plain sums, see `fedtff.execution.runtime`):
`secure_sum_aggregator` gives the protocol's interface (clipping, quantization,
bit widths), not its cryptography. docs/privacy.md states each mechanism's
threat model.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import tensorflow_federated as tff

CLIPPINGS = ('fixed', 'adaptive')
DEFAULT_INITIAL_CLIP = 0.1
DEFAULT_TARGET_QUANTILE = 0.5
DEFAULT_CLIP_LEARNING_RATE = 0.2
_MAX_DISCRETE_BITS = 24


@dataclasses.dataclass(frozen=True)
class AdaptiveNorm:
  """An adaptive norm: the parameters of TFF's `PrivateQuantileEstimationProcess.no_noise`.

  The estimate `C` starts at `initial` and moves geometrically towards the
  `target` quantile of the client norms with `learning_rate` (Andrew et al.
  2021, without noise); a round uses `multiplier * C + increment`. The TFF
  engine builds the process from it (`process`), the compiled engine
  (`fedtff/compiled/aggregation.py`) computes the same updates from the same
  fields.
  """
  initial: float
  target: float
  learning_rate: float
  multiplier: float = 1.0
  increment: float = 0.0

  def process(self, **kwargs) -> tff.aggregators.PrivateQuantileEstimationProcess:
    """TFF's no-noise estimation process; `kwargs` go to `no_noise` (`secure_estimation`)."""
    return tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=self.initial, target_quantile=self.target,
        learning_rate=self.learning_rate, multiplier=self.multiplier, increment=self.increment,
        **kwargs)


# `secure_mean`'s adaptive bound (as `tff.learning.secure_aggregator`'s): twice an
# estimate of the 95th percentile of the clients' largest |coordinate|, from 50.
SECURE_BOUND = AdaptiveNorm(initial=50.0, target=0.95, learning_rate=1.0, multiplier=2.0)
# The range of `secure_mean`'s secure sum of the client weights.
SECURE_WEIGHT_BOUNDS = (0.0, float(2**20 - 1))


def default_clipped_count_stddev(noise_multiplier: float, clients_per_round: int) -> float:
  """`max(0.05 * m, z)`: the default noise on adaptive clipping's clipped count.

  TFF's default is `0.05 * m` (Andrew et al. recommend `m / 20`), with which
  the split below needs `z < 0.1 * m` and inflates the value noise without
  bound as `z` nears it. fedtff takes TFF's default while `z <= 0.05 * m` and
  `z` above that, so the value noise multiplier is never more than
  `2 / sqrt(3)` (15.5%) above `z`. 0 without noise.
  """
  if noise_multiplier == 0:
    return 0.0
  return max(0.05 * clients_per_round, float(noise_multiplier))


def adaptive_noise_split(noise_multiplier: float, clients_per_round: int,
                         clipped_count_stddev: Optional[float] = None) -> Tuple[float, float]:
  """`(z_v, sigma_b)`: how adaptive clipping splits the noise multiplier `z`.

  The value sum (sensitivity `C` under add-or-remove) gets noise `z_v * C`; the
  count of unclipped clients, each contributing `+-1/2` (sensitivity 1/2), gets
  noise `sigma_b`, a multiplier `2 sigma_b`. Gaussian mechanisms compose like
  one Gaussian with `z**-2 = z_v**-2 + (2 sigma_b)**-2` (TFF's
  `adaptive_clip_noise_params`). Under replace-one both sensitivities double,
  so the round is the Gaussian mechanism with multiplier `z / 2`, as with fixed
  clipping: `fedtff.privacy.epsilon(z, ...)` accounts for it.

  Args:
    noise_multiplier: `z`, the round's combined noise multiplier.
    clients_per_round: `m`.
    clipped_count_stddev: `sigma_b`; `default_clipped_count_stddev` if None.

  Raises:
    ValueError: If `z > 0` and `2 * sigma_b <= z` (no value noise achieves `z`).
  """
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be nonnegative, got {noise_multiplier}.')
  if clipped_count_stddev is None:
    clipped_count_stddev = default_clipped_count_stddev(noise_multiplier, clients_per_round)
  if not clipped_count_stddev >= 0:
    raise ValueError(f'clipped_count_stddev must be nonnegative, got {clipped_count_stddev}.')
  if noise_multiplier == 0:
    return 0.0, float(clipped_count_stddev)
  if 2 * clipped_count_stddev <= noise_multiplier:
    raise ValueError(
        f'clipped_count_stddev={clipped_count_stddev:g} is too small for noise_multiplier='
        f'{noise_multiplier:g}: adaptive clipping needs 2*clipped_count_stddev > noise_multiplier '
        '(leave it unset for the default max(0.05*clients_per_round, noise_multiplier)).')
  value = (noise_multiplier**-2 - (2 * clipped_count_stddev)**-2)**-0.5
  return float(value), float(clipped_count_stddev)


def dp_aggregator(noise_multiplier: float, clients_per_round: int, *,
                  clipping: str = 'fixed',
                  clip: Optional[float] = None,
                  target_unclipped_quantile: Optional[float] = None,
                  clip_learning_rate: Optional[float] = None,
                  clipped_count_stddev: Optional[float] = None,
                 ) -> tff.aggregators.UnweightedAggregationFactory:
  """The DP-FedAvg mean: clip each update in L2, sum, add Gaussian noise, divide.

  The noise on the sum has standard deviation `noise_multiplier * clip`; the sum
  is divided by `clients_per_round`. With adaptive clipping the clip norm tracks
  a quantile of the update norms, estimated privately, and TFF splits the noise
  so that the whole round still has noise multiplier `noise_multiplier`
  (`adaptive_noise_split`); `fedtff.privacy.epsilon` accounts for both the same way. Unlike
  `tff.learning.dp_aggregator` this adds no adaptive zeroing, whose threshold
  TFF estimates without noise and the accounting would not cover.

  Args:
    noise_multiplier: `z`, the noise standard deviation over the clip norm;
      0 adds no noise (no privacy).
    clients_per_round: The clients whose updates each round averages.
    clipping: 'fixed' or 'adaptive'.
    clip: The L2 clip norm ('fixed', required) or its initial value
      ('adaptive', default 0.1).
    target_unclipped_quantile: 'adaptive' only: the fraction of updates to
      leave unclipped; default 0.5.
    clip_learning_rate: 'adaptive' only: the geometric learning rate of the
      clip norm; default 0.2.
    clipped_count_stddev: 'adaptive' only: the noise standard deviation on the
      count of unclipped clients; default `default_clipped_count_stddev`.
      Must exceed `noise_multiplier / 2`.

  Returns:
    A `tff.aggregators.DifferentiallyPrivateFactory`, for unweighted FedAvg.
  """
  if clipping not in CLIPPINGS:
    raise ValueError(f'clipping must be one of {CLIPPINGS}, got {clipping!r}.')
  if clipping == 'fixed':
    return _fixed_dp(noise_multiplier, clients_per_round, clip,
                     target_unclipped_quantile, clip_learning_rate, clipped_count_stddev)
  _, count_stddev = adaptive_noise_split(noise_multiplier, clients_per_round,
                                         clipped_count_stddev)
  return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
      float(noise_multiplier), float(clients_per_round),
      initial_l2_norm_clip=float(DEFAULT_INITIAL_CLIP if clip is None else clip),
      target_unclipped_quantile=float(_default(target_unclipped_quantile,
                                               DEFAULT_TARGET_QUANTILE)),
      learning_rate=float(_default(clip_learning_rate, DEFAULT_CLIP_LEARNING_RATE)),
      clipped_count_stddev=count_stddev)


def _fixed_dp(noise_multiplier, clients_per_round, clip, target_unclipped_quantile,
              clip_learning_rate, clipped_count_stddev
             ) -> tff.aggregators.UnweightedAggregationFactory:
  if clip is None:
    raise ValueError("clipping='fixed' needs the L2 clip norm: pass clip=... .")
  if (target_unclipped_quantile is not None or clip_learning_rate is not None
      or clipped_count_stddev is not None):
    raise ValueError("target_unclipped_quantile, clip_learning_rate and clipped_count_stddev "
                     "apply to clipping='adaptive' only.")
  return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      float(noise_multiplier), float(clients_per_round), float(clip))


def _default(value, default):
  return default if value is None else value


def secure_mean(bound: Optional[float], *, weighted: bool
               ) -> Union[tff.aggregators.WeightedAggregationFactory,
                          tff.aggregators.UnweightedAggregationFactory]:
  """fedtff's 'secure' aggregator: a mean whose sums go through TFF's secure-sum intrinsics.

  Every coordinate is clipped to `[-bound, bound]` and quantized to 32 bits by
  `tff.aggregators.SecureSumFactory`; `bound=None` estimates the range
  adaptively (as `tff.learning.secure_aggregator` does: twice a quantile
  estimate of the 95th percentile, starting at 50). A weighted mean sums the client
  weights securely too, in `[0, 2**20 - 1]`; an unweighted one counts clients.

  Args:
    bound: The per-coordinate bound, or `None` to adapt it.
    weighted: Whether to return a weighted (`MeanFactory`) or unweighted
      (`UnweightedMeanFactory`) mean.
  """
  if bound is None:
    bound = SECURE_BOUND.process(secure_estimation=True)
  value_sum = tff.aggregators.SecureSumFactory(bound)
  if weighted:
    low, high = SECURE_WEIGHT_BOUNDS
    return tff.aggregators.MeanFactory(
        value_sum_factory=value_sum,
        weight_sum_factory=tff.aggregators.SecureSumFactory(high, low))
  return tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=value_sum,
      count_sum_factory=tff.aggregators.SecureSumFactory(1, 0))


def secure_sum_aggregator(bound: Optional[float] = None, *, bits: Optional[int] = None
                         ) -> tff.aggregators.UnweightedAggregationFactory:
  """An unweighted mean whose sums go through TFF's secure-sum intrinsics.

  * Without `bits`: fedtff's 'secure' aggregator (`secure_mean`): every
    coordinate is clipped to `[-bound, bound]` and quantized to 32 bits by
    `tff.aggregators.SecureSumFactory`; `bound=None` estimates the range
    adaptively, as `tff.learning.secure_aggregator` does.
  * With `bits`: coordinates are rounded to a grid of step
    `bound / (2**(bits-1) - 1)`, clipped to `[-bound, bound]` and summed as
    `bits`-bit integers (`SecureSumFactory` with integer bounds). The integer
    sum is int32, so `clients_per_round * 2**bits` must stay below `2**31`;
    `bits` is at most 24.

  With a fixed bound the error on the mean is at most half a quantization step
  per coordinate, plus whatever clipping removes.

  Args:
    bound: The per-coordinate bound; `None` (only without `bits`) adapts it.
    bits: The bit width of the securely summed integers (2 to 24), or `None`
      for TFF's 32-bit float quantization.

  Returns:
    A `tff.aggregators.UnweightedAggregationFactory` computing a mean.
  """
  if bits is None:
    return secure_mean(bound, weighted=False)
  if bound is None or not bound > 0:
    raise ValueError(f'bits needs a fixed, positive bound: pass bound=..., got {bound}.')
  if not (isinstance(bits, int) and 2 <= bits <= _MAX_DISCRETE_BITS):
    raise ValueError(f'bits must be an integer from 2 to {_MAX_DISCRETE_BITS}, got {bits!r}.')
  levels = 2**(bits - 1) - 1
  integer_sum = tff.aggregators.SecureSumFactory(
      upper_bound_threshold=levels, lower_bound_threshold=-levels)
  return tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=tff.aggregators.discretization.DiscretizationFactory(
          integer_sum, scale_factor=levels / bound),
      count_sum_factory=tff.aggregators.SecureSumFactory(
          upper_bound_threshold=1, lower_bound_threshold=0))
