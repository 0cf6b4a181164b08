"""q-FedAvg: FedAvg whose server step weights each client by its loss raised to q.

Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020 (arXiv 1905.10497), Algorithm 3 (q-FedAvg). Client k
starts from w_t, computes F_k(w_t) (its mean training loss at w_t), runs
FedAvg's local SGD epochs to w̄_k, and sends Δ_k = F^q·L(w_t − w̄_k) and
h_k = q·F^(q−1)·‖L(w_t − w̄_k)‖² + L·F^q, L = 1/η; the server steps to
w_t − Σ_k Δ_k / Σ_k h_k. Larger q weights clients with larger losses more,
for a more uniform loss across clients; q = 0 is FedAvg with every client
weighted equally. The reference code is litian96/fair_flearn,
flearn/trainers/qffedavg.py.

fedtff builds the client work itself (TFF 0.87 has no q-FedAvg). The client
sends Δ_k / h_k with weight h_k (`local_steps.q_fair_update`), so TFF's
weighted `MeanFactory` gives Σ_k Δ_k / Σ_k h_k and TFF's optimizer finalizer
with SGD at learning rate 1 applies the step; the process is composed with
`tff.learning.templates.compose_learning_process` like FedProx
(`fedtff.algorithms.fed_prox`), and the compiled engine runs the same
functions (`fedtff/compiled/process.py`).

What does not fit is refused (`check_options`): L = 1/η assumes plain SGD on
the clients; the server rule is the paper's, so the server optimizer is SGD
at 1.0; the weights are the h_k, so `weighted=False`, DP, robust and other
aggregators, and client learning-rate schedules do not apply.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import fed_prox
from fedtff.algorithms import local_steps
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model

LearningModelFn = Callable[[], tff.learning.models.VariableModel]


def client_learning_rate(client_optimizer: Optional[optimizers.TffOptimizer]) -> float:
  """η of q-FedAvg's plain-SGD client optimizer (its default when None); L = 1/η."""
  optimizer = client_optimizer or registry.default_client_optimizer('qfedavg')
  return optimizers.plain_sgd_learning_rate(optimizer)


def check_options(*, q: Any, client_optimizer: Any, server_optimizer: Any, weighted: bool,
                  aggregator: Any) -> None:
  """Refuses what q-FedAvg does not combine with, one sentence each.

  Raises:
    ValueError: q missing or negative; a client optimizer other than plain SGD
      (L = 1/η assumes SGD); a server optimizer other than SGD at learning rate
      1.0 without momentum (the paper's server step); `weighted=False` (the
      weights are the h_k); an aggregator other than the mean.
  """
  if q is None or not q >= 0:
    raise ValueError(f'qfedavg needs q >= 0 (Li et al. 2020), got q={q}.')
  if client_optimizer is not None and not (isinstance(client_optimizer, optimizers.TffOptimizer)
                                           and optimizers.plain_sgd_learning_rate(client_optimizer) is not None):
    raise ValueError('qfedavg needs a plain SGD client optimizer (no momentum): its L = 1/eta '
                     "assumes SGD steps; pass fedtff.build_optimizer('sgd', eta).")
  if server_optimizer is not None and not (
      isinstance(server_optimizer, optimizers.TffOptimizer)
      and optimizers.plain_sgd_learning_rate(server_optimizer) == 1.0):
    raise ValueError("qfedavg's server step is w - sum(Delta)/sum(h) (Li et al. 2020); drop "
                     "server_optimizer or pass fedtff.build_optimizer('sgd', 1.0).")
  if not weighted:
    raise ValueError('qfedavg weights each client by its h_k (Li et al. 2020); drop weighted=False.')
  if aggregator is not None and not (isinstance(aggregator, aggregators.AggregatorSpec)
                                     and aggregator.kind == 'mean'):
    raise ValueError('qfedavg aggregates with the weighted mean of its own weights h_k; drop the '
                     f'aggregator (got {aggregator!r}): DP, robust and other aggregators do not '
                     'apply.')


