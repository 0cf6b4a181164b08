"""FedProx: FedAvg with a proximal term that keeps clients near the server model.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (arXiv 1812.06127). Each client minimises
its loss plus (μ/2)·‖w − w_t‖², w_t being the round's server model, so every
local step follows the gradient g + μ·(w − w_t); μ = 0 is FedAvg.

fedtff builds FedProx's client work itself. TFF 0.87's
`tff.learning.algorithms.build_{weighted,unweighted}_fed_prox` adds
μ·(w_t − w) instead (`templates/proximal_client_work.py`), which pushes each
client away from the server model and diverges over many local steps
(docs/algorithms.md). Everything else is TFF's: the process is composed with
`tff.learning.templates.compose_learning_process` from TFF's broadcast, the
given aggregator and TFF's optimizer finalizer, and has the same type
signature, state and metrics as TFF's FedProx process. Its local steps are
`fedtff.algorithms.local_steps`'s, the functions the compiled engine's client
work calls.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import local_steps
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model

LearningModelFn = Callable[[], tff.learning.models.VariableModel]


def check_proximal_strength(proximal_strength: float) -> None:
  """Refuses a FedProx μ that is not a non-negative number (NaN included); both engines call it.

  Raises:
    ValueError: If `proximal_strength` is negative or NaN.
  """
  if not proximal_strength >= 0:
    raise ValueError(f'proximal_strength (mu) must be non-negative, got {proximal_strength}.')


def build_fed_prox(model_fn: tff_model.KerasModelFn,
                   element_spec: tff_model.ElementSpecLike,
                   *,
                   proximal_strength: float,
                   client_optimizer: Optional[optimizers.TffOptimizer] = None,
                   server_optimizer: Optional[optimizers.TffOptimizer] = None,
                   loss: Optional[tf.keras.losses.Loss] = None,
                   metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                   weighted: bool = True,
                   model_aggregator: Optional[aggregators.AggregationFactory] = None,
                   adaptive: bool = False,
                  ) -> tff.learning.templates.LearningProcess:
  """Builds FedProx as TFF's FedProx process, with the proximal term's sign corrected.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    proximal_strength: μ ≥ 0, the weight of the proximal term.
    client_optimizer: A TFF optimizer; defaults to SGD with learning rate 0.1
      (`registry.REGISTRY`).
    server_optimizer: A TFF optimizer; defaults to SGD with learning rate 1.0.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    model_aggregator: A `tff.aggregators` factory matching `weighted`.
    adaptive: μ lives in the state (`state.client_work`, float32, starting at
      `proximal_strength`) and is broadcast to the clients each round, so that
      the runner can adapt it between rounds (`adapt_proximal_strength`).
  """
  check_proximal_strength(proximal_strength)
  client_optimizer = optimizers.check(
      client_optimizer or registry.default_client_optimizer('fedprox'), 'client')
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('fedprox'), 'server')
  if model_aggregator is not None:
    aggregators.check_weighting(model_aggregator, weighted=weighted, algorithm='FedProx')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)

  @tff.tensorflow.computation()
  def initial_model_weights():
    return tff.learning.models.ModelWeights.from_model(learning_model_fn())

  weights_type = initial_model_weights.type_signature.result
  client_work = build_proximal_client_work(
      learning_model_fn, client_optimizer, float(proximal_strength),
      tff.learning.ClientWeighting.NUM_EXAMPLES if weighted
      else tff.learning.ClientWeighting.UNIFORM, adaptive=adaptive)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights,
      tff.learning.templates.build_broadcast_process(weights_type),
      client_work,
      weighted_mean_factory(model_aggregator, weighted).create(
          weights_type.trainable, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))


def weighted_mean_factory(model_aggregator, weighted: bool
                          ) -> tff.aggregators.WeightedAggregationFactory:
  """`model_aggregator`, or the mean: example-weighted, or uniform as a weighted factory."""
  if weighted:
    return model_aggregator or tff.aggregators.MeanFactory()
  return tff.aggregators.as_weighted_aggregator(
      model_aggregator or tff.aggregators.UnweightedMeanFactory())


def build_proximal_client_work(model_fn: LearningModelFn,
                               optimizer: optimizers.TffOptimizer,
                               proximal_strength: float,
                               weighting: tff.learning.ClientWeighting,
                               *, normalized: bool = False, adaptive: bool = False,
                              ) -> tff.learning.templates.ClientWorkProcess:
  """FedProx's client work: local steps on loss + (μ/2)·‖w − w_t‖².

  Its interface is that of TFF's `proximal_client_work`: stateless, the
  update is w_t − w (the model delta), the update weight is the number of
  examples (or 1 with `UNIFORM`), an update with a non-finite value is zeroed
  and weighted 0, and the training metrics go out as `train`.

  Args:
    model_fn: Returns a new `tff.learning.models.VariableModel`.
    optimizer: The client's TFF optimizer, initialised anew on every client.
    proximal_strength: μ.
    weighting: How each client's update is weighted.
    normalized: FedNova (`fedtff.algorithms.fed_nova`): the update is
      `local_steps.normalized_update`'s `(delta / τ, τ)`, τ the client's steps.
    adaptive: The state is μ (float32, initially `proximal_strength`), broadcast
      to the clients; else the state is empty and μ fixed.
  """
  if adaptive:
    return _adaptive_client_work(model_fn, optimizer, proximal_strength, weighting)
  return stateless_client_work(model_fn, functools.partial(
      _train_client, optimizer=optimizer, proximal_strength=proximal_strength,
      weighting=weighting, normalized=normalized))


def stateless_client_work(model_fn: LearningModelFn, train: Callable[..., Any],
                          ) -> tff.learning.templates.ClientWorkProcess:
  """A stateless client work running `train(model, server_weights, dataset)` on each client.

  `train` returns `(tff.learning.templates.ClientResult, unfinalized metrics)`; the
  metrics are summed and finalized as `train` (TFF's `sum_then_finalize`). FedProx,
  FedNova and q-FedAvg build their TFF client work with it.
  """
  with tf.Graph().as_default():
    model = model_fn()
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(model.metric_finalizers())
  weights_type = tff.learning.models.weights_type_from_model(model)
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(server_weights, dataset):
    # tf.function orders the variable reads and writes (this body is graph code).
    return tf.function(functools.partial(train, model_fn()))(server_weights, dataset)

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    results, model_outputs = tff.federated_map(client_update, (weights, client_data))
    measurements = tff.federated_zip(
        collections.OrderedDict(train=aggregate_metrics(model_outputs)))
    return tff.templates.MeasuredProcessOutput(state, results, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def _adaptive_client_work(model_fn: LearningModelFn, optimizer: optimizers.TffOptimizer,
                          initial_strength: float, weighting: tff.learning.ClientWeighting,
                         ) -> tff.learning.templates.ClientWorkProcess:
  """`build_proximal_client_work` with μ in the state, broadcast each round."""
  with tf.Graph().as_default():
    model = model_fn()
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(model.metric_finalizers())
  weights_type = tff.learning.models.weights_type_from_model(model)
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))

  @tff.tensorflow.computation
  def initial_strength_fn():
    return tf.constant(initial_strength, tf.float32)

  @tff.tensorflow.computation(weights_type, data_type, np.float32)
  def client_update(server_weights, dataset, proximal_strength):
    client_model = model_fn()  # Outside tf.function: it creates variables.
    train = tf.function(lambda weights, data, mu: _train_client(
        client_model, weights, data, optimizer=optimizer, proximal_strength=mu,
        weighting=weighting))
    return train(server_weights, dataset, proximal_strength)

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_strength_fn, tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    results, model_outputs = tff.federated_map(
        client_update, (weights, client_data, tff.federated_broadcast(state)))
    measurements = tff.federated_zip(
        collections.OrderedDict(train=aggregate_metrics(model_outputs)))
    return tff.templates.MeasuredProcessOutput(state, results, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


@dataclasses.dataclass(frozen=True)
class AdaptiveStrength:
  """Li et al.'s adaptive μ (arXiv 1812.06127, Appendix C.3.3), as pfl-research's
  `AdaptMuOnMetricCallback` (`pfl/algorithm/fedprox.py`) implements it.

  After each round, with the round's loss L and the previous round's L':
  if L < L', one more improvement in a row, and once there are `patience` in a
  row every further improvement lowers μ by `step` (to no less than 0);
  otherwise the count restarts and μ rises by `step` (to no more than
  `maximum`). Li et al.: step 0.1, 5 rounds; pfl-research's default patience is 1.

  Attributes:
    step: How much μ moves.
    patience: Improvements in a row before μ decreases.
    maximum: The largest μ (pfl-research: 1).
  """
  step: float = 0.1
  patience: int = 5
  maximum: float = 1.0

  def next(self, strength: float, loss: float, previous_loss: float,
           improvements: int) -> Tuple[float, int]:
    """`(μ, improvements in a row)` after a round of loss `loss`."""
    if loss < previous_loss:
      improvements += 1
      if improvements >= self.patience:
        strength = max(0.0, strength - self.step)
      return strength, improvements
    return min(self.maximum, strength + self.step), 0

  def replay(self, losses: Sequence[float]) -> Tuple[float, int]:
    """`(last loss, improvements in a row)` after rounds of `losses` (a resume)."""
    previous, improvements = math.inf, 0
    for loss in losses:
      _, improvements = self.next(0.0, loss, previous, improvements)
      previous = loss
    return previous, improvements


def _train_client(model: tff.learning.models.VariableModel,
                  server_weights: tff.learning.models.ModelWeights,
                  dataset: tf.data.Dataset, *,
                  optimizer: optimizers.TffOptimizer,
                  proximal_strength: float,
                  weighting: tff.learning.ClientWeighting,
                  normalized: bool = False):
  """Trains `model` from `server_weights` over `dataset`; returns (ClientResult, metrics).

  With `normalized` (FedNova) the update is `(delta / τ, τ)`, τ the number of batches.
  """
  weights = tff.learning.models.ModelWeights.from_model(model)
  tf.nest.map_structure(lambda variable, value: variable.assign(value), weights, server_weights)
  trainable = tuple(tf.nest.flatten(weights.trainable))
  anchor = tuple(tf.nest.flatten(server_weights.trainable))

  num_examples, num_steps = local_steps.train_locally(
      model, optimizer, trainable, dataset, lambda gradients: local_steps.proximal_gradients(
          gradients, trainable, anchor, proximal_strength))
  update = local_steps.model_delta(server_weights.trainable, weights.trainable)
  if normalized:
    update = local_steps.normalized_update(update, num_steps)
  weight = local_steps.client_weight(
      num_examples, weighted=weighting == tff.learning.ClientWeighting.NUM_EXAMPLES)
  update, weight, _ = local_steps.zero_non_finite(update, weight)
  return (tff.learning.templates.ClientResult(update=update, update_weight=weight),
          model.report_local_unfinalized_metrics())
