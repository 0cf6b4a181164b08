"""One entry point that builds any fedtff algorithm by name.

`build_learning_process(model_fn, element_spec, algorithm='fedadam', ...)`
checks that the options fit the algorithm, resolves the defaults from
`fedtff.algorithms.registry` (for the FedOpt family, Reddi et al.'s optimizer
defaults) and calls the algorithm's
builder, which calls TFF's. docs/algorithms.md lists every algorithm.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import optimizers
from fedtff.algorithms import fed_avg
from fedtff.algorithms import fed_prox
from fedtff.algorithms import fed_sgd
from fedtff.algorithms import mime_lite
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model

ALGORITHMS = registry.ALGORITHMS
Aggregator = Union[aggregators.AggregatorSpec, aggregators.AggregationFactory]


def _optimizer_family(optimizer: optimizers.TffOptimizer) -> str:
  for name in optimizers.OPTIMIZER_NAMES:
    if type(optimizer) is type(optimizers.build(name, 0.1)):  # pylint: disable=unidiomatic-typecheck
      return name
  return type(optimizer).__name__


def default_server_optimizer(algorithm: str) -> optimizers.TffOptimizer:
  """The server optimizer `algorithm` uses when none is given (`registry.REGISTRY`)."""
  return registry.default_server_optimizer(algorithm)


def _check_options(algorithm: str, *, server_optimizer, client_optimizer,
                   client_learning_rate_schedule, proximal_strength, weighted) -> None:
  spec = registry.get(algorithm)
  if (proximal_strength is not None) != spec.needs_proximal_strength:
    raise ValueError('proximal_strength (mu) is required by fedprox and used by no other '
                     f'algorithm; got algorithm={algorithm!r}, proximal_strength={proximal_strength}.')
  if proximal_strength is not None:
    fed_prox.check_proximal_strength(proximal_strength)
  if spec.client is None and client_optimizer is not None:
    raise ValueError(f'{algorithm} has no client optimizer; drop client_optimizer.')
  if spec.weighted_only and not weighted:
    raise ValueError(f'{algorithm} weights clients by examples; drop weighted=False.')
  if client_learning_rate_schedule is not None and not spec.schedules:
    family = ', '.join(s.name for s in registry.REGISTRY.values() if s.schedules)
    raise ValueError('Client learning-rate schedules combine with the FedAvg family '
                     f'({family}), not with {algorithm}.')
  expected = spec.server_family
  if server_optimizer is not None and expected:
    family = _optimizer_family(server_optimizer)
    if family != expected:
      raise ValueError(f'{algorithm} uses a {expected} server optimizer, got {family}; '
                       f'use algorithm=\'fedavg\' for another server optimizer.')


def build_learning_process(model_fn: tff_model.KerasModelFn,
                           element_spec: tff_model.ElementSpecLike,
                           *,
                           algorithm: str = 'fedavg',
                           client_optimizer: Optional[fed_avg.ClientOptimizer] = None,
                           server_optimizer: Optional[optimizers.TffOptimizer] = None,
                           client_learning_rate_schedule: Optional[schedules.Schedule] = None,
                           proximal_strength: Optional[float] = None,
                           loss: Optional[tf.keras.losses.Loss] = None,
                           metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                           weighted: bool = True,
                           aggregator: Optional[Aggregator] = None,
                          ) -> tff.learning.templates.LearningProcess:
  """Builds the TFF learning process for `algorithm`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    algorithm: One of `ALGORITHMS`: fedavg, fedavgm, fedadagrad, fedadam,
      fedyogi, fedprox, fedsgd, mimelite.
    client_optimizer: A TFF optimizer (`fedtff.build_optimizer(...)`); for mimelite
      the base optimizer. With a schedule, `fedtff.build_optimizer_fn(...)`.
    server_optimizer: A TFF optimizer; the default depends on `algorithm`
      (`fedtff.algorithms.registry.REGISTRY`). fedavgm requires sgd, and
      fedadagrad/fedadam/fedyogi the matching optimizer family.
    client_learning_rate_schedule: A `fedtff.Schedule` (FedAvg family only).
    proximal_strength: FedProx's μ; required by, and only by, fedprox.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    aggregator: A `fedtff.AggregatorSpec`, or any `tff.aggregators` factory
      (used as it is); TFF's mean when `None`.

  Raises:
    ValueError, TypeError: On an unknown name or options that do not combine.
  """
  _check_options(algorithm, server_optimizer=server_optimizer,
                 client_optimizer=client_optimizer,
                 client_learning_rate_schedule=client_learning_rate_schedule,
                 proximal_strength=proximal_strength, weighted=weighted)
  if isinstance(aggregator, aggregators.AggregatorSpec):
    aggregator = aggregators.build_aggregator(aggregator, weighted=weighted)
  server_optimizer = server_optimizer or registry.default_server_optimizer(algorithm)
  client_optimizer = client_optimizer or (
      None if client_learning_rate_schedule is not None
      else registry.default_client_optimizer(algorithm))
  common = dict(loss=loss, metrics=metrics, model_aggregator=aggregator,
                server_optimizer=server_optimizer)
  if algorithm == 'fedsgd':
    return fed_sgd.build_fed_sgd(model_fn, element_spec, **common)
  if algorithm == 'fedprox':
    return fed_prox.build_fed_prox(model_fn, element_spec, proximal_strength=proximal_strength,
                                   client_optimizer=client_optimizer, weighted=weighted, **common)
  if algorithm == 'mimelite':
    return mime_lite.build_mime_lite(model_fn, element_spec, base_optimizer=client_optimizer,
                                     weighted=weighted, **common)
  return fed_avg.build_fed_avg(
      model_fn, element_spec, client_optimizer=client_optimizer,
      client_learning_rate_schedule=client_learning_rate_schedule, weighted=weighted, **common)
