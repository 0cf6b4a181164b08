"""Federated Averaging, with server momentum or an adaptive server optimizer.

FedAvg: McMahan, Moore, Ramage, Hampson and Agüera y Arcas,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv 1602.05629).

FedAvgM (server momentum): Hsu, Qi and Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019
(arXiv 1909.06335).

FedAdagrad, FedAdam, FedYogi and client learning-rate schedules: Reddi,
Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan, "Adaptive
Federated Optimization", ICLR 2021 (arXiv 2003.00295). All are FedAvg with a
different server optimizer applied to the averaged model delta.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model

ClientOptimizer = Union[optimizers.TffOptimizer, Callable[[float], optimizers.TffOptimizer]]


def default_client_optimizer() -> optimizers.TffOptimizer:
  """FedAvg's client optimizer, SGD with learning rate 0.1 (`registry.REGISTRY`)."""
  return registry.default_client_optimizer('fedavg')


def default_server_optimizer() -> optimizers.TffOptimizer:
  """FedAvg's server optimizer, SGD with learning rate 1.0: the server takes the
  averaged client model (`registry.REGISTRY`)."""
  return registry.default_server_optimizer('fedavg')


def check_scheduled_weighting(weighted: bool) -> None:
  """Refuses a client learning-rate schedule with `weighted=False` (one-line ValueError):
  TFF builds scheduled FedAvg only with example weighting."""
  if not weighted:
    raise ValueError('Client learning-rate schedules need weighted=True (TFF builds '
                     'scheduled FedAvg only with example weighting).')


def scheduled_optimizer_fn(client_optimizer: Optional[ClientOptimizer], *, weighted: bool
                          ) -> Callable[[float], optimizers.TffOptimizer]:
  """The client optimizer of a scheduled FedAvg as a function of the learning rate.

  Both engines call it (`build_fed_avg` and `fedtff.compiled.build_compiled_process`).

  Args:
    client_optimizer: A function from learning rate to TFF optimizer
      (`fedtff.build_optimizer_fn`), or None for SGD.
    weighted: Must be True: TFF builds scheduled FedAvg only with example weighting.

  Raises:
    ValueError: If `weighted` is False.
    TypeError: If `client_optimizer` is an optimizer, not a function.
  """
  check_scheduled_weighting(weighted)
  if client_optimizer is None:
    return optimizers.build_fn('sgd')
  if isinstance(client_optimizer, optimizers.TffOptimizer):
    raise TypeError(
        'With a client learning-rate schedule, pass the client optimizer as a function of '
        "the learning rate, e.g. fedtff.build_optimizer_fn('sgd', momentum=0.9), not an optimizer.")
  return client_optimizer


def build_fed_avg(model_fn: tff_model.KerasModelFn,
                  element_spec: tff_model.ElementSpecLike,
                  *,
                  client_optimizer: Optional[ClientOptimizer] = None,
                  server_optimizer: Optional[optimizers.TffOptimizer] = None,
                  client_learning_rate_schedule: Optional[schedules.Schedule] = None,
                  loss: Optional[tf.keras.losses.Loss] = None,
                  metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                  weighted: bool = True,
                  model_aggregator: Optional[aggregators.AggregationFactory] = None,
                 ) -> tff.learning.templates.LearningProcess:
  """Builds a FedAvg learning process from a Keras model factory.

  The result is the process `tff.learning.algorithms.build_weighted_fed_avg`
  (or `build_unweighted_fed_avg`, or `build_weighted_fed_avg_with_optimizer_schedule`
  when a schedule is given) returns for the same model, optimizers and
  aggregator; fedtff only wraps the Keras model and checks the inputs.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
    element_spec: The batched client datasets' element spec, or one such dataset.
    client_optimizer: A TFF optimizer; defaults to SGD with learning rate 0.1.
      With a schedule, a function from learning rate to optimizer instead
      (`fedtff.build_optimizer_fn`).
    server_optimizer: A TFF optimizer; defaults to SGD with learning rate 1.0,
      which is plain averaging. SGD with momentum gives FedAvgM; Adagrad, Adam
      and Yogi give FedAdagrad, FedAdam and FedYogi.
    client_learning_rate_schedule: A `fedtff.Schedule` of the client learning
      rate over rounds (weighted FedAvg only, as in TFF).
    loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy, reported as `accuracy`.
    weighted: Whether client updates are weighted by their number of examples.
    model_aggregator: A `tff.aggregators` factory for the model updates whose
      weighting matches `weighted`; TFF's mean when `None`.

  Returns:
    A `tff.learning.templates.LearningProcess`.

  Raises:
    TypeError, ValueError: On a bad model factory, optimizer, aggregator or
      option combination, before TFF starts tracing.
  """
  server_optimizer = optimizers.check(server_optimizer or default_server_optimizer(), 'server')
  if model_aggregator is not None:
    aggregators.check_weighting(model_aggregator, weighted=weighted, algorithm='FedAvg')
  learning_model_fn = tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)
  if client_learning_rate_schedule is not None:
    optimizer_fn = scheduled_optimizer_fn(client_optimizer, weighted=weighted)
    return tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
        learning_model_fn, client_learning_rate_schedule, optimizer_fn, server_optimizer,
        model_aggregator=model_aggregator)
  client_optimizer = optimizers.check(client_optimizer or default_client_optimizer(), 'client')
  build = (tff.learning.algorithms.build_weighted_fed_avg if weighted
           else tff.learning.algorithms.build_unweighted_fed_avg)
  return build(learning_model_fn, client_optimizer, server_optimizer,
               model_aggregator=model_aggregator)
