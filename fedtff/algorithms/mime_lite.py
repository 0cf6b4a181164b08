"""Mime Lite: clients apply the server's optimizer state, frozen, to local steps.

Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich and Suresh, "Breaking the
centralized barrier for cross-device federated learning", NeurIPS 2021
(arXiv 2008.03606). The base optimizer's state (e.g. momentum) is updated at
the server from the clients' full-batch gradients and used unchanged on the
clients.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import tff_model


def build_mime_lite(model_fn: tff_model.KerasModelFn,
                    element_spec: tff_model.ElementSpecLike,
                    *,
                    base_optimizer: Optional[optimizers.TffOptimizer] = None,
                    server_optimizer: Optional[optimizers.TffOptimizer] = None,
                    loss: Optional[tf.keras.losses.Loss] = None,
                    metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                    weighted: bool = True,
                    model_aggregator: Optional[aggregators.AggregationFactory] = None,
                   ) -> tff.learning.templates.LearningProcess:
  """Builds `tff.learning.algorithms.build_{weighted,unweighted}_mime_lite`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    base_optimizer: The optimizer whose state is shared (the "client
      optimizer"); defaults to SGD with learning rate 0.1 and momentum 0.9
      (`registry.REGISTRY`).
    server_optimizer: Applied to the averaged model delta; defaults to SGD with
      learning rate 1.0.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    model_aggregator: A `tff.aggregators` factory matching `weighted`.
  """
  base_optimizer = optimizers.check(
      base_optimizer or registry.default_client_optimizer('mimelite'), 'client (base)')
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer('mimelite'), 'server')
  if model_aggregator is not None:
    aggregators.check_weighting(model_aggregator, weighted=weighted, algorithm='Mime Lite')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)
  if weighted:
    return tff.learning.algorithms.build_weighted_mime_lite(
        learning_model_fn, base_optimizer, server_optimizer, model_aggregator=model_aggregator)
  return tff.learning.algorithms.build_unweighted_mime_lite(
      learning_model_fn, base_optimizer, server_optimizer, model_aggregator=model_aggregator)
