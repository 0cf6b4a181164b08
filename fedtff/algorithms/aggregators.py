"""Model-update aggregators, by name, as `tff.aggregators` factories.

Each kind composes with every algorithm that accepts a model aggregator:

* `mean`: TFF's (weighted or unweighted) mean.
* `robust`: L2 norm clipping (fixed `clip_norm`, or adaptive as in Andrew et
  al. 2021, arXiv 1905.03871) and zeroing of outlier updates whose norm
  exceeds `zeroing_norm` (or an adaptive high quantile).
* `compression`: uniform quantization of large tensors to `quantization_bits`
  (TFF's `EncodedSumFactory.quantize_above_threshold`).
* `secure`: TFF's secure sum (`tff.aggregators.SecureSumFactory`), with the
  value range fixed by `clip_norm` or estimated adaptively. Floats are mapped
  to 32-bit integers. TFF's local runtime computes secure sums in the clear: it
  simulates the protocol's interface, not its cryptography.
* `masking_simulation`: a simulation of the arithmetic of Bonawitz et al.'s
  (2017) pairwise additive masking (`fedtff.privacy.masking_simulation`): each
  update is clipped to `clip_norm`, quantized to `masking_bits`-bit integers
  and masked with toy 31-bit keys; the masks cancel in the sum. It protects
  nothing and has no dropout recovery. Unweighted. (It was called
  `pairwise_masking`; that name is refused.)
* `median`, `trimmed_mean`, `krum`, `multi_krum`, `bulyan`,
  `geometric_median`: Byzantine-robust rules over the cohort's (unweighted)
  updates, written once in `fedtff.algorithms.robust` (papers there) and
  gathered at the server by its `RobustFactory`; `weighted=True` is refused.
  `attack` (`fedtff.algorithms.attacks.AttackSpec`) adds a simulated attack:
  an update-side one (sign flipping, model replacement) runs in the same
  gathered aggregation, with `mean` or a robust kind.
* `dp`: the differential-privacy hook: TFF's Gaussian mechanism with fixed or
  adaptive clipping (`tff.aggregators.DifferentiallyPrivateFactory`). It is
  unweighted; accounting lives in fedtff.privacy.

Any `tff.aggregators` factory can also be passed to the builders as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import tensorflow_federated as tff

from fedtff.algorithms import attacks
from fedtff.algorithms import robust
from fedtff.privacy import masking_simulation
from fedtff.privacy import mechanisms

AggregationFactory = Union[tff.aggregators.WeightedAggregationFactory,
                           tff.aggregators.UnweightedAggregationFactory]
KINDS = ('mean', 'robust', 'compression', 'secure', 'dp', 'masking_simulation') + robust.RULES
RENAMED_KINDS = {'pairwise_masking': 'masking_simulation'}
DEFAULT_MASKING_BITS = masking_simulation.DEFAULT_MASKING_BITS


def renamed_kind_message(kind: str) -> str:
  """The one-line refusal of a kind's old name."""
  return (f'Aggregator kind {kind!r} is now {RENAMED_KINDS[kind]!r}: it simulates the arithmetic '
          'of pairwise masking with toy 31-bit keys and no dropout recovery, and protects '
          'nothing (docs/privacy.md).')


