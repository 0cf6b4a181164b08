"""SCAFFOLD: client drift corrected by control variates, option II.

Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020 (arXiv 1910.06378),
Algorithm 1 with option II. Every client i holds a control variate c_i, the
server a control variate c (zero at the start). In a round with clients S,
client i starts from the server model x and takes K steps of SGD with
learning rate η_l on the corrected gradient, y ← y − η_l (g(y) − c_i + c);
its next control variate is c_i⁺ = c_i − c + (x − y) / (K η_l). The server
applies x ← x + η_g · mean Δy (as the server SGD optimizer with learning rate
η_g on the mean of x − y) and c ← c + (|S| / N) · mean Δc, N the population.

The per-client control variates flow in and out of each round. TFF 0.87's
`tff.learning.templates.LearningProcess` refuses an output placed at CLIENTS
(its `next` returns state and SERVER-placed metrics only), so SCAFFOLD is a
`tff.templates.IterativeProcess` (`ScaffoldProcess`) whose `next(state,
client_data, client_controls)` takes the round's c_i at CLIENTS, in the
clients' order, and returns `ScaffoldOutput(state, metrics, client_controls)`
with their c_i⁺ at CLIENTS; the runner keeps them in its
`fedtff.runner.client_states.ClientStateStore`. Its state is TFF's
`LearningAlgorithmState` with c in `client_work`. The arithmetic is
`fedtff.algorithms.local_steps`'s (`scaffold_gradients`, `scaffold_control`,
`scaffold_server_control`), which the compiled engine calls too.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import fed_prox
from fedtff.algorithms import local_steps
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model

LearningModelFn = Callable[[], tff.learning.models.VariableModel]


class ScaffoldOutput(NamedTuple):
  """A SCAFFOLD round's output: `LearningProcessOutput`'s fields and the clients' c_i⁺."""
  state: Any
  metrics: Any
  client_controls: Any


class ScaffoldProcess(tff.templates.IterativeProcess):
  """SCAFFOLD's process: `LearningProcess`'s methods, plus the clients' control variates.

  Attributes:
    population_size: N.
    control_template: A zero control variate (a list of NumPy arrays, the
      model's trainable weights' shapes).
  """

  def __init__(self, initialize_fn, next_fn, get_model_weights, set_model_weights, *,
               population_size: int, control_template: List[np.ndarray]):
    super().__init__(initialize_fn, next_fn)
    self.get_model_weights = get_model_weights
    self.set_model_weights = set_model_weights
    self.population_size = population_size
    self.control_template = control_template

  @property
  def state_size(self) -> int:
    """The number of float32 values in one client's control variate."""
    return int(sum(np.size(c) for c in self.control_template))

  def flatten_controls(self, controls: Sequence[Any]) -> np.ndarray:
    """Clients' control variates (each a list of arrays) as `[clients, state_size]` rows."""
    return np.stack([np.concatenate([np.ravel(np.asarray(t)) for t in c]) for c in controls]
                    ) if len(controls) else np.zeros([0, self.state_size], np.float32)

  def unflatten_controls(self, rows: np.ndarray) -> List[List[np.ndarray]]:
    """`[clients, state_size]` rows as control variates (lists of float32 arrays)."""
    return [unflatten(row, self.control_template) for row in np.asarray(rows, np.float32)]


def unflatten(row: np.ndarray, template: Sequence[np.ndarray]) -> List[np.ndarray]:
  """One flat row cut into arrays of `template`'s shapes."""
  out, start = [], 0
  for like in template:
    out.append(np.reshape(row[start:start + np.size(like)], np.shape(like)).astype(np.float32))
    start += np.size(like)
  return out


def sgd_learning_rate(optimizer: optimizers.TffOptimizer) -> float:
  """η_l of a plain SGD client optimizer; refuses any other optimizer (option II's
  c_i⁺ assumes y moved by −η_l per unit of corrected gradient)."""
  learning_rate = optimizers.plain_sgd_learning_rate(optimizer)
  if learning_rate is None:
    hparams = dict(optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32))))
    raise ValueError('SCAFFOLD needs a plain SGD client optimizer (option II divides by K·η_l); '
                     f"got hyperparameters {hparams}; use fedtff.build_optimizer('sgd', lr).")
  return learning_rate


