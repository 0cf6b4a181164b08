"""Federated evaluation of a model on clients' data."""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

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
