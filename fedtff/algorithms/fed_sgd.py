"""FedSGD: each client sends the gradient of its whole dataset at the server model.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (arXiv 1602.05629), the E=1, B=∞ baseline;
Shokri and Shmatikov, "Privacy-Preserving Deep Learning", CCS 2015. The server
applies the example-weighted mean gradient with its optimizer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model


def build_fed_sgd(model_fn: tff_model.KerasModelFn,
                  element_spec: tff_model.ElementSpecLike,
                  *,
                  server_optimizer: Optional[optimizers.TffOptimizer] = None,
                  loss: Optional[tf.keras.losses.Loss] = None,
                  metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                  model_aggregator: Optional[aggregators.AggregationFactory] = None,
                 ) -> tff.learning.templates.LearningProcess:
  """Builds `tff.learning.algorithms.build_fed_sgd` for a Keras model factory.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    server_optimizer: A TFF optimizer; defaults to SGD with learning rate 0.1
      (`registry.REGISTRY`, as TFF's `build_fed_sgd`).
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    model_aggregator: A weighted `tff.aggregators` factory for the gradients.
  """
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('fedsgd'), 'server')
  if model_aggregator is not None:
    aggregators.check_weighting(model_aggregator, weighted=True, algorithm='FedSGD')
  return tff.learning.algorithms.build_fed_sgd(
      tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics),
      server_optimizer, model_aggregator=model_aggregator)
