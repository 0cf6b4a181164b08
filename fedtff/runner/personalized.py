"""The runner's personalized evaluation: `eval/personalized/<metric>` for Ditto.

Ditto (Li, Hu, Beirami and Smith, ICML 2021, arXiv 2012.04221) is evaluated
on each client's personal model v_k. With `data.test_fraction` > 0 every
training client keeps held-out examples; each evaluation then also reports
`eval/personalized/<metric>`: the metrics of every training client's v_k
(read from the run's `fedtff.runner.client_states.ClientStateStore`, pending
rows included) on that client's held-out examples, pooled over the clients
(TFF's sum-then-finalize), and with `per_client_eval` their distribution,
`eval/personalized/<metric>/<statistic>` (`fedtff.runner.client_metrics`).
A client never selected has no v_k yet and is evaluated with the global
model (the model it would start from). With held-out clients instead
(`data.num_test_clients` > 0, `test_fraction` 0) no training client has
held-out examples and nothing personalized is reported. Both engines run
the compiled evaluation graph (`fedtff.compiled.personalized`), whose
metrics are TFF's evaluation's to float32 rounding.
"""

from __future__ import annotations

from typing import Any, Callable

from fedtff import tasks
from fedtff.algorithms import ditto
from fedtff.compiled import evaluation as evaluation_lib
from fedtff.compiled import personalized
from fedtff.runner import client_metrics

PREFIX = 'eval/personalized'


def available(config) -> bool:
  """Whether a run reports personalized metrics: Ditto with per-client held-out examples."""
  return config.algorithm.name == 'ditto' and config.data.test_fraction > 0


def wrap(evaluate: Callable, config, task: tasks.Task, rounds: Any) -> Callable:
  """`evaluate` (`fedtff.runner.experiment.evaluation_fn`'s) plus the personalized metrics.

  Args:
    evaluate: `(state, round_num) -> metrics`, with `metric_names`.
    config: The run's config.
    task: The task; its `test_data` hold the training clients' held-out examples.
    rounds: The engine's rounds: `get_model_weights`, and `store` (the
      client-state store, set before the first evaluation).
  """
  if not available(config):
    return evaluate
  train_ids = set(task.train_data.client_ids)
  ids = [i for i in task.test_data.client_ids if i in train_ids]
  evaluation = personalized.PersonalizedEvaluation(task.model_fn, task.test_data,
                                                   client_ids=ids, **task.learning_kwargs())
  per_client = config.per_client_eval

  def with_personalized(state, round_num: int):
    metrics = evaluate(state, round_num)
    weights = rounds.get_model_weights(state)
    models = ditto.personal_models(rounds.store.get(ids), weights.trainable)
    result = evaluation(models, weights.non_trainable)
    metrics.update({f'{PREFIX}/{name}': value for name, value in result.pooled.items()})
    if per_client:
      metrics.update(client_metrics.distribution(
          result.per_client, result.per_client[evaluation_lib.NUM_EXAMPLES], prefix=PREFIX))
    return metrics

  names = evaluation.metric_names
  with_personalized.metric_names = list(evaluate.metric_names) + [f'{PREFIX}/{n}' for n in names]
  if per_client:
    with_personalized.metric_names += client_metrics.column_names(names, prefix=PREFIX)
  return with_personalized