def check_population_size(population_size) -> int:
  if population_size is None or int(population_size) != population_size or population_size < 1:
    raise ValueError('SCAFFOLD needs population_size (N, the number of training clients, '
                     f'for c ← c + Σ Δc_i / N) as a positive integer, got {population_size}.')
  return int(population_size)


def build_scaffold(model_fn: tff_model.KerasModelFn,
                   element_spec: tff_model.ElementSpecLike,
                   *,
                   population_size: int,
                   client_optimizer: Optional[optimizers.TffOptimizer] = None,
                   server_optimizer: Optional[optimizers.TffOptimizer] = None,
                   loss: Optional[tf.keras.losses.Loss] = None,
                   metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                   weighted: bool = True) -> ScaffoldProcess:
  """Builds SCAFFOLD (option II) as a `ScaffoldProcess`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    population_size: N, the number of clients the controls are averaged over.
    client_optimizer: Plain SGD with learning rate η_l; defaults to 0.1.
    server_optimizer: A TFF SGD optimizer with learning rate η_g; defaults to 1.0.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy.
    weighted: Whether the mean of the Δy is weighted by examples (the paper's
      mean is uniform: weighted=False); the Δc are always summed over N.
  """
  population_size = check_population_size(population_size)
  client_optimizer = optimizers.check(
      client_optimizer or registry.default_client_optimizer('scaffold'), 'client')
  learning_rate = sgd_learning_rate(client_optimizer)
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('scaffold'), 'server')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)

  @tff.tensorflow.computation()
  def initial_model_weights():
    return tff.learning.models.ModelWeights.from_model(learning_model_fn())

  weights_type = initial_model_weights.type_signature.result
  control_type = weights_type.trainable
  aggregator = fed_prox.weighted_mean_factory(None, weighted).create(
      control_type, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer,
                                                                     weights_type)
  client_update = _client_update(learning_model_fn, weights_type, learning_rate,
                                 client_optimizer, weighted)
  with tf.Graph().as_default():
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(
        learning_model_fn().metric_finalizers())

  @tff.tensorflow.computation(control_type, control_type)
  def next_server_control(control, delta_sum):
    return local_steps.scaffold_server_control(control, delta_sum, population_size)

  @tff.federated_computation()
  def initialize_fn():
    weights = tff.federated_eval(initial_model_weights, tff.SERVER)
    control = tff.federated_map(_zeros_computation(weights_type), weights)
    return tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        global_model_weights=weights, distributor=tff.federated_value((), tff.SERVER),
        client_work=control, aggregator=aggregator.initialize(),
        finalizer=finalizer.initialize()))

  state_type = initialize_fn.type_signature.result

  @tff.federated_computation(state_type, tff.FederatedType(client_update.type_signature.parameter[
      2], tff.CLIENTS), tff.FederatedType(control_type, tff.CLIENTS))
  def next_fn(state, client_data, client_controls):
    weights = tff.federated_broadcast(state.global_model_weights)
    control = tff.federated_broadcast(state.client_work)
    result, delta_control, new_controls, model_outputs = tff.federated_map(
        client_update, (weights, control, client_data, client_controls))
    aggregated = aggregator.next(state.aggregator, result.update, result.update_weight)
    finalized = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
    new_control = tff.federated_map(next_server_control, (
        state.client_work, tff.federated_sum(delta_control)))
    new_state = tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        global_model_weights=finalized.result, distributor=tff.federated_value((), tff.SERVER),
        client_work=new_control, aggregator=aggregated.state, finalizer=finalized.state))
    measurements = round_measurements(aggregate_metrics(model_outputs), aggregated, finalized)
    return ScaffoldOutput(new_state, measurements, new_controls)

  get_model_weights, set_model_weights = model_weights_accessors(state_type, weights_type)

  template = [np.zeros(t.shape, np.float32) for t in control_type]
  return ScaffoldProcess(initialize_fn, next_fn, get_model_weights, set_model_weights,
                         population_size=population_size, control_template=template)


