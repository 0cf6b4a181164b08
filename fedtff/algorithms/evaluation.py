"""Federated evaluation of a model on clients' data."""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.algorithms import fed_eval

from fedtff.algorithms import tff_model


def build_evaluation(model_fn: tff_model.KerasModelFn,
                     element_spec: tff_model.ElementSpecLike,
                     *,
                     loss: Optional[tf.keras.losses.Loss] = None,
                     metrics: Optional[Sequence[tff_model.MetricLike]] = None
                    ) -> tff.learning.templates.LearningProcess:
  """Builds `tff.learning.algorithms.build_fed_eval` for a Keras model factory.

  Set the weights to evaluate with `process.set_model_weights(state, weights)`,
  then call `process.next(state, client_datasets)`; the metrics are under
  `output.metrics['client_work']['eval']['current_round_metrics']`.
  """
  return tff.learning.algorithms.build_fed_eval(
      tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics))


def build_per_client_evaluation(model_fn: tff_model.KerasModelFn,
                                element_spec: tff_model.ElementSpecLike,
                                *,
                                loss: Optional[tf.keras.losses.Loss] = None,
                                metrics: Optional[Sequence[tff_model.MetricLike]] = None
                               ) -> tff.Computation:
  """A federated evaluation that returns every client's metrics instead of their sum.

  Each client runs TFF's own local evaluation (the client computation of
  `tff.learning.algorithms.build_fed_eval`: the model in inference mode over
  the client's dataset, its unfinalized Keras metrics) and finalizes them
  with the model's metric finalizers; the computation returns those
  `CLIENTS`-placed values unaggregated.

  Returns:
    `computation(weights, client_datasets)` (`weights` a
    `tff.learning.models.ModelWeights` at the server), which returns one
    `OrderedDict(metrics=..., num_examples=...)` per client, `metrics` named
    as in `build_evaluation`'s output.
  """
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)
  with tf.Graph().as_default():
    model = learning_model_fn()
    weights_type = tff.learning.models.weights_type_from_model(model)
    batch_type = tff.types.tensorflow_to_type(model.input_spec)
  local_eval = fed_eval._build_local_evaluation(  # pylint: disable=protected-access  # build_fed_eval's own.
      learning_model_fn, weights_type, batch_type,
      tff.learning.LoopImplementation.DATASET_REDUCE)

  @tff.tensorflow.computation(local_eval.type_signature.result)
  def finalize(outputs):
    finalizers = learning_model_fn().metric_finalizers()
    return collections.OrderedDict(
        metrics=collections.OrderedDict(
            (name, finalizer(outputs['local_outputs'][name]))
            for name, finalizer in finalizers.items()),
        num_examples=outputs['num_examples'])

  @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(tff.SequenceType(batch_type), tff.CLIENTS))
  def per_client(weights, datasets):
    outputs = tff.federated_map(local_eval, (tff.federated_broadcast(weights), datasets))
    return tff.federated_map(finalize, outputs)

  return per_client
