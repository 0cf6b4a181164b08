"""Evaluating the newest checkpoint of a run directory on its test clients.

`evaluate_checkpoint(workdir)` rebuilds the run from `<workdir>/config.json`
(`load_config`), builds its task and learning process, restores the newest
checkpoint in `<workdir>/checkpoints` and evaluates the model on all held-out
test clients with the runner's own evaluation (`fedtff.runner.experiment`), so its
metrics equal the `eval/<name>` columns the run logged for that round.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import ml_collections

from fedtff.runner import checkpoints
from fedtff.runner import config as config_lib
from fedtff.runner import experiment
from fedtff.runner import outputs
from fedtff.runner import run_dir
from fedtff.execution import runtime
from fedtff.runner import user_task


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config `workdir` was run with, on the current schema.

  Fields that `config.json` lacks (added to the schema later) keep their
  defaults from `fedtff.runner.config.base_config()`.

  Raises:
    FileNotFoundError: If `workdir` or its `config.json` does not exist.
    fedtff.runner.config.ConfigError: If the saved config does not fit the schema.
  """
  path = os.path.join(workdir, run_dir.CONFIG)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'Run directory {workdir} does not exist.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir} is not a run directory: it has no {run_dir.CONFIG}.')
  saved = outputs.read_json_object(path)
  config = config_lib.base_config()
  config.update(saved)
  config_lib.validate(config)
  return config


def evaluate_checkpoint(workdir: str, *, task: Optional[user_task.UserTask] = None,
                        process: Optional[user_task.ProcessLike] = None) -> Dict[str, float]:
  """Evaluates the newest checkpoint in `workdir` on all of the run's test clients.

  Args:
    workdir: A run directory written by `fedtff.run_experiment`.
    task: The run's own task, if it was given in Python (`run_experiment`'s
      `task`); a task named by import paths in config.json is imported.
    process: The run's own learning process, likewise.

  Returns:
    `{'round': N, 'eval/accuracy': ..., 'eval/loss': ..., ...}`: the
    checkpoint's round and the evaluation metrics, named as in metrics.csv.

  A damaged newer checkpoint is set aside (`fedtff.runner.checkpoints.restore_latest`)
  and the newest intact one evaluated; the returned `round` says which.

  Raises:
    FileNotFoundError: If `workdir`, its config.json or any checkpoint is missing.
    fedtff.runner.checkpoints.DamagedCheckpointError: If no checkpoint can be read.
    fedtff.runner.config.ConfigError: If the saved config does not fit the schema.
    fedtff.runner.checkpoints.CheckpointMismatchError: If the checkpoint does not fit
      the process that the config builds.
  """
  config = load_config(workdir)
  checkpoint_dir = os.path.join(workdir, run_dir.CHECKPOINTS)
  if not checkpoints.rounds(checkpoint_dir):
    raise FileNotFoundError(f'No checkpoint in {checkpoint_dir}; train the run first.')
  config, user, user_process = user_task.resolve(config, task=task, process=process)
  task = user_task.build_task(config, user)
  process = (user_task.build_process(user_process, task) if user_process is not None
             else experiment.build_process(config, task))
  with runtime.local_runtime():
    restored = checkpoints.restore_latest(checkpoint_dir, process.initialize(),
                                          specs=checkpoints.state_specs(process))
    metrics = experiment.evaluation_fn(task, process, engine=config.engine,
                                       per_client=config.per_client_eval)(
                                           restored.state, restored.round_num)
  return {'round': restored.round_num, **metrics}
