"""One call that runs an experiment config into a run directory.

`run_experiment(config, workdir)` validates the config, builds the task and
the learning process, runs the rounds on a fedtff-owned TFF runtime and writes
`config.json`, `metrics.csv` and `summary.json` into `workdir`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Mapping, Optional

import ml_collections
import tensorflow_federated as tff

from fedtff import aggregators
from fedtff import algorithms
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from fedtff import config as config_lib
from fedtff import optimizers
from fedtff import outputs
from fedtff import runtime
from fedtff import tasks
from fedtff import training

ProgressFn = Callable[[Mapping[str, Any]], None]


_OPTIMIZER_HPARAMS = {
    'sgd': ('momentum',),
    'adam': ('beta_1', 'beta_2', 'epsilon'),
    'adagrad': ('epsilon', 'initial_accumulator'),
    'yogi': ('beta_1', 'beta_2', 'epsilon', 'initial_accumulator'),
    'rmsprop': (),
}


def _optimizer_hparams(group: ml_collections.ConfigDict) -> Dict[str, Any]:
  return {name: group[name] for name in _OPTIMIZER_HPARAMS[group.optimizer]}


def _schedule(client: ml_collections.ConfigDict) -> Optional[schedules.Schedule]:
  if client.lr_schedule == 'constant' and client.lr_warmup_rounds == 0:
    return None
  return schedules.Schedule(
      client.lr_schedule, learning_rate=client.learning_rate, decay_rate=client.lr_decay_rate,
      decay_steps=client.lr_decay_steps, staircase=client.lr_staircase,
      warmup_rounds=client.lr_warmup_rounds)


def _client_optimizer(config: ml_collections.ConfigDict):
  if config.algorithm.name == 'fedsgd':
    return None
  if _schedule(config.client) is not None:
    return optimizers.build_fn(config.client.optimizer, **_optimizer_hparams(config.client))
  return optimizers.build(config.client.optimizer, config.client.learning_rate,
                          **_optimizer_hparams(config.client))


def _aggregator(config: ml_collections.ConfigDict) -> aggregators.AggregatorSpec:
  fields = config.aggregator.to_dict()
  return aggregators.AggregatorSpec(clients_per_round=config.clients_per_round, **fields)


def build_process(config: ml_collections.ConfigDict,
                  task: tasks.Task) -> tff.learning.templates.LearningProcess:
  """The learning process that `config.algorithm`, `client`, `server` and
  `aggregator` describe, built by `fedtff.build_learning_process`."""
  algorithm = config.algorithm
  return algorithms.build_learning_process(
      task.model_fn, task.element_spec,
      algorithm=algorithm.name,
      client_optimizer=_client_optimizer(config),
      server_optimizer=optimizers.build(config.server.optimizer, config.server.learning_rate,
                                        **_optimizer_hparams(config.server)),
      client_learning_rate_schedule=_schedule(config.client),
      proximal_strength=algorithm.proximal_strength if algorithm.name == 'fedprox' else None,
      weighted=algorithm.weighted,
      aggregator=_aggregator(config))


def _eval_metrics(output_metrics: Mapping[str, Any]) -> training.Metrics:
  current = output_metrics['client_work']['eval']['current_round_metrics']
  return training.scalar_metrics(current, 'eval')


def evaluation_fn(task: tasks.Task, training_process) -> Callable[[Any, int], training.Metrics]:
  """Returns `(state, round_num) -> eval/<name>` over all test clients."""
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      task.test_data.dataset_computation,
      algorithms.build_evaluation(task.model_fn, task.element_spec))
  eval_state = process.initialize()
  test_ids = task.test_data.client_ids

  def evaluate(state, round_num: int) -> training.Metrics:
    del round_num
    weights = training_process.get_model_weights(state)
    output = process.next(process.set_model_weights(eval_state, weights), test_ids)
    return _eval_metrics(output.metrics)

  evaluate.metric_names = training.metric_names(process, _eval_metrics)
  return evaluate


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *,
                   progress_fn: Optional[ProgressFn] = None) -> Dict[str, Any]:
  """Runs `config` into `workdir` and returns the summary it writes there.

  Args:
    config: An experiment config (see `fedtff.config.base_config`).
    workdir: The run directory; created if needed.
    progress_fn: Called with each round's metrics row, e.g. to print progress.

  Raises:
    fedtff.config.ConfigError: If the config does not fit the schema.
    OSError: If `workdir` cannot be written.
  """
  config_lib.validate(config)
  outputs.ensure_writable_dir(workdir)
  outputs.atomic_write_text(os.path.join(workdir, 'config.json'), config_lib.to_json(config) + '\n')
  start = time.perf_counter()
  task = tasks.build_task(config)
  process = build_process(config, task)
  with runtime.local_runtime():
    final_row = _run_rounds(config, task, process, workdir, progress_fn)
  summary = {'final': final_row, 'total_rounds': config.total_rounds,
             'total_time_s': time.perf_counter() - start}
  outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _run_rounds(config, task, process, workdir, progress_fn) -> Dict[str, Any]:
  composed = tff.simulation.compose_dataset_computation_with_learning_process(
      task.train_data.dataset_computation, process)
  evaluate = evaluation_fn(task, process)
  columns = (['round', 'round_time_s'] + training.metric_names(process, training.train_metrics)
             + evaluate.metric_names)
  csv_path = os.path.join(workdir, 'metrics.csv')
  if os.path.exists(csv_path):
    os.remove(csv_path)
  last_row = {}
  writers = [outputs.MetricsCsv(csv_path, columns).write, last_row.update]
  if progress_fn:
    writers.append(progress_fn)
  train_ids = task.train_data.client_ids
  select = lambda round_num: training.sample_clients(
      train_ids, config.clients_per_round, round_num=round_num, seed=config.seed)
  state = composed.set_model_weights(
      composed.initialize(), tff_model.initial_weights(task.model_fn, config.seed))
  training.run_training(composed, select, total_rounds=config.total_rounds, state=state,
                        evaluation_fn=evaluate, rounds_per_eval=config.rounds_per_eval,
                        metrics_writers=writers)
  return dict(last_row)