def model_weights_accessors(state_type, weights_type):
  """`(get_model_weights, set_model_weights)` of a process whose state is TFF's
  `LearningAlgorithmState` (SCAFFOLD's and Ditto's `IterativeProcess`es)."""

  @tff.tensorflow.computation(state_type.member)
  def get_model_weights(state):
    return state.global_model_weights

  @tff.tensorflow.computation(state_type.member, weights_type)
  def set_model_weights(state, weights):
    return tff.learning.templates.LearningAlgorithmState(
        global_model_weights=weights, distributor=state.distributor,
        client_work=state.client_work, aggregator=state.aggregator, finalizer=state.finalizer)

  return get_model_weights, set_model_weights


def round_measurements(train_metrics, aggregated, finalized):
  """A round's measurements in a `LearningProcess`'s layout: the client work's
  `train` metrics, the aggregator's and the finalizer's (placed at SERVER)."""
  return tff.federated_zip(collections.OrderedDict(
      distributor=tff.federated_value((), tff.SERVER),
      client_work=tff.federated_zip(collections.OrderedDict(train=train_metrics)),
      aggregator=aggregated.measurements, finalizer=finalized.measurements))


def _zeros_computation(weights_type):
  """`ModelWeights -> zeros of its trainable weights`: c's initial value."""
  @tff.tensorflow.computation(weights_type)
  def zeros(weights):
    return [tf.zeros_like(t) for t in weights.trainable]
  return zeros


def _client_update(model_fn: LearningModelFn, weights_type, learning_rate: float,
                   optimizer: optimizers.TffOptimizer, weighted: bool):
  """The client's computation: `(x, c, dataset, c_i) -> (ClientResult, Δc_i, c_i⁺, metrics)`."""
  with tf.Graph().as_default():
    model = model_fn()
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))

  @tff.tensorflow.computation(weights_type, weights_type.trainable, data_type,
                              weights_type.trainable)
  def client_update(server_weights, server_control, dataset, client_control):
    train = tf.function(functools.partial(_train_client, model_fn(), optimizer, learning_rate,
                                          weighted))
    return train(server_weights, server_control, dataset, client_control)

  return client_update


def _train_client(model: tff.learning.models.VariableModel, optimizer: optimizers.TffOptimizer,
                  learning_rate: float, weighted: bool,
                  server_weights: tff.learning.models.ModelWeights, server_control: Any,
                  dataset: tf.data.Dataset, client_control: Any):
  """K corrected SGD steps from x over `dataset`; returns (ClientResult, Δc_i, c_i⁺, metrics)."""
  weights = tff.learning.models.ModelWeights.from_model(model)
  tf.nest.map_structure(lambda variable, value: variable.assign(value), weights, server_weights)
  trainable = tuple(tf.nest.flatten(weights.trainable))
  c_i, c = tuple(tf.nest.flatten(client_control)), tuple(tf.nest.flatten(server_control))

  num_examples, num_steps = local_steps.train_locally(
      model, optimizer, trainable, dataset,
      lambda gradients: local_steps.scaffold_gradients(gradients, c_i, c))
  update = local_steps.model_delta(server_weights.trainable, weights.trainable)
  weight = local_steps.client_weight(num_examples, weighted=weighted)
  update, weight, non_finite = local_steps.zero_non_finite(update, weight)
  new_control = local_steps.scaffold_control(c_i, c, tf.nest.flatten(update), num_steps,
                                             learning_rate, non_finite)
  delta_control = [new - old for new, old in zip(new_control, c_i)]
  return (tff.learning.templates.ClientResult(update=update, update_weight=weight),
          delta_control, new_control, model.report_local_unfinalized_metrics())
