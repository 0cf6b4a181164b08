"""One entry point that builds any fedtff algorithm by name.

`build_learning_process(model_fn, element_spec, algorithm='fedadam', ...)`
checks that the options fit the algorithm, resolves the defaults from
`fedtff.algorithms.registry` (for the FedOpt family, Reddi et al.'s optimizer
defaults) and calls the algorithm's
builder, which calls TFF's. docs/algorithms.md lists every algorithm.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import ditto
from fedtff.algorithms import optimizers
from fedtff.algorithms import fed_avg
from fedtff.algorithms import fed_nova
from fedtff.algorithms import fed_prox
from fedtff.algorithms import fed_sgd
from fedtff.algorithms import mime_lite
from fedtff.algorithms import q_fed_avg
from fedtff.algorithms import registry
from fedtff.algorithms import scaffold
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
                   client_learning_rate_schedule, proximal_strength, weighted,
                   population_size=None, q=None, aggregator=None, ditto_lambda=None) -> None:
  spec = registry.get(algorithm)
  _check_stateful_clients(spec, population_size, aggregator)
  if (ditto_lambda is not None) != (algorithm == 'ditto'):
    raise ValueError('ditto_lambda (λ) is required by ditto and used by no other algorithm; got '
                     f'algorithm={algorithm!r}, ditto_lambda={ditto_lambda}.')
  if algorithm == 'ditto':
    ditto.check_lambda(ditto_lambda)
    if client_optimizer is not None:
      ditto.check_client_optimizer(client_optimizer)
  if algorithm == 'fednova':
    fed_nova.check_aggregator(aggregator)
    if client_optimizer is not None:
      fed_nova.check_client_optimizer(client_optimizer)
  if (q is not None) != spec.needs_q:
    raise ValueError('q is required by qfedavg and used by no other algorithm; got '
                     f'algorithm={algorithm!r}, q={q}.')
  if spec.needs_q:
    q_fed_avg.check_options(q=q, client_optimizer=client_optimizer,
                            server_optimizer=server_optimizer, weighted=weighted,
                            aggregator=aggregator)
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
  if client_learning_rate_schedule is not None:
    fed_avg.check_scheduled_weighting(weighted)
  expected = spec.server_family
  if server_optimizer is not None and expected:
    family = _optimizer_family(server_optimizer)
    if family != expected:
      raise ValueError(f'{algorithm} uses a {expected} server optimizer, got {family}; '
                       f'use algorithm=\'fedavg\' for another server optimizer.')


def _check_stateful_clients(spec: registry.AlgorithmSpec, population_size, aggregator) -> None:
  """SCAFFOLD's options: N required, only the mean (a DP or robust aggregator would see
  the model deltas but not the control variates the clients also send); Ditto: only the
  mean (the robust and DP variants of its global model are not built)."""
  if not spec.needs_population_size:
    if population_size is not None:
      raise ValueError('population_size (N) is used only by scaffold; got '
                       f'algorithm={spec.name!r}, population_size={population_size}.')
    if not spec.stateful_clients:
      return
  else:
    scaffold.check_population_size(population_size)
  kind = getattr(aggregator, 'kind', None if aggregator is None else type(aggregator).__name__)
  if getattr(aggregator, 'attack', None) is not None:  # An AttackSpec (fedtff.algorithms.attacks).
    kind = 'mean with an attack'
  if kind not in (None, 'mean') and spec.name == 'ditto':
    raise ValueError(f'Ditto takes the mean aggregator only, got {kind}: its robust and DP '
                     'variants are not built here.')
  if kind not in (None, 'mean'):
    raise ValueError(f'SCAFFOLD takes the mean aggregator only, got {kind}: the control '
                     'variates Δc_i would bypass a DP or robust aggregator of the model deltas.')


def check_adaptive(algorithm: str, adaptive_proximal_strength: bool) -> None:
  if adaptive_proximal_strength and algorithm != 'fedprox':
    raise ValueError(f'adaptive_proximal_strength adapts fedprox\'s mu; got algorithm={algorithm!r}.')


def model_update_aggregation(aggregator: Optional[Aggregator], *, weighted: bool,
                             trainable: Sequence[Union[tf.Tensor, tf.TensorSpec]]
                            ) -> tff.templates.AggregationProcess:
  """TFF's aggregation process of the model updates, as the builders create it.

  The FedAvg family, FedProx, FedSGD and Mime Lite aggregate the updates with
  `aggregator` (TFF's mean when `None`), as a weighted factory (an unweighted
  one wrapped by `tff.aggregators.as_weighted_aggregator`), created for the
  model's trainable weights. Its `initialize()` is the `aggregator` field of
  their learning process's initial state, without building (tracing) the
  process's client work.

  Args:
    aggregator: As `build_learning_process`'s.
    weighted: Whether client updates are weighted by their number of examples.
    trainable: The model's trainable weights (or their specs), in order; only
      their shapes and dtypes are read.
  """
  if isinstance(aggregator, aggregators.AggregatorSpec):
    aggregator = aggregators.build_aggregator(aggregator, weighted=weighted)
  update_type = tff.types.StructWithPythonType(
      [tff.TensorType(tf.as_dtype(w.dtype).as_numpy_dtype, w.shape) for w in trainable], list)
  return fed_prox.weighted_mean_factory(aggregator, weighted).create(
      update_type, tff.TensorType(np.float32))


def build_learning_process(model_fn: tff_model.KerasModelFn,
                           element_spec: tff_model.ElementSpecLike,
                           *,
                           algorithm: str = 'fedavg',
                           client_optimizer: Optional[fed_avg.ClientOptimizer] = None,
                           server_optimizer: Optional[optimizers.TffOptimizer] = None,
                           client_learning_rate_schedule: Optional[schedules.Schedule] = None,
                           proximal_strength: Optional[float] = None,
                           q: Optional[float] = None,
                           loss: Optional[tf.keras.losses.Loss] = None,
                           metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                           weighted: bool = True,
                           aggregator: Optional[Aggregator] = None,
                           population_size: Optional[int] = None,
                           adaptive_proximal_strength: bool = False,
                           ditto_lambda: Optional[float] = None,
                          ) -> tff.learning.templates.LearningProcess:
  """Builds the TFF learning process for `algorithm`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    algorithm: One of `ALGORITHMS`: fedavg, fedavgm, fedadagrad, fedadam,
      fedyogi, fedprox, fedsgd, mimelite, scaffold, qfedavg, fednova, ditto.
    client_optimizer: A TFF optimizer (`fedtff.build_optimizer(...)`); for mimelite
      the base optimizer. With a schedule, `fedtff.build_optimizer_fn(...)`.
    server_optimizer: A TFF optimizer; the default depends on `algorithm`
      (`fedtff.algorithms.registry.REGISTRY`). fedavgm requires sgd, and
      fedadagrad/fedadam/fedyogi the matching optimizer family.
    client_learning_rate_schedule: A `fedtff.Schedule` (FedAvg family only).
    proximal_strength: FedProx's μ; required by, and only by, fedprox.
    q: q-FedAvg's q ≥ 0; required by, and only by, qfedavg.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    aggregator: A `fedtff.AggregatorSpec`, or any `tff.aggregators` factory
      (used as it is); TFF's mean when `None`.
    population_size: SCAFFOLD's N, the number of training clients; required
      by, and only by, scaffold, whose process is a
      `fedtff.algorithms.scaffold.ScaffoldProcess` (an `IterativeProcess`:
      its `next` also takes and returns the clients' control variates).
    ditto_lambda: Ditto's λ ≥ 0; required by, and only by, ditto, whose process
      is a `fedtff.algorithms.ditto.DittoProcess` (its `next` also takes and
      returns the clients' personal-model rows).
    adaptive_proximal_strength: fedprox only: μ is held in the state
      (`state.client_work`, starting at `proximal_strength`) for the runner to
      adapt between rounds (`fed_prox.AdaptiveStrength`).

  Raises:
    ValueError, TypeError: On an unknown name or options that do not combine.
  """
  _check_options(algorithm, server_optimizer=server_optimizer,
                 client_optimizer=client_optimizer,
                 client_learning_rate_schedule=client_learning_rate_schedule,
                 proximal_strength=proximal_strength, weighted=weighted,
                 population_size=population_size, q=q, aggregator=aggregator,
                 ditto_lambda=ditto_lambda)
  check_adaptive(algorithm, adaptive_proximal_strength)
  if algorithm == 'ditto':
    return ditto.build_ditto(model_fn, element_spec, ditto_lambda=ditto_lambda,
                             client_optimizer=client_optimizer, server_optimizer=server_optimizer,
                             loss=loss, metrics=metrics, weighted=weighted)
  if algorithm == 'scaffold':
    return scaffold.build_scaffold(
        model_fn, element_spec, population_size=population_size,
        client_optimizer=client_optimizer, server_optimizer=server_optimizer, loss=loss,
        metrics=metrics, weighted=weighted)
  if algorithm == 'qfedavg':  # Its own weights h_k and mean: the spec is checked, not built.
    return q_fed_avg.build_q_fed_avg(model_fn, element_spec, q=q,
                                     client_optimizer=client_optimizer,
                                     server_optimizer=server_optimizer, loss=loss, metrics=metrics)
  if algorithm == 'fednova':
    return fed_nova.build_fed_nova(model_fn, element_spec, client_optimizer=client_optimizer,
                                   server_optimizer=server_optimizer, loss=loss, metrics=metrics,
                                   weighted=weighted, model_aggregator=aggregator)
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
                                   client_optimizer=client_optimizer, weighted=weighted,
                                   adaptive=adaptive_proximal_strength, **common)
  if algorithm == 'mimelite':
    return mime_lite.build_mime_lite(model_fn, element_spec, base_optimizer=client_optimizer,
                                     weighted=weighted, **common)
  return fed_avg.build_fed_avg(
      model_fn, element_spec, client_optimizer=client_optimizer,
      client_learning_rate_schedule=client_learning_rate_schedule, weighted=weighted, **common)
