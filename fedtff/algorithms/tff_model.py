"""Turns a Keras model factory into the `tff.learning` model function.

This is where fedtff checks what it is handed before TFF starts tracing: a
factory rather than a model, an uncompiled model, inputs and labels that fit
the client data's element spec.

The model is TFF's Keras model (`tff.learning.models.from_keras_model`: its
variables, metrics and metric finalizers) with one change: its forward pass
is `fedtff.algorithms.batch_loss.forward`, the function the compiled engine's
client work (`fedtff/compiled/client_work.py`) runs too, so that the loss over a
batch is written once for both engines; and its metric finalizers are
`finalize_metrics`, which the compiled engine's round and evaluation use too.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, Optional, Sequence, Union

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.metrics import keras_finalizer

from fedtff.algorithms import batch_loss

KerasModelFn = Callable[[], tf.keras.Model]
ElementSpecLike = Union[tf.data.Dataset, Any]
MetricLike = Union[tf.keras.metrics.Metric, Callable[[], tf.keras.metrics.Metric]]


def element_spec_of(data: ElementSpecLike):
  """Returns the element spec of a dataset, or `data` if it already is one."""
  spec = data.element_spec if isinstance(data, tf.data.Dataset) else data
  if isinstance(spec, collections.abc.Mapping) and set(spec) == {'x', 'y'}:
    return collections.OrderedDict(x=spec['x'], y=spec['y'])
  if isinstance(spec, (tuple, list)) and len(spec) == 2:
    return tuple(spec)
  raise TypeError(
      'Expected a batched tf.data.Dataset or an element spec whose elements are '
      f'(x, y) pairs or dicts with keys "x" and "y", got {spec!r}.')


def _input_and_label_specs(element_spec):
  if isinstance(element_spec, collections.abc.Mapping):
    return element_spec['x'], element_spec['y']
  return element_spec[0], element_spec[1]


def default_loss() -> tf.keras.losses.Loss:
  """Sparse categorical cross-entropy on logits, fedtff's default loss."""
  return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def default_metrics() -> list:
  """Classification accuracy, reported as `accuracy`."""
  return [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')]


def _metric_constructor(metric: MetricLike) -> Callable[[], tf.keras.metrics.Metric]:
  """Makes every `model_fn` call get fresh metric objects."""
  if isinstance(metric, tf.keras.metrics.Metric):
    config, cls = metric.get_config(), type(metric)
    return lambda: cls.from_config(config)
  if callable(metric):
    return metric
  raise TypeError(f'Expected a Keras metric or a no-argument metric constructor, got {metric!r}.')


def check_model_factory(model_fn: Any) -> tf.keras.Model:
  """Calls `model_fn` once and returns the model, or raises a clear error."""
  if isinstance(model_fn, tf.keras.Model):
    raise TypeError(
        'Expected a no-argument function that builds a new Keras model (a model '
        'factory), got a Keras model object; pass `lambda: build_model()` instead.')
  if not callable(model_fn):
    raise TypeError(f'Expected a no-argument Keras model factory, got {model_fn!r}.')
  model = model_fn()
  if not isinstance(model, tf.keras.Model):
    raise TypeError(f'The model factory must return a tf.keras.Model, got {type(model).__name__}.')
  if model.optimizer is not None or getattr(model, 'compiled_loss', None) is not None:
    raise ValueError(
        'The model factory returned a compiled Keras model; return an uncompiled '
        'model and pass the loss and metrics to the fedtff builder instead.')
  return model


def _check_model_fits(model: tf.keras.Model, element_spec, loss) -> None:
  """Runs the model and loss on zeros shaped like one batch of the data."""
  input_spec, label_spec = _input_and_label_specs(element_spec)
  zeros_like = lambda s: tf.zeros([2 if d is None else d for d in s.shape], s.dtype)
  try:
    outputs = model(tf.nest.map_structure(zeros_like, input_spec))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'The Keras model does not accept the dataset inputs {input_spec}: '
        f'{str(e).splitlines()[0]}') from None
  try:
    loss(tf.nest.map_structure(zeros_like, label_spec), outputs)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'The loss {type(loss).__name__} does not fit labels {label_spec} and '
        f'model outputs of shape {outputs.shape}: {str(e).splitlines()[0]}') from None


def tff_model_fn(keras_model_fn: KerasModelFn,
                 element_spec: ElementSpecLike,
                 *,
                 loss: Optional[tf.keras.losses.Loss] = None,
                 metrics: Optional[Sequence[MetricLike]] = None
                ) -> Callable[[], tff.learning.models.VariableModel]:
  """Returns the `model_fn` that `tff.learning.algorithms` builders take.

  Args:
    keras_model_fn: A no-argument function returning a new, uncompiled Keras
      model.
    element_spec: The client datasets' (batched) element spec, or an example
      dataset. Elements are `(x, y)` or `{'x': ..., 'y': ...}`.
    loss: A Keras loss; defaults to `default_loss()`.
    metrics: Keras metrics or constructors; defaults to `default_metrics()`.

  Raises:
    TypeError, ValueError: If the factory, model, loss or spec do not fit.
  """
  element_spec = element_spec_of(element_spec)
  loss = default_loss() if loss is None else loss
  metric_fns = [_metric_constructor(m) for m in
                (default_metrics() if metrics is None else metrics)]
  with tf.Graph().as_default():
    _check_model_fits(check_model_factory(keras_model_fn), element_spec, loss)

  def model_fn() -> tff.learning.models.VariableModel:
    return KerasModel(keras_model_fn(), loss=loss, input_spec=element_spec,
                      metrics=[fn() for fn in metric_fns])

  return model_fn


