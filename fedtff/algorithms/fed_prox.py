"""FedProx: FedAvg with a proximal term that keeps clients near the server model.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (arXiv 1812.06127). Each client minimises
its loss plus (μ/2)·‖w − w_server‖²; μ = 0 is FedAvg.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from fedtff import aggregators
from fedtff import optimizers
from fedtff.algorithms import fed_avg
from fedtff.algorithms import tff_model


def build_fed_prox(model_fn: tff_model.KerasModelFn,
                   element_spec: tff_model.ElementSpecLike,
                   *,
                   proximal_strength: float,
                   client_optimizer: Optional[optimizers.TffOptimizer] = None,
                   server_optimizer: Optional[optimizers.TffOptimizer] = None,
                   loss: Optional[tf.keras.losses.Loss] = None,
                   metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                   weighted: bool = True,
                   model_aggregator: Optional[aggregators.AggregationFactory] = None,
                  ) -> tff.learning.templates.LearningProcess:
  """Builds `tff.learning.algorithms.build_{weighted,unweighted}_fed_prox`.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    proximal_strength: μ ≥ 0, the weight of the proximal term.
    client_optimizer: A TFF optimizer; defaults to SGD with learning rate 0.1.
    server_optimizer: A TFF optimizer; defaults to SGD with learning rate 1.0.
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    model_aggregator: A `tff.aggregators` factory matching `weighted`.
  """
  if proximal_strength < 0:
    raise ValueError(f'proximal_strength (mu) must be non-negative, got {proximal_strength}.')
  client_optimizer = optimizers.check(
      client_optimizer or fed_avg.default_client_optimizer(), 'client')
  server_optimizer = optimizers.check(
      server_optimizer or fed_avg.default_server_optimizer(), 'server')
  if model_aggregator is not None:
    aggregators.check_weighting(model_aggregator, weighted=weighted, algorithm='FedProx')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)
  build = (tff.learning.algorithms.build_weighted_fed_prox if weighted
           else tff.learning.algorithms.build_unweighted_fed_prox)
  return build(learning_model_fn, proximal_strength, client_optimizer, server_optimizer,
               model_aggregator=model_aggregator)
