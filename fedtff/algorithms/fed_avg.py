"""Federated Averaging.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017
(arXiv 1602.05629). With a server optimizer other than SGD with learning rate
1 this is FedOpt: Reddi et al., "Adaptive Federated Optimization", ICLR 2021
(arXiv 2003.00295).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from fedtff import optimizers
from fedtff.algorithms import tff_model


def build_fed_avg(model_fn: tff_model.KerasModelFn,
                  element_spec: tff_model.ElementSpecLike,
                  *,
                  client_optimizer: Optional[optimizers.TffOptimizer] = None,
                  server_optimizer: Optional[optimizers.TffOptimizer] = None,
                  loss: Optional[tf.keras.losses.Loss] = None,
                  metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                  weighted: bool = True,
                  model_aggregator: Optional[tff.aggregators.AggregationFactory] = None,
                 ) -> tff.learning.templates.LearningProcess:
  """Builds a FedAvg learning process from a Keras model factory.

  The result is the process `tff.learning.algorithms.build_weighted_fed_avg`
  (or `build_unweighted_fed_avg`) returns for the same model, optimizers and
  aggregator; fedtff only wraps the Keras model and checks the inputs.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    client_optimizer: A TFF optimizer; defaults to SGD with learning rate 0.1.
    server_optimizer: A TFF optimizer; defaults to SGD with learning rate 1.0,
      which is plain averaging of the client models.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    model_aggregator: A `tff.aggregators` factory for the model updates;
      TFF's default (mean) when `None`.

  Returns:
    A `tff.learning.templates.LearningProcess`.
  """
  client_optimizer = optimizers.check(
      client_optimizer or optimizers.build('sgd', 0.1), 'client')
  server_optimizer = optimizers.check(
      server_optimizer or optimizers.build('sgd', 1.0), 'server')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)
  if weighted:
    return tff.learning.algorithms.build_weighted_fed_avg(
        learning_model_fn, client_optimizer, server_optimizer,
        model_aggregator=model_aggregator)
  return tff.learning.algorithms.build_unweighted_fed_avg(
      learning_model_fn, client_optimizer, server_optimizer,
      model_aggregator=model_aggregator)
