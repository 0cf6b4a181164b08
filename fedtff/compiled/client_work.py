"""Client work of the FedAvg family, FedSGD and Mime Lite, in graph, over padded batches.

Each function mirrors TFF 0.87's client work step for step, so that the compiled
engine's arithmetic is TFF's:

* `train_delta` is `model_delta_client_work` (FedAvg, McMahan et al.,
  AISTATS 2017, arXiv 1602.05629; with any server optimizer, Reddi et al.,
  ICLR 2021, arXiv 2003.00295): from the server weights, one client-optimizer
  step per batch on the batch's mean loss, starting from `initial_state`
  (`fresh_optimizer_state`: a fresh state per client, with the server's
  hyperparameters or, with a client learning-rate schedule, the optimizer
  built for the round's learning rate); the update is `initial - trained`.
* with `proximal_strength`, fedtff's FedProx client work
  (`fedtff.algorithms.fed_prox`; Li et al., MLSys 2020, arXiv 1812.06127):
  each step's gradient gets the proximal term `mu * (w - w_initial)` added
  (TFF 0.87's own `proximal_client_work` has the opposite sign).
* with `frozen_state=True`, Mime Lite's local training (TFF's `mime.py`;
  Karimireddy et al., NeurIPS 2021, arXiv 2008.03606): every step applies the
  server's base-optimizer state and discards the state the step returns.
* with `control`, SCAFFOLD's client work (`fedtff.algorithms.scaffold`;
  Karimireddy et al., ICML 2020, arXiv 1910.06378): each step's gradient is
  corrected to g − c_i + c (`local_steps.scaffold_gradients`).
* `loss_sums` is q-FedAvg's loss pass (fedtff's `fedtff.algorithms.q_fed_avg`;
  Li et al., ICLR 2020, arXiv 1905.10497): the sums behind F_k(w_t), the
  client's mean loss at the server weights, without metric updates.
* `sum_gradients` is `fed_sgd`'s client update: at the server weights, the sum
  over batches of `num_examples(batch) * grad(batch loss)`, divided by the
  client's examples. Mime Lite's full-batch gradient is the same sum, divided
  with `divide_no_nan` and without metric updates (TFF resets the metrics
  after that pass).

The local steps (the proximal term, an optimizer step, the delta, the
client weight and the non-finite rule) are `fedtff.algorithms.local_steps`'s,
which fedtff's TFF FedProx client work calls too; metrics are finalized by
`fedtff.algorithms.tff_model.finalize_metrics`, the TFF model's finalizer.

A batch's forward pass, loss and metric updates are
`fedtff.algorithms.batch_loss.forward` on the batch's real rows (the mask):
the function fedtff's TFF model runs, and Keras's values on the unpadded batch.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import batch_loss
from fedtff.algorithms import local_steps
from fedtff.algorithms import tff_model
from fedtff.compiled import batches as batches_lib

Weights = tff.learning.models.ModelWeights


class BatchOutput(NamedTuple):
  """One padded batch's forward pass."""
  loss: tf.Tensor          # The training loss: data loss plus Keras regularization losses.
  data_loss: tf.Tensor     # The loss function alone, as TFF's `loss` metric records it.
  num_examples: tf.Tensor  # int32: real rows in the batch.


class TrainStats(NamedTuple):
  """A client's (or a round's) sums behind TFF's loss and counter metrics."""
  loss_sum: tf.Tensor      # sum of data_loss * num_examples over batches
  loss_count: tf.Tensor    # sum of num_examples, float32
  num_examples: tf.Tensor  # int64
  num_batches: tf.Tensor   # int64

  @classmethod
  def zeros(cls) -> 'TrainStats':
    return cls(tf.constant(0.0), tf.constant(0.0), tf.constant(0, tf.int64),
               tf.constant(0, tf.int64))

  def add_batch(self, output: BatchOutput) -> 'TrainStats':
    """The sums with one batch added; the loss in float32, as TFF's float32 `loss` metric
    (`from_keras_model`'s `_WeightedMeanLossMetric`) casts it, whatever the model's dtype."""
    examples = tf.cast(output.num_examples, tf.float32)
    data_loss = tf.cast(output.data_loss, tf.float32)
    return TrainStats(self.loss_sum + data_loss * examples, self.loss_count + examples,
                      self.num_examples + tf.cast(output.num_examples, tf.int64),
                      self.num_batches + 1)

  def __add__(self, other: 'TrainStats') -> 'TrainStats':
    return TrainStats(*[a + b for a, b in zip(tuple(self), tuple(other))])


