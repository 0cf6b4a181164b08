"""The loss over a batch and the treatment of padded rows, written once for both engines.

Both engines run a Keras model, loss and metrics on a client's batches and
must agree to float32 rounding. They share these functions instead of each
restating the arithmetic:

* `real_rows` is the treatment of padded rows. The compiled engine
  (`fedtff.compiled`) pads every batch to one size and marks the real rows with a
  mask; the padding rows are dropped *before* the model runs, so the model,
  the loss and the metrics see exactly the batch TFF iterates. Any Keras loss
  (a mean over examples, a sum, a mean over non-pad tokens such as
  `fedtff.tasks.MaskedSparseCrossEntropy`) and any layer whose output depends
  on the whole batch (BatchNormalization's batch statistics) then get the
  value they have on the unpadded batch.
* `batch_loss` is the loss over a batch, as `tff.learning.models.from_keras_model`
  defines it: the Keras loss of the batch's labels and predictions plus the
  model's regularization losses (`model.losses`); the loss alone is what TFF's
  `loss` metric averages, weighted by the batch's rows.
* `forward` is one forward pass: the real rows, the model, `batch_loss` and
  the metric updates. fedtff's TFF model (`fedtff.algorithms.tff_model`) and
  the compiled engine's client work (`fedtff/compiled/client_work.py`) both call it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf


class BatchLoss(NamedTuple):
  """The loss over one batch."""
  loss: tf.Tensor       # The training loss: `data_loss` plus the model's regularization losses.
  data_loss: tf.Tensor  # The Keras loss alone, which TFF's `loss` metric records.


class Forward(NamedTuple):
  """One batch's forward pass, on its real rows."""
  loss: tf.Tensor          # The training loss (`BatchLoss.loss`).
  data_loss: tf.Tensor     # The Keras loss alone (`BatchLoss.data_loss`).
  predictions: Any         # The model's outputs on the real rows.
  num_examples: tf.Tensor  # int32: the number of real rows.


def inputs_and_labels(batch: Any) -> Tuple[Any, Any]:
  """`(x, y)` of a batch that is `(x, y)` or `{'x': x, 'y': y}` (labels may be None)."""
  if isinstance(batch, dict) or hasattr(batch, 'keys'):
    return batch['x'], batch.get('y')
  return batch[0], batch[1]


def check_loss(loss: tf.keras.losses.Loss) -> None:
  """Refuses a loss without a reduction: it gives no scalar batch loss.

  Raises:
    ValueError: If `loss.reduction` is `'none'`.
  """
  if getattr(loss, 'reduction', None) == tf.keras.losses.Reduction.NONE:
    raise ValueError("A loss with reduction='none' gives no scalar batch loss; pass a loss that "
                     "averages or sums, or use engine='tff'.")


def real_rows(batch: Any, mask: Optional[tf.Tensor]) -> Any:
  """The batch without its padding rows.

  Args:
    batch: A structure of tensors whose leaves share the leading (row) axis.
    mask: bool `[rows]`, whether each row is a real example; None for a batch
      without padding, returned as it is.

  Returns:
    `batch` with the rows where `mask` is False removed from every leaf, in
    order: the batch TFF would have iterated.
  """
  if mask is None:
    return batch
  return tf.nest.map_structure(lambda leaf: tf.boolean_mask(leaf, mask), batch)


def batch_loss(keras_model: tf.keras.Model, loss: tf.keras.losses.Loss, labels: Any,
               predictions: Any) -> BatchLoss:
  """The loss over a batch, as `tff.learning.models.from_keras_model` computes it.

  Args:
    keras_model: The model; its `losses` (regularization) join the training loss.
    loss: The Keras loss, called with its own reduction on the batch.
    labels: The batch's labels (real rows only).
    predictions: The model's outputs on the same rows.
  """
  data_loss = loss(labels, predictions)
  return BatchLoss(loss=tf.add_n([data_loss] + list(keras_model.losses)), data_loss=data_loss)


def num_rows(inputs: Any) -> tf.Tensor:
  """The number of rows (examples) of a batch's inputs, int32."""
  first = tf.nest.flatten(inputs)[0]
  if isinstance(first, tf.RaggedTensor):
    return tf.cast(first.nrows(), tf.int32)
  return tf.shape(first)[0]


def predict(keras_model: tf.keras.Model, inputs: Any, *, training: bool) -> Any:
  """The model's outputs as TFF's Keras model returns them: without Keras's mask.

  TFF's `predict_on_batch` is a `tf.function`, whose outputs lose the
  `_keras_mask` that layers such as `Embedding(mask_zero=True)` attach; a Keras
  loss or metric would otherwise apply that mask on top of its own (and
  `MaskedSparseCrossEntropy` would divide by the wrong count).
  """
  return tf.nest.map_structure(tf.identity, keras_model(inputs, training=training))


def forward(keras_model: tf.keras.Model, loss: tf.keras.losses.Loss,
            metrics: Sequence[tf.keras.metrics.Metric], batch: Any, *,
            mask: Optional[tf.Tensor] = None, training: bool = True) -> Forward:
  """Runs the model on a batch's real rows, computes its loss and updates the metrics.

  Args:
    keras_model: The Keras model.
    loss: The Keras loss.
    metrics: Keras metrics, updated with the real rows' labels and predictions
      (without `sample_weight`, as TFF's Keras model updates them).
    batch: `(x, y)` or `{'x': x, 'y': y}`.
    mask: bool `[rows]`: which rows are real (`real_rows`); None if all are.
    training: Whether the model runs in training mode.
  """
  inputs, labels = inputs_and_labels(real_rows(batch, mask))
  predictions = predict(keras_model, inputs, training=training)
  losses = batch_loss(keras_model, loss, labels, predictions)
  for metric in metrics:
    metric.update_state(labels, predictions)
  return Forward(loss=losses.loss, data_loss=losses.data_loss, predictions=predictions,
                 num_examples=num_rows(inputs))