@dataclasses.dataclass(frozen=True)
class AggregatorSpec:
  """What `build_aggregator` builds; `None` fields take the kind's default.

  Attributes:
    kind: One of `KINDS`.
    clip_norm: L2 clipping norm; `None` adapts it (for `robust`, `secure`, `dp`).
    zeroing: For `robust` and `compression`: zero updates with outlier norms.
    zeroing_norm: Fixed zeroing threshold; `None` adapts it.
    quantization_bits: For `compression`: bits per quantized value.
    masking_bits: For `masking_simulation`: the modulus is `2**masking_bits`.
    quantization_threshold: For `compression`: tensors with at most this many
      elements are sent unquantized (TFF's default is 20000).
    noise_multiplier: For `dp`: Gaussian noise std divided by the clip norm.
    clients_per_round: For `dp`: the expected number of clients per round.
    target_unclipped_quantile: For adaptive clipping: the share of updates
      that should be left unclipped.
    clipped_count_stddev: For `dp` with adaptive clipping: the noise on the
      count of unclipped updates; `None` is
      `fedtff.privacy.mechanisms.default_clipped_count_stddev`.
    trim_fraction: For `trimmed_mean`: β, the share of values dropped at
      each end of every coordinate.
    byzantine_clients: For `krum`, `multi_krum`, `bulyan`: f, the assumed
      number of Byzantine clients.
    krum_selected: For `multi_krum`: m, the number of updates averaged; 0 is
      n − f.
    rfa_iterations: For `geometric_median`: the smoothed Weiszfeld iterations.
    rfa_smoothing: For `geometric_median`: ν, the smallest distance used.
    attack: A simulated attack (`fedtff.algorithms.attacks.AttackSpec`);
      update-side kinds need `mean` or a robust kind, unweighted.
  """
  kind: str = 'mean'
  clip_norm: Optional[float] = None
  zeroing: bool = False
  zeroing_norm: Optional[float] = None
  quantization_bits: int = 8
  masking_bits: int = DEFAULT_MASKING_BITS
  quantization_threshold: int = 20000
  noise_multiplier: Optional[float] = None
  clients_per_round: Optional[int] = None
  target_unclipped_quantile: float = 0.5
  clipped_count_stddev: Optional[float] = None
  trim_fraction: float = 0.1
  byzantine_clients: int = 1
  krum_selected: int = 0
  rfa_iterations: int = 3
  rfa_smoothing: float = 1e-6
  attack: Optional[attacks.AttackSpec] = None

  def __post_init__(self):
    if self.kind in RENAMED_KINDS:
      raise ValueError(renamed_kind_message(self.kind))
    if self.kind not in KINDS:
      raise ValueError(f'Unknown aggregator {self.kind!r}; expected one of {", ".join(KINDS)}.')


def is_weighted(factory: AggregationFactory) -> bool:
  """Whether `factory` aggregates with client weights."""
  return isinstance(factory, tff.aggregators.WeightedAggregationFactory)


def _mean(weighted: bool, value_sum_factory=None):
  if weighted:
    return tff.aggregators.MeanFactory(value_sum_factory=value_sum_factory)
  return tff.aggregators.UnweightedMeanFactory(value_sum_factory=value_sum_factory)


# The adaptive zeroing norm: from 10, towards the 0.98 quantile (lr ln 10), used as 2 C + 1.
ADAPTIVE_ZEROING = mechanisms.AdaptiveNorm(initial=10.0, target=0.98, learning_rate=2.302585,
                                           multiplier=2.0, increment=1.0)


def adaptive_clipping(target_unclipped_quantile: float) -> mechanisms.AdaptiveNorm:
  """The adaptive clipping norm of `robust` (and `compression`): from 1.0, lr 0.2."""
  return mechanisms.AdaptiveNorm(initial=1.0, target=target_unclipped_quantile,
                                 learning_rate=0.2)


def _clip(spec: AggregatorSpec, inner: AggregationFactory) -> AggregationFactory:
  norm = spec.clip_norm if spec.clip_norm is not None else adaptive_clipping(
      spec.target_unclipped_quantile).process()
  return tff.aggregators.clipping_factory(norm, inner)


def _zero(spec: AggregatorSpec, inner: AggregationFactory) -> AggregationFactory:
  norm = spec.zeroing_norm if spec.zeroing_norm is not None else ADAPTIVE_ZEROING.process()
  return tff.aggregators.zeroing_factory(norm, inner)