class PaddedModel:
  """A Keras model, loss and metrics applied to masked, padded batches.

  The forward pass is `fedtff.algorithms.batch_loss.forward`, the one fedtff's
  TFF model runs: the padding rows are dropped before the model runs, so the
  loss, the metrics and layers that see the whole batch (BatchNormalization)
  get the values they have on the unpadded batch.

  Args:
    keras_model: The model; its variables are the client's working weights.
    loss: The Keras loss of `fedtff.build_learning_process`.
    metrics: Keras metric objects; they accumulate over a round's clients.
  """

  def __init__(self, keras_model: tf.keras.Model, loss: tf.keras.losses.Loss,
               metrics: Sequence[tf.keras.metrics.Metric]):
    batch_loss.check_loss(loss)
    self.keras_model = keras_model
    self.metrics = list(metrics)
    self._loss = loss
    self._counters = tff_model.training_counters()

  @property
  def trainable(self) -> List[tf.Variable]:
    return self.keras_model.trainable_variables

  @property
  def metric_variables(self) -> List[tf.Variable]:
    return [v for metric in self.metrics for v in metric.variables]

  def assign(self, weights: Weights) -> None:
    """Sets the model's variables to `weights` (trainable and non-trainable)."""
    for variable, value in zip(self.keras_model.trainable_variables, weights.trainable):
      variable.assign(value)
    for variable, value in zip(self.keras_model.non_trainable_variables, weights.non_trainable):
      variable.assign(value)

  def finalized(self, values: Sequence[tf.Tensor]) -> collections.OrderedDict:
    """The metrics finalized on `values` (one per `metric_variables` entry) by
    `fedtff.algorithms.tff_model.finalize_metrics`, the function the TFF engine uses."""
    return tff_model.finalize_metrics(self.metrics, self._by_metric(values))

  def train_metrics(self, stats: TrainStats) -> collections.OrderedDict:
    """TFF's `train` metrics: the Keras metrics, `loss`, `num_examples`, `num_batches`,
    finalized by `fedtff.algorithms.tff_model.finalize_metrics` from the round's sums."""
    unfinalized = self._by_metric([v.read_value() for v in self.metric_variables])
    unfinalized += [[stats.loss_sum, stats.loss_count], [stats.num_examples],
                    [stats.num_batches]]
    return tff_model.finalize_metrics(self.metrics + self._counters, unfinalized)

  def _by_metric(self, values: Sequence[tf.Tensor]) -> List[List[tf.Tensor]]:
    """`values` (flat, as `metric_variables`) split into one list per metric."""
    grouped, start = [], 0
    for metric in self.metrics:
      grouped.append(list(values[start:start + len(metric.variables)]))
      start += len(metric.variables)
    return grouped

  def forward(self, batch: Any, mask: tf.Tensor, *, training: bool = True,
              metrics: Optional[Sequence[tf.keras.metrics.Metric]] = None) -> BatchOutput:
    """The forward pass on the real rows; updates `metrics` (default: all the model's)."""
    output = batch_loss.forward(self.keras_model, self._loss,
                                self.metrics if metrics is None else metrics, batch, mask=mask,
                                training=training)
    return BatchOutput(loss=output.loss, data_loss=output.data_loss,
                       num_examples=output.num_examples)


def _loop_over_batches(first: tf.Tensor, count: tf.Tensor, body: Callable, loop_vars: Any) -> Any:
  """Runs `loop_vars = body(batch_index, loop_vars)` for the client's batches."""
  _, result = tf.while_loop(
      lambda k, _: k < count, lambda k, v: (k + 1, body(first + k, v)),
      (tf.constant(0, tf.int32), loop_vars))
  return result


def _as_tensors(structure: Any) -> Any:
  return tf.nest.map_structure(tf.convert_to_tensor, structure)


def fresh_optimizer_state(model: PaddedModel, optimizer: tff.learning.optimizers.Optimizer,
                          hparams: Any = None) -> Any:
  """A client's initial optimizer state, as `model_delta_client_work` makes it.

  Args:
    model: The model whose trainable variables the optimizer updates.
    optimizer: The client's TFF optimizer.
    hparams: The optimizer hyperparameters held in the server state (FedAvg's
      client work), or None to keep the optimizer's own (FedProx, and FedAvg
      with a client learning-rate schedule, whose optimizer is built per round).
  """
  specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in model.trainable)
  state = optimizer.initialize(specs)
  if hparams is not None:
    state = optimizer.set_hparams(state, hparams)
  return state