def build_q_fed_avg(model_fn: tff_model.KerasModelFn,
                    element_spec: tff_model.ElementSpecLike,
                    *,
                    q: float,
                    client_optimizer: Optional[optimizers.TffOptimizer] = None,
                    server_optimizer: Optional[optimizers.TffOptimizer] = None,
                    loss: Optional[tf.keras.losses.Loss] = None,
                    metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                    model_aggregator: Any = None,
                   ) -> tff.learning.templates.LearningProcess:
  """Builds q-FedAvg (Li et al., ICLR 2020, Algorithm 3) as a TFF learning process.

  Its state and metrics are FedProx's (`fedtff.algorithms.fed_prox`): stateless
  client work reporting `train` metrics, TFF's weighted mean (`mean_value`,
  `mean_weight`) and SGD finalizer (learning rate 1).

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    q: q ≥ 0, the fairness exponent; 0 is FedAvg with clients weighted equally.
    client_optimizer: A plain SGD TFF optimizer; defaults to SGD 0.1. L = 1/η.
    server_optimizer: None, or SGD with learning rate 1.0 (the paper's step).
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    model_aggregator: None, or a `fedtff.AggregatorSpec` of kind 'mean'.
  """
  check_options(q=q, client_optimizer=client_optimizer, server_optimizer=server_optimizer,
                weighted=True, aggregator=model_aggregator)
  client_optimizer = optimizers.check(
      client_optimizer or registry.default_client_optimizer('qfedavg'), 'client')
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('qfedavg'), 'server')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)

  @tff.tensorflow.computation()
  def initial_model_weights():
    return tff.learning.models.ModelWeights.from_model(learning_model_fn())

  weights_type = initial_model_weights.type_signature.result
  client_work = build_q_fair_client_work(learning_model_fn, client_optimizer, float(q))
  return tff.learning.templates.compose_learning_process(
      initial_model_weights,
      tff.learning.templates.build_broadcast_process(weights_type),
      client_work,
      tff.aggregators.MeanFactory().create(weights_type.trainable, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))


def build_q_fair_client_work(model_fn: LearningModelFn, optimizer: optimizers.TffOptimizer,
                             q: float) -> tff.learning.templates.ClientWorkProcess:
  """q-FedAvg's client work: F_k(w_t), local SGD, then `(Δ_k / h_k, h_k)`.

  Stateless; the update is Δ_k / h_k and its weight h_k
  (`local_steps.q_fair_update`); an update with a non-finite value is zeroed
  and weighted 0; the training metrics (of the SGD steps only) go out as `train`.

  Args:
    model_fn: Returns a new `tff.learning.models.VariableModel`.
    optimizer: The client's plain SGD optimizer, initialised anew on every client.
    q: q ≥ 0.
  """
  return fed_prox.stateless_client_work(model_fn, functools.partial(
      _train_client, optimizer=optimizer, q=q, learning_rate=client_learning_rate(optimizer)))


def _train_client(model: tff.learning.models.VariableModel,
                  server_weights: tff.learning.models.ModelWeights,
                  dataset: tf.data.Dataset, *,
                  optimizer: optimizers.TffOptimizer,
                  q: float,
                  learning_rate: float):
  """F_k(w_t) over `dataset`, then SGD over it; returns (ClientResult, metrics).

  The dataset is read twice (the loss pass, then training), as TFF's Mime
  Lite reads it; the compiled engine runs both passes over the same batches.
  """
  weights = tff.learning.models.ModelWeights.from_model(model)
  tf.nest.map_structure(lambda variable, value: variable.assign(value), weights, server_weights)
  trainable = tuple(tf.nest.flatten(weights.trainable))

  def loss_step(sums, batch):
    output = model.forward_pass(batch, training=False)
    return local_steps.add_loss(sums, output.loss, local_steps.batch_examples(output))

  loss_sums = dataset.reduce((tf.constant(0.0), tf.constant(0.0)), loss_step)
  with tf.control_dependencies(loss_sums):
    model.reset_metrics()  # The training metrics are the SGD steps', as FedAvg reports them.

  local_steps.train_locally(model, optimizer, trainable, dataset)
  delta = local_steps.model_delta(server_weights.trainable, weights.trainable)
  flat_update, weight = local_steps.q_fair_update(tf.nest.flatten(delta), loss_sums, q,
                                                  learning_rate)
  update = tf.nest.pack_sequence_as(delta, flat_update)
  update, weight, _ = local_steps.zero_non_finite(update, weight)
  return (tff.learning.templates.ClientResult(update=update, update_weight=weight),
          model.report_local_unfinalized_metrics())
