"""Ditto: FedAvg for the global model, plus a personal model on every client.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021 (arXiv 2012.04221), Algorithm 1. The global model
w is trained by FedAvg: in a round with clients S, client k runs its local
SGD epochs from w^t and the server applies the (weighted) mean of the deltas
with its SGD optimizer. Each selected client also keeps a personal model v_k
and takes, over the same batches, the steps
v_k ← v_k − η (∇F_k(v_k) + λ (v_k − w^t)), w^t the round's global model
(the reference code, litian96/ditto `flearn/trainers_MTL/ditto.py`, takes
one personal step per global step on the same batch, with the same η; the
personal steps do not depend on the global ones, so running them after is the
same update). The personal models never reach the server.

Each client's state is one float32 row `[v_k flattened (trainable weights), seen]`
in the runner's `fedtff.runner.client_states.ClientStateStore`; rows start at
zero, so `seen` = 0 marks a client never selected, whose v_k starts as the
round's w^t when it is first selected (the reference code starts every v_k at
w^0, the initial model; the paper's Algorithm 1 leaves v_k^0 as an input).
Like SCAFFOLD (`fedtff.algorithms.scaffold`), Ditto is a
`tff.templates.IterativeProcess` (`DittoProcess`) whose `next(state,
client_data, client_rows)` takes the round's rows at CLIENTS and returns
`DittoOutput(state, metrics, client_controls)`, the new rows at CLIENTS (the
field is named as SCAFFOLD's, the runner's stateful-round protocol). The
personal step is `fedtff.algorithms.local_steps.proximal_gradients` with
μ = λ and anchor w^t, then the client optimizer's step (`local_step`); the
compiled engine (`fedtff/compiled/ditto.py`) calls the same functions.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import fed_prox
from fedtff.algorithms import local_steps
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import scaffold
from fedtff.algorithms import tff_model

LearningModelFn = Callable[[], tff.learning.models.VariableModel]


class DittoOutput(NamedTuple):
  """A Ditto round's output: `LearningProcessOutput`'s fields and the clients' new rows."""
  state: Any
  metrics: Any
  client_controls: Any


class DittoProcess(tff.templates.IterativeProcess):
  """Ditto's process: `LearningProcess`'s methods, plus the clients' personal-model rows.

  Attributes:
    personal_template: The trainable weights' shapes (a list of zero NumPy arrays).
    ditto_lambda: λ.
  """

  def __init__(self, initialize_fn, next_fn, get_model_weights, set_model_weights, *,
               personal_template: List[np.ndarray], ditto_lambda: float):
    super().__init__(initialize_fn, next_fn)
    self.get_model_weights = get_model_weights
    self.set_model_weights = set_model_weights
    self.personal_template = personal_template
    self.ditto_lambda = ditto_lambda

  @property
  def state_size(self) -> int:
    """The number of float32 values in one client's row: v_k and the 'seen' flag."""
    return personal_size(self.personal_template) + 1

  def flatten_controls(self, rows: Sequence[Any]) -> np.ndarray:
    """The clients' rows (as `next` returns them) as one `[clients, state_size]` array."""
    return (np.stack([np.asarray(r, np.float32) for r in rows]) if len(rows)
            else np.zeros([0, self.state_size], np.float32))

  def unflatten_controls(self, rows: np.ndarray) -> List[np.ndarray]:
    """`[clients, state_size]` rows as the list of rows `next` takes."""
    return list(np.asarray(rows, np.float32))


def personal_size(template: Sequence[np.ndarray]) -> int:
  return int(sum(np.size(t) for t in template))


def personal_models(rows: np.ndarray, global_trainable: Sequence[np.ndarray]
                    ) -> List[List[np.ndarray]]:
  """The clients' personal models v_k from their rows; the global model where unseen."""
  out = []
  for row in np.asarray(rows, np.float32):
    out.append([np.asarray(w, np.float32) for w in global_trainable] if row[-1] <= 0 else
               scaffold.unflatten(row[:-1], global_trainable))
  return out


def check_lambda(ditto_lambda) -> float:
  if ditto_lambda is None or not np.isfinite(ditto_lambda) or ditto_lambda < 0:
    raise ValueError(f'Ditto needs ditto_lambda (λ) as a finite number >= 0, got {ditto_lambda}.')
  return float(ditto_lambda)


def check_client_optimizer(optimizer: optimizers.TffOptimizer) -> float:
  """η of a plain SGD client optimizer (the paper's personal step); refuses any other."""
  learning_rate = optimizers.plain_sgd_learning_rate(optimizer)
  if learning_rate is None:
    raise ValueError('Ditto needs a plain SGD client optimizer (its personal step is '
                     'v ← v − η(∇F_k(v) + λ(v − w))); use '
                     "fedtff.build_optimizer('sgd', lr).")
  return learning_rate


