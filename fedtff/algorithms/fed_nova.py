"""FedNova: normalized averaging of local updates of unequal lengths.

Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency
Problem in Heterogeneous Federated Optimization", NeurIPS 2020 (arXiv
2007.07481). Clients that run different numbers of local steps τ_i make
FedAvg converge to a stationary point of a mismatched objective, weighted by
p_i τ_i. FedNova normalizes each client's cumulative update by its length:
with plain local SGD client i sends d_i = Δ_i / τ_i (its delta per step;
a_i = [1, ..., 1], ‖a_i‖₁ = τ_i) and the server applies

    x ← x − τ_eff · Σ p_i d_i,   τ_eff = Σ p_i τ_i

(eq. 7 with the paper's τ_eff choice), through the server optimizer (SGD 1.0:
exactly this step). The p_i are the aggregation weights: examples (weighted)
or uniform. Client momentum changes a_i; fedtff implements plain local SGD
and refuses client momentum.

The client work is FedProx's (`fedtff.algorithms.fed_prox`) at μ = 0 with the
update normalized (`local_steps.normalized_update`); the update `(Δ/τ, τ)` is
averaged by TFF's mean, and the finalizer scales the mean by τ_eff
(`local_steps.normalized_server_update`) before TFF's optimizer finalizer
applies it. The compiled engine (`fedtff.compiled.process`) calls the same two
functions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import fed_prox
from fedtff.algorithms import local_steps
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model


def check_client_optimizer(optimizer: optimizers.TffOptimizer) -> None:
  """Refuses a client optimizer other than plain SGD (a_i = τ_i needs it)."""
  if optimizers.plain_sgd_learning_rate(optimizer) is None:
    hparams = optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32)))
    raise ValueError('fednova normalizes plain local SGD (a_i = tau_i); client momentum and '
                     f'adaptive client optimizers are not implemented, got hyperparameters '
                     f'{sorted(hparams)}.')


def check_aggregator(aggregator) -> None:
  """Refuses every aggregator but the mean: clipping or noise would mix τ into the update."""
  if aggregator is None or (isinstance(aggregator, aggregators.AggregatorSpec)
                            and aggregator.kind == 'mean'):
    return
  raise ValueError(f'fednova averages its normalized updates with the mean only, got '
                   f'{getattr(aggregator, "kind", type(aggregator).__name__)!r}; drop aggregator.')


def build_fed_nova(model_fn: tff_model.KerasModelFn,
                   element_spec: tff_model.ElementSpecLike,
                   *,
                   client_optimizer: Optional[optimizers.TffOptimizer] = None,
                   server_optimizer: Optional[optimizers.TffOptimizer] = None,
                   loss: Optional[tf.keras.losses.Loss] = None,
                   metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                   weighted: bool = True,
                   model_aggregator: Optional[aggregators.AggregatorSpec] = None,
                  ) -> tff.learning.templates.LearningProcess:
  """Builds FedNova (module docstring) as a TFF `LearningProcess`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    client_optimizer: Plain SGD (no momentum); defaults to SGD 0.1 (`registry.REGISTRY`).
    server_optimizer: A TFF optimizer applied to τ_eff · Σ p_i d_i; defaults to SGD 1.0.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether p_i is the client's share of the examples (else uniform).
    model_aggregator: None or `AggregatorSpec('mean')`.
  """
  check_aggregator(model_aggregator)
  client_optimizer = optimizers.check(
      client_optimizer or registry.default_client_optimizer('fednova'), 'client')
  check_client_optimizer(client_optimizer)
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('fednova'), 'server')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)

  @tff.tensorflow.computation()
  def initial_model_weights():
    return tff.learning.models.ModelWeights.from_model(learning_model_fn())

  weights_type = initial_model_weights.type_signature.result
  client_work = fed_prox.build_proximal_client_work(
      learning_model_fn, client_optimizer, 0.0,
      tff.learning.ClientWeighting.NUM_EXAMPLES if weighted
      else tff.learning.ClientWeighting.UNIFORM, normalized=True)
  update_type = client_work.next.type_signature.result.result.member.update
  return tff.learning.templates.compose_learning_process(
      initial_model_weights,
      tff.learning.templates.build_broadcast_process(weights_type),
      client_work,
      fed_prox.weighted_mean_factory(None, weighted).create(
          update_type, tff.TensorType(np.float32)),
      _normalized_finalizer(server_optimizer, weights_type, update_type))


def _normalized_finalizer(server_optimizer: optimizers.TffOptimizer, weights_type,
                          update_type) -> tff.learning.templates.FinalizerProcess:
  """TFF's optimizer finalizer applied to τ_eff · mean(d): the mean `(d, τ_eff)` scaled."""
  inner = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type)

  @tff.tensorflow.computation(update_type)
  def scale(mean_update):
    mean_normalized, mean_steps = mean_update
    return local_steps.normalized_server_update(mean_normalized, mean_steps)

  @tff.federated_computation(inner.initialize.type_signature.result,
                             tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(update_type, tff.SERVER))
  def next_fn(state, weights, mean_update):
    return inner.next(state, weights, tff.federated_map(scale, mean_update))

  return tff.learning.templates.FinalizerProcess(
      inner.initialize, next_fn, get_hparams_fn=inner.get_hparams,
      set_hparams_fn=inner.set_hparams)
