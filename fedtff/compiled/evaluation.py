"""Evaluation of held-out clients as one compiled TensorFlow graph.

TFF's federated evaluation (`tff.learning.algorithms.build_fed_eval`, which the
TFF engine runs through `fedtff.algorithms.build_evaluation`) has every client
run the model in inference mode (`training=False`) over its batches, report
its unfinalized Keras metrics (the metric variables; the loss as a mean of
batch losses weighted by batch size, without regularization losses; example
and batch counters), sums them over clients and finalizes the sums (TFF's
`SumThenFinalizeFactory`). So the pooled metrics are example-weighted over
clients: the accuracy is correct predictions over all clients' examples.

`CompiledEvaluation` computes the same in one `tf.function` over the held-out
clients' padded batches (`fedtff.compiled.PaddedClientData`, read once): the
masked batch loss and the padding treatment are `fedtff.compiled.client_work`'s,
and the metrics receive the mask as `sample_weight`. Per client it also
finalizes the client's own metrics, the input of the per-client distribution
(`fedtff.runner.client_metrics`).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import tff_model
from fedtff.compiled import batches as batches_lib
from fedtff.compiled import client_work

# TFF's counters, after the Keras metrics and `loss` (`from_keras_model`).
NUM_EXAMPLES, NUM_BATCHES = 'num_examples', 'num_batches'


class EvalResult(NamedTuple):
  """One evaluation: the pooled metrics and each client's own.

  Attributes:
    pooled: `{name: float}` in TFF's order (Keras metrics, `loss`,
      `num_examples`, `num_batches`), equal to TFF's federated evaluation.
    per_client: `{name: np.ndarray [num_clients]}`: each client's metrics
      finalized on its own examples, in the order of the client ids.
  """
  pooled: Dict[str, float]
  per_client: Dict[str, np.ndarray]


class CompiledEvaluation:
  """Evaluates model weights on a `ClientData`'s clients in one compiled graph.

  Args:
    model_fn: The Keras model factory of the learning process.
    client_data: The held-out clients, preprocessed and batched (their
      datasets must be the same at every read, as evaluation data is).
    loss: The Keras loss; defaults to `fedtff.algorithms.tff_model.default_loss()`.
    metrics: Keras metrics or constructors; defaults to accuracy.
    client_ids: The clients to evaluate; defaults to all of `client_data`'s.

  Raises:
    ValueError: As `fedtff.compiled.build_compiled_process` for models or data the
      padded batches cannot hold.
  """

  def __init__(self, model_fn: tff_model.KerasModelFn, client_data, *,
               loss: Optional[tf.keras.losses.Loss] = None,
               metrics: Optional[Sequence[tff_model.MetricLike]] = None,
               client_ids: Optional[Sequence[str]] = None):
    self._data = batches_lib.PaddedClientData(client_data)
    self._client_ids = list(client_data.client_ids if client_ids is None else client_ids)
    self._batches = self._data.batches(self._client_ids)
    metric_fns = [tff_model._metric_constructor(m)  # pylint: disable=protected-access
                  for m in (tff_model.default_metrics() if metrics is None else metrics)]
    self._model = client_work.PaddedModel(
        model_fn(), tff_model.default_loss() if loss is None else loss,
        [fn() for fn in metric_fns] + [tf.keras.metrics.Mean(name='loss')])
    self._names = [m.name for m in self._model.metrics] + [NUM_EXAMPLES, NUM_BATCHES]
    if len(set(self._names)) != len(self._names):
      raise ValueError(f'Metric names must differ from each other and from loss, '
                       f'{NUM_EXAMPLES} and {NUM_BATCHES}; got {self._names}.')
    weight_specs = tff.learning.models.ModelWeights(
        trainable=[tf.TensorSpec(v.shape, v.dtype) for v in self._model.trainable],
        non_trainable=[tf.TensorSpec(v.shape, v.dtype)
                       for v in self._model.keras_model.non_trainable_variables])
    self._evaluate = tf.function(
        self._graph, autograph=False,
        input_signature=[weight_specs, batches_lib.signature(self._data.element_spec)])
    # Traced now, with Keras in its eager form (see fedtff.compiled.process).
    self._evaluate.get_concrete_function()

  @property
  def client_ids(self):
    return list(self._client_ids)

  @property
  def metric_names(self):
    """The metric names, in TFF's order."""
    return list(self._names)

  def __call__(self, weights: tff.learning.models.ModelWeights) -> EvalResult:
    """Evaluates `weights` (a `ModelWeights` of numpy arrays or tensors)."""
    weights = tff.learning.models.ModelWeights(
        trainable=[tf.convert_to_tensor(w) for w in weights.trainable],
        non_trainable=[tf.convert_to_tensor(w) for w in weights.non_trainable])
    pooled, per_client = self._evaluate(weights, self._batches)
    return EvalResult(
        collections.OrderedDict((n, float(pooled[n])) for n in self._names),
        collections.OrderedDict((n, per_client[n].numpy()) for n in self._names))

  # The graph.

  def _client(self, batches: batches_lib.ClientBatches, index: tf.Tensor):
    """Runs client `index`'s batches; returns its metric variables' values and counters."""
    model = self._model
    for variable in model.metric_variables:
      variable.assign(tf.zeros_like(variable))
    first, count = batches.first_batch[index], batches.num_batches[index]

    def body(k, examples):
      batch, mask = batches_lib.batch_at(batches, first + k)
      # The shared forward pass (the real rows only), in inference mode; the loss
      # metric records the batch loss without regularization, as TFF's does.
      output = model.forward(batch, mask, training=False, metrics=model.metrics[:-1])
      num_examples = tf.cast(output.num_examples, tf.float32)
      model.metrics[-1].update_state(output.data_loss, sample_weight=num_examples)
      return k + 1, examples + tf.cast(output.num_examples, tf.int64)

    _, examples = tf.while_loop(lambda k, _: k < count, body,
                                (tf.constant(0, tf.int32), tf.constant(0, tf.int64)))
    values = [v.read_value() for v in model.metric_variables]
    results = list(model.finalized(values).values())
    return values, results, examples, tf.cast(count, tf.int64)

  def _graph(self, weights, batches: batches_lib.ClientBatches):
    self._model.assign(weights)
    return self._evaluate_clients(batches)

  def _evaluate_clients(self, batches: batches_lib.ClientBatches,
                        set_client: Callable[[tf.Tensor], None] = lambda c: None):
    """`(pooled, per_client)` metrics of every client of `batches`; `set_client(c)`
    runs before client c (the personalized evaluation assigns client c's model)."""
    model = self._model
    num_clients = tf.shape(batches.num_batches)[0]
    sums = [tf.zeros_like(v) for v in model.metric_variables]
    arrays = [tf.TensorArray(tf.float32, size=num_clients) for _ in model.metrics]
    arrays += [tf.TensorArray(tf.int64, size=num_clients) for _ in range(2)]

    def body(c, sums, arrays):
      set_client(c)
      values, results, examples, count = self._client(batches, c)
      sums = [s + v for s, v in zip(sums, values)]
      outputs = [tf.cast(r, tf.float32) for r in results] + [examples, count]
      return c + 1, sums, [a.write(c, o) for a, o in zip(arrays, outputs)]

    _, sums, arrays = tf.while_loop(lambda c, *_: c < num_clients, body,
                                    (tf.constant(0, tf.int32), sums, arrays))
    # TFF's sum-then-finalize: the metrics finalized on the summed variables.
    per_client = [a.stack() for a in arrays]
    pooled = [tf.cast(r, tf.float32) for r in model.finalized(sums).values()]
    pooled += [tf.reduce_sum(per_client[-2]), tf.reduce_sum(per_client[-1])]
    return (collections.OrderedDict(zip(self._names, pooled)),
            collections.OrderedDict(zip(self._names, per_client)))