def build_ditto(model_fn: tff_model.KerasModelFn,
                element_spec: tff_model.ElementSpecLike,
                *,
                ditto_lambda: float,
                client_optimizer: Optional[optimizers.TffOptimizer] = None,
                server_optimizer: Optional[optimizers.TffOptimizer] = None,
                loss: Optional[tf.keras.losses.Loss] = None,
                metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                weighted: bool = True) -> DittoProcess:
  """Builds Ditto (Algorithm 1) as a `DittoProcess`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    ditto_lambda: λ ≥ 0, the pull of v_k toward w^t.
    client_optimizer: Plain SGD with learning rate η (global and personal
      steps); defaults to 0.1.
    server_optimizer: A TFF SGD optimizer; defaults to 1.0 (FedAvg).
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy. The round's `train` metrics
      are the global model's training, as FedAvg's.
    weighted: Whether the mean of the deltas is weighted by examples.
  """
  ditto_lambda = check_lambda(ditto_lambda)
  client_optimizer = optimizers.check(
      client_optimizer or registry.default_client_optimizer('ditto'), 'client')
  check_client_optimizer(client_optimizer)
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('ditto'), 'server')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)

  @tff.tensorflow.computation()
  def initial_model_weights():
    return tff.learning.models.ModelWeights.from_model(learning_model_fn())

  weights_type = initial_model_weights.type_signature.result
  template = [np.zeros(t.shape, np.float32) for t in weights_type.trainable]
  row_type = tff.TensorType(np.float32, [personal_size(template) + 1])
  aggregator = fed_prox.weighted_mean_factory(None, weighted).create(
      weights_type.trainable, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer,
                                                                     weights_type)
  client_update = _client_update(learning_model_fn, weights_type, row_type, client_optimizer,
                                 ditto_lambda, weighted)
  with tf.Graph().as_default():
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(
        learning_model_fn().metric_finalizers())

  @tff.federated_computation()
  def initialize_fn():
    return tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        global_model_weights=tff.federated_eval(initial_model_weights, tff.SERVER),
        distributor=tff.federated_value((), tff.SERVER),
        client_work=tff.federated_value((), tff.SERVER), aggregator=aggregator.initialize(),
        finalizer=finalizer.initialize()))

  state_type = initialize_fn.type_signature.result

  @tff.federated_computation(state_type, tff.FederatedType(client_update.type_signature.parameter[
      1], tff.CLIENTS), tff.FederatedType(row_type, tff.CLIENTS))
  def next_fn(state, client_data, client_rows):
    weights = tff.federated_broadcast(state.global_model_weights)
    result, new_rows, model_outputs = tff.federated_map(
        client_update, (weights, client_data, client_rows))
    aggregated = aggregator.next(state.aggregator, result.update, result.update_weight)
    finalized = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
    new_state = tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        global_model_weights=finalized.result, distributor=tff.federated_value((), tff.SERVER),
        client_work=tff.federated_value((), tff.SERVER), aggregator=aggregated.state,
        finalizer=finalized.state))
    measurements = scaffold.round_measurements(aggregate_metrics(model_outputs), aggregated,
                                               finalized)
    return DittoOutput(new_state, measurements, new_rows)

  get_model_weights, set_model_weights = scaffold.model_weights_accessors(state_type,
                                                                          weights_type)

  return DittoProcess(initialize_fn, next_fn, get_model_weights, set_model_weights,
                      personal_template=template, ditto_lambda=ditto_lambda)


def _client_update(model_fn: LearningModelFn, weights_type, row_type,
                   optimizer: optimizers.TffOptimizer, ditto_lambda: float, weighted: bool):
  """The client's computation: `(w^t, dataset, row) -> (ClientResult, new row, metrics)`."""
  with tf.Graph().as_default():
    model = model_fn()
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))

  @tff.tensorflow.computation(weights_type, data_type, row_type)
  def client_update(server_weights, dataset, row):
    train = tf.function(functools.partial(_train_client, model_fn(), optimizer, ditto_lambda,
                                          weighted))
    return train(server_weights, dataset, row)

  return client_update


def _train_client(model: tff.learning.models.VariableModel, optimizer: optimizers.TffOptimizer,
                  ditto_lambda: float, weighted: bool,
                  server_weights: tff.learning.models.ModelWeights, dataset: tf.data.Dataset,
                  row: tf.Tensor):
  """FedAvg's local SGD from w^t, then the personal steps from v_k over the same batches."""
  weights = tff.learning.models.ModelWeights.from_model(model)
  tf.nest.map_structure(lambda variable, value: variable.assign(value), weights, server_weights)
  trainable = tuple(tf.nest.flatten(weights.trainable))
  anchor = tuple(tf.nest.flatten(server_weights.trainable))
  num_examples, _ = local_steps.train_locally(model, optimizer, trainable, dataset)
  update = local_steps.model_delta(server_weights.trainable, weights.trainable)
  weight = local_steps.client_weight(num_examples, weighted=weighted)
  update, weight, _ = local_steps.zero_non_finite(update, weight)
  train_metrics = model.report_local_unfinalized_metrics()  # The global model's, read first.

  personal = local_steps.ditto_initial_personal(row, anchor)
  with tf.control_dependencies(tf.nest.flatten(train_metrics) + tf.nest.flatten(update)):
    for variable, value in zip(trainable, personal):
      variable.assign(value)

  local_steps.train_locally(model, optimizer, trainable, dataset, lambda gradients: (
      local_steps.proximal_gradients(gradients, trainable, anchor, ditto_lambda)))
  new_row = local_steps.ditto_row([v.read_value() for v in trainable], personal)
  return (tff.learning.templates.ClientResult(update=update, update_weight=weight), new_row,
          train_metrics)