def _dp(spec: AggregatorSpec, weighted: bool) -> AggregationFactory:
  if weighted:
    raise ValueError('The dp aggregator is unweighted (user-level DP bounds each client\'s '
                     'contribution); use it with weighted=False.')
  if spec.noise_multiplier is None or spec.clients_per_round is None:
    raise ValueError('The dp aggregator needs noise_multiplier and clients_per_round.')
  if spec.clip_norm is not None:
    if spec.clipped_count_stddev is not None:
      raise ValueError('clipped_count_stddev applies to adaptive clipping only (clip_norm None), '
                       f'got clip_norm={spec.clip_norm}.')
    return mechanisms.dp_aggregator(spec.noise_multiplier, spec.clients_per_round,
                                    clipping='fixed', clip=spec.clip_norm)
  return mechanisms.dp_aggregator(spec.noise_multiplier, spec.clients_per_round,
                                  clipping='adaptive',
                                  target_unclipped_quantile=spec.target_unclipped_quantile,
                                  clipped_count_stddev=spec.clipped_count_stddev)


def _masking_simulation(spec: AggregatorSpec, weighted: bool) -> AggregationFactory:
  if weighted or spec.clip_norm is None or spec.clients_per_round is None:
    raise ValueError('The masking_simulation aggregator is unweighted and needs clip_norm and '
                     'clients_per_round; use it with weighted=False.')
  return masking_simulation.masking_simulation_aggregator(
      spec.clip_norm, spec.clients_per_round, bits=spec.masking_bits)


def gathers(spec: Optional[AggregatorSpec]) -> bool:
  """Whether `spec` gathers the cohort's updates at the server: a robust kind, or
  an update-side attack (`robust.RobustFactory`)."""
  return spec is not None and (spec.kind in robust.RULES or (
      spec.attack is not None and spec.attack.on_updates))


def _robust(spec: AggregatorSpec, weighted: bool) -> AggregationFactory:
  what = (f'The {spec.kind} aggregator' if spec.kind in robust.RULES
          else f'The {spec.attack.kind} attack')
  if weighted:
    raise ValueError(f'{what} aggregates unweighted client updates, as in its paper; use it '
                     'with weighted=False.')
  if spec.kind not in robust.RULES + ('mean',):
    raise ValueError(f'The {spec.attack.kind} attack runs with aggregator kind mean or one of '
                     f'{", ".join(robust.RULES)}, got {spec.kind!r}.')
  return robust.RobustFactory(robust.rule_of(spec) or robust.Rule('mean'), spec.attack)


def check_weighting(factory: AggregationFactory, *, weighted: bool, algorithm: str) -> None:
  """Raises `TypeError` if `factory`'s weighting differs from the algorithm's."""
  if weighted and not is_weighted(factory):
    raise TypeError(
        f'{algorithm} with weighted=True needs a tff.aggregators.WeightedAggregationFactory, '
        f'got the unweighted {type(factory).__name__}; pass weighted=False.')
  if not weighted and is_weighted(factory):
    raise TypeError(
        f'{algorithm} with weighted=False needs a tff.aggregators.UnweightedAggregationFactory, '
        f'got the weighted {type(factory).__name__}.')


def build_aggregator(spec: AggregatorSpec, *, weighted: bool) -> AggregationFactory:
  """Returns the `tff.aggregators` factory that `spec` describes.

  Args:
    spec: The aggregator kind and its options.
    weighted: Whether the algorithm weights client updates (a weighted factory
      is returned) or not (an unweighted one).

  Raises:
    ValueError: If the options do not fit the kind, e.g. `dp` with weighting.
  """
  if gathers(spec):
    return _robust(spec, weighted)
  if spec.kind == 'dp':
    return _dp(spec, weighted)
  if spec.clipped_count_stddev is not None:
    raise ValueError(f"clipped_count_stddev applies to the 'dp' aggregator only, got kind "
                     f'{spec.kind!r}.')
  if spec.kind == 'secure':
    return mechanisms.secure_mean(spec.clip_norm, weighted=weighted)
  if spec.kind == 'masking_simulation':
    return _masking_simulation(spec, weighted)
  if spec.kind == 'compression':
    value_sum = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
        quantization_bits=spec.quantization_bits, threshold=spec.quantization_threshold)
    factory = _mean(weighted, value_sum)
  else:
    factory = _mean(weighted)
  if spec.kind == 'robust' or (spec.kind == 'compression' and spec.clip_norm is not None):
    factory = _clip(spec, factory)
  if spec.zeroing:
    factory = _zero(spec, factory)
  return factory