class KerasModel(tff.learning.models.VariableModel):
  """TFF's Keras model whose forward pass is `fedtff.algorithms.batch_loss.forward`.

  Variables, metrics (with TFF's `loss`, `num_examples` and `num_batches`),
  their finalizers and `predict_on_batch` are those of
  `tff.learning.models.from_keras_model(keras_model, ...)`; the forward pass
  computes the same values with the function both engines share.

  Args:
    keras_model: An uncompiled Keras model.
    loss: The Keras loss.
    input_spec: The batched element spec, `(x, y)` or `{'x': ..., 'y': ...}`.
    metrics: Keras metric objects.
  """

  def __init__(self, keras_model: tf.keras.Model, *, loss: tf.keras.losses.Loss,
               input_spec: Any, metrics: Sequence[tf.keras.metrics.Metric]):
    self._keras_model = keras_model
    self._loss = loss
    self._tff_model = tff.learning.models.from_keras_model(
        keras_model, loss=loss, input_spec=input_spec, metrics=list(metrics))

  @property
  def trainable_variables(self):
    return self._tff_model.trainable_variables

  @property
  def non_trainable_variables(self):
    return self._tff_model.non_trainable_variables

  @property
  def local_variables(self):
    return self._tff_model.local_variables

  @property
  def input_spec(self):
    return self._tff_model.input_spec

  @tf.function
  def forward_pass(self, batch_input, training=True):
    inputs, labels = batch_loss.inputs_and_labels(batch_input)
    if labels is None:  # Predictions only, as TFF's Keras model gives them.
      predictions = batch_loss.predict(self._keras_model, inputs, training=training)
      return tff.learning.models.BatchOutput(loss=None, predictions=predictions,
                                             num_examples=batch_loss.num_rows(predictions))
    output = batch_loss.forward(self._keras_model, self._loss, self._tff_model.get_metrics(),
                                batch_input, training=training)
    return tff.learning.models.BatchOutput(loss=output.loss, predictions=output.predictions,
                                           num_examples=output.num_examples)

  def predict_on_batch(self, batch_input, training=True):
    return self._tff_model.predict_on_batch(batch_input, training=training)

  def report_local_unfinalized_metrics(self):
    return self._tff_model.report_local_unfinalized_metrics()

  def metric_finalizers(self):
    """TFF's finalizers (`learning/metrics/keras_finalizer.py`), each `finalize_metrics`."""
    return collections.OrderedDict(
        (metric.name, _metric_finalizer(metric)) for metric in self._tff_model.get_metrics())

  def reset_metrics(self):
    return self._tff_model.reset_metrics()


def training_counters() -> List[tf.keras.metrics.Metric]:
  """The metrics `from_keras_model` adds after the Keras ones: `loss` (a mean of
  the batch losses weighted by rows, float32 as TFF's whatever the model's dtype),
  `num_examples` and `num_batches`."""
  return [tf.keras.metrics.Mean(name='loss', dtype=tf.float32),
          tff.learning.metrics.NumExamplesCounter(), tff.learning.metrics.NumBatchesCounter()]


def finalize_metrics(metrics: Sequence[tf.keras.metrics.Metric],
                     unfinalized: Sequence[Sequence[tf.Tensor]]) -> collections.OrderedDict:
  """Finalizes metrics: both engines' training and evaluation metrics go through here.

  TFF's Keras metric finalizer (`learning/metrics/keras_finalizer.py`): each
  metric's variables are set to its unfinalized values (on the TFF engine, the
  sums over clients of `report_local_unfinalized_metrics`; on the compiled
  engine, the round's sums), then its `result()` is the metric's value.

  Args:
    metrics: Keras metric objects whose variables may be overwritten.
    unfinalized: For each metric, the values of its variables, in order.

  Returns:
    `{metric.name: result}` in the order of `metrics`.
  """
  for metric, values in zip(metrics, unfinalized):
    for variable, value in zip(metric.variables, values):
      variable.assign(value)
  return collections.OrderedDict((metric.name, metric.result()) for metric in metrics)


def _metric_finalizer(metric: tf.keras.metrics.Metric) -> Callable[[List[tf.Tensor]], Any]:
  """A TFF metric finalizer of `metric` (a fresh copy, made where TFF calls it)."""

  @tf.function
  def finalizer(unfinalized_values):
    with tf.init_scope():  # TFF's own finalizer creates the metric's variables here too.
      fresh = keras_finalizer.create_keras_metric(metric)
    return finalize_metrics([fresh], [list(unfinalized_values)])[fresh.name]

  return finalizer


def initial_weights(keras_model_fn: KerasModelFn, seed: int) -> tff.learning.models.ModelWeights:
  """Seeded initial weights for `process.set_model_weights`.

  TFF's `initialize()` draws Keras initializers without a seed, so two runs
  start from different weights; a run that sets these starts the same way
  every time.
  """
  tf.keras.utils.set_random_seed(seed)
  model = keras_model_fn()
  return tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_weights],
      non_trainable=[v.numpy() for v in model.non_trainable_weights])