def train_delta(model: PaddedModel, optimizer: tff.learning.optimizers.Optimizer,
                initial_state: Any, weights: Weights, batches: batches_lib.ClientBatches,
                first: tf.Tensor, count: tf.Tensor, *,
                proximal_strength: Optional[float] = None,
                frozen_state: bool = False,
                control: Optional[Tuple[Sequence[tf.Tensor], Sequence[tf.Tensor]]] = None
               ) -> Tuple[List[tf.Tensor], TrainStats]:
  """One client's FedAvg, FedProx or Mime Lite training; returns `(initial - trained, stats)`.

  Args:
    model: The model; its variables are overwritten.
    optimizer: The client's TFF optimizer (Mime Lite: the base optimizer).
    initial_state: The optimizer state of the first step (`fresh_optimizer_state`,
      or Mime Lite's server optimizer state).
    weights: The server model weights the client starts from.
    batches: The round's batches; the client's are `first .. first + count - 1`.
    first: The client's first batch.
    count: The client's number of batches.
    proximal_strength: FedProx's mu (a float, or a float32 scalar tensor: the state's
      adaptive mu), or None for FedAvg.
    frozen_state: Mime Lite: every step uses `initial_state`, and the state
      each step returns is discarded.
    control: SCAFFOLD: `(c_i, c)`, the client's and the server's control
      variates; each step's gradient is corrected to g − c_i + c.
  """
  model.assign(weights)

  def step(index, loop_vars):
    optimizer_state, stats = loop_vars
    batch, mask = batches_lib.batch_at(batches, index)
    with tf.GradientTape() as tape:
      output = model.forward(batch, mask)
    gradients = tape.gradient(output.loss, model.trainable)
    if tf.is_tensor(proximal_strength) or proximal_strength:  # FedProx: mu·(w − w0).
      gradients = local_steps.proximal_gradients(gradients, model.trainable, weights.trainable,
                                                 proximal_strength)
    if control is not None:  # SCAFFOLD (Karimireddy et al. 2020): g − c_i + c.
      gradients = local_steps.scaffold_gradients(gradients, *control)
    # TFF's structures: model_delta_client_work flattens to tuples, Mime Lite keeps lists.
    next_state = local_steps.local_step(optimizer, optimizer_state, model.trainable, gradients,
                                        as_structure=list if frozen_state else tuple)
    return (optimizer_state if frozen_state else next_state), stats.add_batch(output)

  _, stats = _loop_over_batches(first, count, step,
                                (_as_tensors(initial_state), TrainStats.zeros()))
  return list(local_steps.model_delta(list(weights.trainable), model.trainable)), stats


def loss_sums(model: PaddedModel, weights: Weights, batches: batches_lib.ClientBatches,
              first: tf.Tensor, count: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """q-FedAvg's `(Σ loss·n, Σ n)` over the client's batches at `weights`
  (`local_steps.add_loss`), in inference mode and without metric updates."""
  model.assign(weights)

  def step(index, sums):
    batch, mask = batches_lib.batch_at(batches, index)
    output = model.forward(batch, mask, training=False, metrics=[])
    return local_steps.add_loss(sums, output.loss, output.num_examples)

  return _loop_over_batches(first, count, step, (tf.constant(0.0), tf.constant(0.0)))


def sum_gradients(model: PaddedModel, weights: Weights, batches: batches_lib.ClientBatches,
                  first: tf.Tensor, count: tf.Tensor, *, no_nan_division: bool = False,
                  update_metrics: bool = True
                 ) -> Tuple[List[tf.Tensor], tf.Tensor, TrainStats]:
  """One client's mean gradient at `weights`: `(mean gradient, num_examples as float32, stats)`.

  FedSGD's client work as it is; Mime Lite's full-batch gradient with
  `no_nan_division=True, update_metrics=False`.
  """
  model.assign(weights)

  def step(index, loop_vars):
    sums, examples, stats = loop_vars
    batch, mask = batches_lib.batch_at(batches, index)
    with tf.GradientTape() as tape:
      output = model.forward(batch, mask, metrics=None if update_metrics else [])
    gradients = tape.gradient(output.loss, model.trainable,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    num_examples = tf.cast(output.num_examples, tf.float32)
    sums = [s + num_examples * g for s, g in zip(sums, gradients)]
    return sums, examples + num_examples, stats.add_batch(output)

  initial = ([tf.zeros_like(w) for w in weights.trainable], tf.constant(0.0), TrainStats.zeros())
  sums, examples, stats = _loop_over_batches(first, count, step, initial)
  divide = tf.math.divide_no_nan if no_nan_division else tf.math.divide
  return [divide(s, examples) for s in sums], examples, stats
