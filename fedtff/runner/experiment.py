"""One call that runs an experiment config into a run directory.

`run_experiment(config, workdir)` validates the config, builds the task and
the learning process, resumes from the newest checkpoint in `workdir` if there
is one, runs the remaining rounds on a fedtff-owned TFF runtime and writes the
run directory described in `fedtff.runner.run_dir`.

With `config.engine='compiled'` the training rounds run as `fedtff.compiled`'s
compiled graphs instead (on the same sampled clients and batches), and so does
the evaluation of the held-out clients (`fedtff.compiled.CompiledEvaluation`).
Checkpoints hold the TFF process's state on both engines, so a run can resume
on either; the compiled engine writes that layout without building the TFF
process (`_CompiledStateLayout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import aggregators
from fedtff.algorithms import masked_sum
from fedtff.algorithms import attacks
from fedtff.algorithms import robust
from fedtff import algorithms
from fedtff.runner import callbacks as callbacks_lib
from fedtff.runner import checkpoints
from fedtff.runner import client_states
from fedtff.runner import client_metrics
from fedtff.algorithms import evaluation as evaluation_lib
from fedtff.algorithms import fed_prox
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from fedtff.runner import config as config_lib
from fedtff import data
from fedtff.data import heterogeneity as heterogeneity_lib
from fedtff.execution import distributed
from fedtff import compiled
from fedtff.algorithms import optimizers
from fedtff.privacy import accounting
from fedtff.privacy import ddp
from fedtff.privacy import ftrl
from fedtff.privacy import ledger
from fedtff.privacy import run_privacy
from fedtff.runner import personalized
from fedtff.runner import run_dir
from fedtff import tasks
from fedtff.runner import training
from fedtff.runner import user_task

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


def noise_multiplier(config: ml_collections.ConfigDict, task: tasks.Task) -> Optional[float]:
  """The DP noise multiplier the run uses (None without DP), checked.

  With `privacy.target_epsilon` it is the smallest multiplier that keeps epsilon
  within the target over `total_rounds` rounds of `clients_per_round` clients
  sampled (`privacy.sampling`) from the task's training clients, by
  `privacy.accountant` (`privacy.mechanism='dp_ftrl'`: `fedtff.privacy.ftrl`;
  `'ddp_skellam'`: `fedtff.privacy.ddp`).

  Raises:
    ValueError: If the stated guarantee would not hold (fedtff.privacy).
  """
  if config.aggregator.kind != 'dp':
    return None
  num_clients = len(task.train_data.client_ids)
  z = config.aggregator.noise_multiplier
  if config.privacy.mechanism == 'dp_ftrl':
    return _ftrl_noise_multiplier(config, num_clients)
  if config.privacy.mechanism == ddp.MECHANISM:
    return _ddp_noise_multiplier(config, task, num_clients)
  sampling = ACCOUNTING_SAMPLINGS[config.privacy.sampling]
  if z is None:
    z = accounting.noise_multiplier_for_epsilon(
        config.privacy.target_epsilon, config.clients_per_round, num_clients,
        config.total_rounds, config.privacy.delta, sampling=sampling,
        accountant=config.privacy.accountant)
  accounting.check_guarantee(
      noise_multiplier=z, clients_per_round=config.clients_per_round, num_clients=num_clients,
      weighted=config.algorithm.weighted, rounds=config.total_rounds,
      target_epsilon=config.privacy.target_epsilon, delta=config.privacy.delta,
      sampling=sampling, accountant=config.privacy.accountant)
  return z


# privacy.sampling -> fedtff.privacy.accounting's sampling.
ACCOUNTING_SAMPLINGS = {'fixed': accounting.WITHOUT_REPLACEMENT, 'poisson': accounting.POISSON}


def _ftrl_noise_multiplier(config: ml_collections.ConfigDict, num_clients: int) -> float:
  privacy, z = config.privacy, config.aggregator.noise_multiplier
  if z is None:
    z = ftrl.noise_multiplier_for_epsilon(privacy.target_epsilon, config.clients_per_round,
                                          num_clients, config.total_rounds, privacy.delta)
  accounting.check_guarantee(
      noise_multiplier=z, clients_per_round=config.clients_per_round, num_clients=num_clients,
      weighted=config.algorithm.weighted, target_epsilon=None, delta=privacy.delta)
  spent = ftrl.epsilon(z, config.clients_per_round, num_clients, config.total_rounds,
                       privacy.delta)
  if privacy.target_epsilon is not None and spent > privacy.target_epsilon:
    raise ValueError(f'{config.total_rounds} DP-FTRL rounds with noise_multiplier={z} spend '
                     f'epsilon {spent:.4g}, more than target_epsilon={privacy.target_epsilon}.')
  return z


def _ddp_bits(config: ml_collections.ConfigDict) -> int:
  bits = config.privacy.ddp_bits
  return ddp.DEFAULT_BITS if bits is None else bits


def _ddp_noise_multiplier(config: ml_collections.ConfigDict, task: tasks.Task,
                          num_clients: int) -> float:
  """`z` of the distributed Skellam mean (`fedtff.privacy.ddp`), checked; no amplification."""
  privacy, z = config.privacy, config.aggregator.noise_multiplier
  # Weighting, m <= N, delta < 1/N (and z >= 0 when given); z itself is checked below.
  accounting.check_guarantee(
      noise_multiplier=1.0 if z is None else z, clients_per_round=config.clients_per_round,
      num_clients=num_clients, weighted=config.algorithm.weighted, delta=privacy.delta)
  delta = accounting.resolve_delta(privacy.delta, num_clients)
  options = dict(clip=config.aggregator.clip_norm, dim=ddp.model_dim(task.model_fn),
                 rounds=config.total_rounds, delta=delta, bits=_ddp_bits(config))
  if z is None:
    z = ddp.noise_multiplier_for_epsilon(privacy.target_epsilon, config.clients_per_round,
                                         **options)
  spent = ddp.epsilon(z, config.clients_per_round, **options)
  if privacy.target_epsilon is not None and spent > privacy.target_epsilon:
    raise ValueError(f'{config.total_rounds} distributed Skellam rounds with noise_multiplier={z} '
                     f'spend epsilon {spent:.4g}, more than target_epsilon='
                     f'{privacy.target_epsilon}.')
  return z


def _secure_aggregation(config: ml_collections.ConfigDict) -> bool:
  """Whether the sites mask the model update's mean (`runtime.secure_aggregation`)."""
  return bool(config.runtime.sites) and config.runtime.secure_aggregation


def _secure_streams(config: ml_collections.ConfigDict, task: tasks.Task
                   ) -> Optional[Dict[str, int]]:
  """`{stream: mask length}` of the masked mean of the model's trainable weights, or None."""
  if not _secure_aggregation(config):
    return None
  model = task.model_fn()
  value_type = tff.to_type([tff.TensorType(v.dtype.as_numpy_dtype, v.shape.as_list())
                            for v in model.trainable_variables])
  return masked_sum.mean_stream_lengths(masked_sum.masked_mean_factory(), value_type)


def _aggregator(config: ml_collections.ConfigDict, task: tasks.Task, z: Optional[float]):
  if _secure_aggregation(config):  # The weighted mean, masked (config.py checks the options).
    return masked_sum.masked_mean_factory()
  if config.aggregator.kind == 'dp' and config.privacy.mechanism == 'dp_ftrl':
    return ftrl.ftrl_aggregator(z, config.clients_per_round, config.aggregator.clip_norm,
                                task.model_fn)
  if config.aggregator.kind == 'dp' and config.privacy.mechanism == ddp.MECHANISM:
    return ddp.ddp_aggregator(z, config.clients_per_round, clip=config.aggregator.clip_norm,
                              dim=ddp.model_dim(task.model_fn), bits=_ddp_bits(config))
  fields = dict(config.aggregator.to_dict(), noise_multiplier=z, attack=attack_spec(config))
  return aggregators.AggregatorSpec(clients_per_round=config.clients_per_round, **fields)


def attack_spec(config: ml_collections.ConfigDict) -> Optional[attacks.AttackSpec]:
  """The config's `attack.*` as an `AttackSpec` seeded by `config.seed`, or None."""
  if config.attack.kind == 'none':
    return None
  return attacks.AttackSpec(config.attack.kind, config.attack.fraction, config.attack.scale,
                            seed=config.seed)


def _process_options(config: ml_collections.ConfigDict, task: tasks.Task,
                     z: Optional[float]) -> Dict[str, Any]:
  """The builder arguments that `config.algorithm`, `client`, `server` and
  `aggregator` describe (with DP noise multiplier `z`), the same for both engines;
  optimizer fields the config leaves unset are the algorithm's defaults
  (`fedtff.runner.config.resolve`)."""
  config = config_lib.resolve(config)
  algorithm = config.algorithm
  return dict(
      algorithm=algorithm.name,
      client_optimizer=_client_optimizer(config),
      server_optimizer=optimizers.build(config.server.optimizer, config.server.learning_rate,
                                        **_optimizer_hparams(config.server)),
      client_learning_rate_schedule=_schedule(config.client),
      proximal_strength=algorithm.proximal_strength if algorithm.name == 'fedprox' else None,
      q=algorithm.q if algorithm.name == 'qfedavg' else None,
      **({'adaptive_proximal_strength': True} if algorithm.adaptive_mu else {}),
      **({'ditto_lambda': algorithm.ditto_lambda} if algorithm.name == 'ditto' else {}),
      weighted=algorithm.weighted,
      aggregator=_aggregator(config, task, z),
      **_population_size(config, task),
      **task.learning_kwargs())


def _population_size(config: ml_collections.ConfigDict, task: tasks.Task) -> Dict[str, int]:
  """SCAFFOLD's N, the task's training clients; no argument for other algorithms."""
  if not algorithms.registry.get(config.algorithm.name).needs_population_size:
    return {}
  return dict(population_size=len(task.train_data.client_ids))


def build_process(config: ml_collections.ConfigDict, task: tasks.Task, *,
                  options: Optional[Dict[str, Any]] = None
                 ) -> tff.learning.templates.LearningProcess:
  """The learning process that `config.algorithm`, `client`, `server` and
  `aggregator` describe, built by `fedtff.build_learning_process`; `options`
  are those arguments if already derived from `config`."""
  options = options or _process_options(config, task, noise_multiplier(config, task))
  return algorithms.build_learning_process(task.model_fn, task.element_spec, **options)


def build_compiled_process(config: ml_collections.ConfigDict, task: tasks.Task, *,
                           options: Optional[Dict[str, Any]] = None) -> compiled.CompiledProcess:
  """`build_process`'s process on the compiled engine (`fedtff.compiled.build_compiled_process`).

  Raises:
    fedtff.runner.config.ConfigError: If the config asks for something the compiled
      engine does not implement (one sentence naming it and engine='tff').
  """
  options = options or _process_options(config, task, noise_multiplier(config, task))
  options = {'jit_compile': config.jit_compile, **options}
  try:
    return compiled.build_compiled_process(task.model_fn, task.element_spec, **options)
  except ValueError as e:  # What compiled does not implement: "...; use engine='tff'."
    raise config_lib.ConfigError(str(e)) from None


def _eval_metrics(output_metrics: Mapping[str, Any]) -> training.Metrics:
  current = output_metrics['client_work']['eval']['current_round_metrics']
  return training.scalar_metrics(current, 'eval')


def evaluation_fn(task: tasks.Task, training_process, *, engine: str = 'tff',
                  per_client: bool = False) -> Callable[[Any, int], training.Metrics]:
  """Returns `(state, round_num) -> eval/<name>` over all test clients.

  Args:
    task: The task; its `test_data` are the held-out clients.
    training_process: What gives the model weights of a state
      (`get_model_weights`).
    engine: 'tff' runs TFF's federated evaluation
      (`fedtff.algorithms.build_evaluation`); 'compiled' the compiled
      `fedtff.compiled.CompiledEvaluation`, whose metrics equal TFF's (to float32
      rounding) and which builds nothing of TFF.
    per_client: Also return each metric's distribution over the test clients,
      `eval/<name>/<statistic>` (`fedtff.runner.client_metrics`). On the TFF engine
      this runs a second federated computation that returns every client's
      metrics (`fedtff.algorithms.evaluation.build_per_client_evaluation`).
  """
  if engine == 'compiled':
    return _compiled_evaluation_fn(task, training_process, per_client)
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      task.test_data.dataset_computation,
      algorithms.build_evaluation(task.model_fn, task.element_spec, **task.learning_kwargs()))
  eval_state = process.initialize()
  test_ids = task.test_data.client_ids
  clients_fn = _tff_per_client_fn(task) if per_client else None

  def evaluate(state, round_num: int) -> training.Metrics:
    del round_num
    weights = training_process.get_model_weights(state)
    output = process.next(process.set_model_weights(eval_state, weights), test_ids)
    metrics = _eval_metrics(output.metrics)
    if clients_fn:
      metrics.update(clients_fn(weights))
    return metrics

  evaluate.metric_names = training.metric_names(process, _eval_metrics)
  if per_client:
    evaluate.metric_names += client_metrics.column_names(
        [name.partition('/')[2] for name in evaluate.metric_names])
  return evaluate


def _tff_per_client_fn(task: tasks.Task) -> Callable[[Any], training.Metrics]:
  """`weights -> eval/<name>/<statistic>` from TFF's per-client evaluation."""
  computation = tff.simulation.compose_dataset_computation_with_computation(
      task.test_data.dataset_computation,
      evaluation_lib.build_per_client_evaluation(task.model_fn, task.element_spec,
                                                 **task.learning_kwargs()))
  test_ids = task.test_data.client_ids

  def per_client(weights) -> training.Metrics:
    outputs = computation(weights, test_ids)
    values = {name: np.asarray([o['metrics'][name] for o in outputs])
              for name in outputs[0]['metrics']}
    return client_metrics.distribution(values, [o['num_examples'] for o in outputs])

  return per_client


def _compiled_evaluation_fn(task: tasks.Task, training_process,
                            per_client: bool) -> Callable[[Any, int], training.Metrics]:
  """`evaluation_fn` on the compiled engine."""
  evaluation = compiled.CompiledEvaluation(task.model_fn, task.test_data, **task.learning_kwargs())

  def evaluate(state, round_num: int) -> training.Metrics:
    del round_num
    result = evaluation(training_process.get_model_weights(state))
    metrics = {f'eval/{name}': value for name, value in result.pooled.items()}
    if per_client:
      metrics.update(client_metrics.distribution(
          result.per_client, result.per_client[compiled.evaluation.NUM_EXAMPLES]))
    return metrics

  evaluate.metric_names = [f'eval/{name}' for name in evaluation.metric_names]
  if per_client:
    evaluate.metric_names += client_metrics.column_names(evaluation.metric_names)
  return evaluate


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *,
                   task: Optional[user_task.UserTask] = None,
                   process: Optional[user_task.ProcessLike] = None,
                   progress_fn: Optional[ProgressFn] = None,
                   overwrite: bool = False,
                   callbacks: Sequence[training.Callback] = ()) -> Dict[str, Any]:
  """Runs `config` into `workdir`, resuming it if it holds a checkpoint.

  Args:
    config: An experiment config (see `fedtff.runner.config.base_config`).
    workdir: The run directory (layout in `fedtff.runner.run_dir`); created if needed.
    task: Your own model and data (`fedtff.UserTask`) instead of the config's
      built-in ones; config.json records where its objects were defined.
      A config names them by import path instead (`model.factory`,
      `data.source`, ...; `fedtff.runner.user_task`).
    process: Your own algorithm instead of `config.algorithm`: a
      `tff.learning.templates.LearningProcess`, or a function of TFF's model
      function returning one (or the config's `algorithm.process`). It runs on
      engine='tff', without DP accounting (docs/research.md).
    progress_fn: Called with each round's metrics row, e.g. to print progress.
    overwrite: Start over even if `workdir` holds a run of another config.
    callbacks: Called after every round with a `fedtff.runner.training.RoundEnd`
      (round, metrics row, model weights, the rows so far); one returning a
      reason stops the run after that round (`fedtff.runner.callbacks`, which also
      has the built-in ones `config.stop` selects).

  Returns:
    The summary also written to `<workdir>/summary.json`.

  Raises:
    fedtff.runner.config.ConfigError: If the config does not fit the schema, or
      differs from the one `workdir` was run with (beyond `total_rounds`), or
      names an import path that cannot be imported or is of the wrong kind.
    TypeError: If `task` or `process` holds an object of the wrong kind.
    OSError: If `workdir` cannot be written.
    fedtff.runner.run_dir.RunDirectoryError: If another process is writing
      `workdir`, `total_rounds` is below its completed rounds, or its metric
      files do not cover its newest checkpoint.
    fedtff.runner.checkpoints.DamagedCheckpointError: If `workdir` has checkpoints
      but none can be read (a damaged newer one is set aside and an older
      intact one restored otherwise).
    fedtff.runner.training.TrainingDivergedError: At the first round that diverged
      (a non-finite metric, update or weight, or every sampled client's
      update dropped as non-finite; `fedtff.runner.training.divergence`), naming
      it; the last checkpoint, from before that round, is kept.
  """
  config_lib.validate(config)
  config = config_lib.resolve(config)  # config.json holds the defaults the run used.
  config, user, user_process = user_task.resolve(config, task=task, process=process)
  run_dir.check_config(workdir, config, overwrite=overwrite)  # Cheap refusals first.
  federation = _site_federation(config, user)
  task = (_site_modules()[0].site_task(config, federation) if federation
          else user_task.build_task(config, user))
  check_task(config, task)
  z = noise_multiplier(config, task)
  privacy = _run_privacy(config, task, z)
  engine = _engine(config, task, _process_options(config, task, z), privacy,
                     user_process=user_process)
  stopping = callbacks_lib.Stopping(config, callbacks, _train_metric_names(engine.tff_process))
  with run_dir.lock(workdir):  # Everything above is validation: nothing was written.
    finished = None if overwrite else run_dir.completed_summary(workdir, config)
    if finished is not None:
      return finished
    run_dir.prepare(workdir, config, overwrite=overwrite)
    with _runtime(config, engine, workdir, _secure_streams(config, task)):
      total_time_s = _train(config, task, engine, workdir, progress_fn, privacy, stopping,
                            _has_examples_fn(task, federation))
    extra = _engine_summary(engine.choice)
    if privacy:
      extra['privacy'] = privacy.summary(engine.choice.name)
    extra.update(stopping.summary(workdir))
    return run_dir.write_summary(workdir, total_time_s=total_time_s, extra=extra)


def _site_modules():
  """(`fedtff.execution.site_data`, `fedtff.execution.sites`), imported when a run has
  sites: importing fedtff must not import site_data, or its command line
  (`python -m fedtff.execution.site_data export`) starts with runpy's warning that
  the module was imported before it ran."""
  from fedtff.execution import site_data  # pylint: disable=g-import-not-at-top
  from fedtff.execution import sites  # pylint: disable=g-import-not-at-top
  return site_data, sites


def _site_federation(config, user) -> Optional[Dict[str, Any]]:
  """The sites' clients (`fedtff.execution.sites.federation`) with `runtime.sites`, else None."""
  if not config.runtime.sites:
    return None
  if user is not None:
    raise config_lib.ConfigError("runtime.sites runs the config's own model on the sites' "
                                 'clients; pass no task of your own (task=, model.factory, '
                                 'data.source).')
  sites = _site_modules()[1]
  return sites.federation(config.runtime.sites, connect=sites.connector_for(config.runtime),
                          timeout_s=config.runtime.connect_timeout_s)


def _has_examples_fn(task: tasks.Task, federation: Optional[Mapping[str, Any]]
                    ) -> Callable[[Sequence[str]], bool]:
  """Whether a round's (round-tagged) clients hold an example: from their datasets, or
  with sites from the counts the sites announce (the trainer cannot read their data)."""
  if federation:
    counts = federation['counts']['train']
    return lambda tagged_ids: any(counts[i] > 0 for i in _untagged(tagged_ids))
  return lambda tagged_ids: training.has_examples(
      [task.train_data.serializable_dataset_fn(i) for i in tagged_ids])


def _engine_summary(choice: config_lib.EngineChoice) -> Dict[str, str]:
  """summary.json's record of the engine that ran, and why 'auto' chose TFF."""
  return {'engine': choice.name, **({'engine_reason': choice.reason} if choice.reason else {})}


def _runtime(config, engine, workdir: str, secure_streams: Optional[Dict[str, int]] = None):
  """The TFF runtime the run needs: none (no worker is started) for a compiled run that
  makes no TFF call (`_CompiledStateLayout.calls_tff`), else `config.runtime`'s (with
  sites and secure aggregation, the masked sums' `secure_streams`)."""
  if isinstance(engine.tff_process, _CompiledStateLayout) and not engine.tff_process.calls_tff:
    return contextlib.nullcontext()
  if config.runtime.sites:
    sites = _site_modules()[1]
    return distributed.with_resume_hint(sites.site_runtime(
        config.runtime.sites, connect=sites.connector_for(config.runtime),
        connect_timeout_s=config.runtime.connect_timeout_s, secure_streams=secure_streams),
        workdir, distributed.SITES_RESUME)
  return distributed.runtime_for(config.runtime, workdir)


def check_task(config: ml_collections.ConfigDict, task: tasks.Task) -> None:
  """Refuses a config that does not fit its task, before anything runs.

  Raises:
    fedtff.runner.config.ConfigError: If `clients_per_round` exceeds the task's
      training clients.
  """
  num_clients = len(task.train_data.client_ids)
  if config.clients_per_round > num_clients:
    raise config_lib.ConfigError(
        f'Config key clients_per_round is {config.clients_per_round}, but the task has '
        f'{num_clients} training clients; choose at most {num_clients}.')


def _run_privacy(config, task, z: Optional[float]) -> Optional[run_privacy.RunPrivacy]:
  """The privacy record of a DP run (ledger, noise seed, published metrics), or None."""
  if z is None:
    return None
  privacy = config.privacy
  mechanism = ledger.RoundMechanism(
      noise_multiplier=z, clients_per_round=config.clients_per_round,
      num_clients=len(task.train_data.client_ids), clip_norm=config.aggregator.clip_norm,
      sampling=ACCOUNTING_SAMPLINGS.get(privacy.sampling, privacy.sampling),
      mechanism=privacy.mechanism, accountant=privacy.accountant)
  if privacy.mechanism == ddp.MECHANISM:
    mechanism = dataclasses.replace(mechanism, bits=_ddp_bits(config),
                                    dim=ddp.model_dim(task.model_fn))
  return run_privacy.RunPrivacy(mechanism, delta=privacy.delta, noise_seed=privacy.noise_seed,
                                publish_client_metrics=privacy.publish_client_metrics)


class _Engine(NamedTuple):
  """How `_train` runs rounds on `config.engine`; checkpoints hold TFF states on both.

  Attributes:
    tff_process: The TFF process, or on the compiled engine its
      `_CompiledStateLayout`: its state is the checkpoint format and it names
      the training metric columns, on either engine.
    rounds: What `training.run_training` drives: `next(state, client_ids)`,
      `get_model_weights(state)`.
    from_tff_state: A TFF state (initial, or a checkpoint) as a state of `rounds`.
    to_tff_state: `(state, tff_state)`: a state of `rounds` as a TFF state,
      with what it lacks (the aggregator's state) taken from `tff_state`.
    choice: The engine that runs the rounds, and why if 'auto' chose TFF.
  """
  tff_process: tff.learning.templates.LearningProcess
  rounds: Any
  from_tff_state: Callable[[Any], Any]
  to_tff_state: Callable[[Any, Any], Any]
  choice: config_lib.EngineChoice


class _CompiledRounds:
  """A compiled process fed round-tagged client ids like TFF's composed process;
  each round's clients are read through TFF's pipeline and padded
  (`fedtff.compiled.RoundBatches`), since their batches differ by round.

  With DP, round r's noise is seeded by `privacy.round_noise_seed(r)`, r read
  off the round-tagged ids; an empty (Poisson) cohort's round is the one after
  the previous round's (`start_round` before the first).
  """

  def __init__(self, process: compiled.CompiledProcess, client_data, batch_size: int,
               privacy: Optional[run_privacy.RunPrivacy]):
    self._process = process
    self._client_data = compiled.RoundBatches(client_data, batch_size=batch_size)
    self._privacy = privacy
    self.start_round = 1

  def _round_of(self, client_ids: Sequence[str]) -> int:
    """The round these (round-tagged) ids train in; advances `start_round` past it."""
    round_num = (data.rounds.split_round_client_id(client_ids[0])[0] if client_ids
                 else self.start_round)
    self.start_round = round_num + 1
    return round_num

  def next(self, state, client_ids):
    noise_seed = None
    round_num = self._round_of(client_ids)
    if self._privacy:
      noise_seed = self._privacy.round_noise_seed(round_num)
    return self._process.next(state, self._client_data.tagged_batches(client_ids),
                              noise_seed=noise_seed)

  def get_model_weights(self, state):
    return self._process.get_model_weights(state)


def _is_stateful(config) -> bool:
  """Whether `config`'s algorithm keeps a state per client (SCAFFOLD)."""
  return algorithms.registry.get(config.algorithm.name).stateful_clients


def _untagged(client_ids: Sequence[str]) -> list:
  """Round-tagged ids (`fedtff.data.round_client_ids`) without their round."""
  return [i.partition(data.rounds.SEPARATOR)[2] for i in client_ids]


class _CompiledStatefulRounds(_CompiledRounds):
  """`_CompiledRounds` for SCAFFOLD: each round gathers its clients' control variates
  from `store` (a `fedtff.runner.client_states.ClientStateStore`, set by `_train`)
  and writes their new ones back."""
  store: client_states.ClientStateStore

  def next(self, state, client_ids):
    self._round_of(client_ids)
    ids = _untagged(client_ids)
    output, rows = self._process.next_with_controls(
        state, self._client_data.tagged_batches(client_ids), self.store.get(ids))
    self.store.put(ids, rows)
    return output

  @property
  def state_size(self) -> int:
    return self._process.state_size


class _TffStatefulRounds:
  """SCAFFOLD's TFF process (`fedtff.algorithms.scaffold.ScaffoldProcess`) fed
  round-tagged client ids: their datasets are built in the runtime from the
  ids (as `tff.simulation.compose_dataset_computation_with_learning_process`
  does), their control variates gathered from `store` and written back."""
  store: client_states.ClientStateStore

  def __init__(self, process, dataset_computation):
    self._process = process
    state_type = process.initialize.type_signature.result
    controls_type = process.next.type_signature.parameter[2]

    @tff.federated_computation(state_type, tff.FederatedType(np.str_, tff.CLIENTS),
                               controls_type)
    def next_fn(state, client_ids, controls):
      return process.next(state, tff.federated_map(dataset_computation, client_ids), controls)

    self._next = next_fn

  def next(self, state, client_ids):
    ids = _untagged(client_ids)
    controls = self._process.unflatten_controls(self.store.get(ids))
    output = self._next(state, list(client_ids), controls)
    self.store.put(ids, self._process.flatten_controls(output.client_controls))
    return tff.learning.templates.LearningProcessOutput(output.state, output.metrics)

  def get_model_weights(self, state):
    return self._process.get_model_weights(state)

  @property
  def state_size(self) -> int:
    return self._process.state_size


def _client_state_store(config, task, rounds, workdir: str
                       ) -> Optional[client_states.ClientStateStore]:
  """The run's per-client state store (`<workdir>/client_states`), or None."""
  if not _is_stateful(config):
    return None
  ids, size = task.train_data.client_ids, rounds.state_size
  on_disk = {'memory': False, 'disk': True}.get(
      config.algorithm.client_states, client_states.choose_on_disk(len(ids), size))
  rounds.store = client_states.ClientStateStore(
      os.path.join(workdir, CLIENT_STATES), ids, size, on_disk=on_disk)
  return rounds.store


CLIENT_STATES = 'client_states'  # The store's directory in a run directory.


def _aggregator_state_is_empty(config) -> bool:
  """Whether TFF's aggregator state for `config` holds no tensors (the mean's, a robust
  rule's without an update attack)."""
  return (config.aggregator.kind in ('mean',) + robust.RULES
          and config.attack.kind not in attacks.UPDATE_KINDS)


class _CompiledStateLayout:
  """The TFF process's state layout, built from the compiled process without
  building the TFF process.

  Building the TFF process costs seconds (tracing its client work); the compiled
  engine needs of it only the layout of its state, the checkpoint format, and
  the names of its training metrics. The fields of
  `tff.learning.templates.LearningAlgorithmState` but the aggregator's are the
  compiled state's, leaf for leaf (`fedtff.compiled.CompiledProcess.from_tff_state`).
  The aggregator's is the initial state of `aggregation`, TFF's aggregation
  process of the model updates (`fedtff.algorithms.builder.model_update_aggregation`),
  or `()` where it holds no tensors (`_aggregator_state_is_empty`; then no TFF
  call is made at all). So its checkpoints are those of the TFF process: either
  engine resumes them.
  """

  def __init__(self, compiled_process: compiled.CompiledProcess,
               aggregation: Optional[tff.templates.AggregationProcess] = None):
    self._fast = compiled_process
    self._aggregation = aggregation

  @property
  def calls_tff(self) -> bool:
    """Whether `initialize` runs a TFF computation (the aggregator's)."""
    return self._aggregation is not None

  def initialize(self):
    """The layout's state; its model weights are a template's, which the runner
    replaces (with seeded initial weights, or a checkpoint's)."""
    state = self._fast.state_template  # No Keras model to build.
    as_numpy = lambda s: tf.nest.map_structure(lambda t: t.numpy(), s)
    return tff.learning.templates.LearningAlgorithmState(
        global_model_weights=self._fast.get_model_weights(state), distributor=(),
        client_work=as_numpy(state.client_work),
        aggregator=self._aggregation.initialize() if self._aggregation else (),
        finalizer=as_numpy(state.finalizer))

  def state_specs(self, state) -> Any:
    """The `tf.TensorSpec`s of `state` (this layout's), as `checkpoints.state_specs`
    reads them off a TFF process: the aggregator's from its type signature."""
    spec = lambda leaf: tf.TensorSpec(np.shape(leaf), tf.as_dtype(np.asarray(leaf).dtype))
    specs = tf.nest.map_structure(spec, state)
    if self._aggregation is None:
      return specs
    return specs._replace(aggregator=checkpoints.state_specs(self._aggregation))

  def set_model_weights(self, state, weights):
    return state._replace(global_model_weights=tff.learning.models.ModelWeights(
        list(weights.trainable), list(weights.non_trainable)))

  def train_metric_names(self) -> list:
    """The compiled rounds' `train/<name>` columns, TFF's (the same metrics structure)."""
    return self._fast.train_metric_names()


def _state_layout(config, compiled_process: compiled.CompiledProcess,
                  options: Dict[str, Any]) -> _CompiledStateLayout:
  """The compiled process's `_CompiledStateLayout`, with TFF's aggregation process of
  the model updates where its state holds tensors."""
  if _aggregator_state_is_empty(config):
    return _CompiledStateLayout(compiled_process)
  return _CompiledStateLayout(compiled_process, algorithms.builder.model_update_aggregation(
      options['aggregator'], weighted=options['weighted'],
      trainable=compiled_process.state_template.global_model_weights.trainable))


def _train_metric_names(tff_process) -> list:
  if isinstance(tff_process, _CompiledStateLayout):
    return tff_process.train_metric_names()
  return training.metric_names(tff_process, training.train_metrics)


def _engine(config, task, options: Dict[str, Any],
            privacy: Optional[run_privacy.RunPrivacy] = None, *,
            user_process: Optional[user_task.ProcessLike] = None) -> _Engine:
  """The processes of the engine `config.engine` chooses (`config_lib.engine_choice`),
  built from the builder `options` (or the user's process, on TFF): the one place
  where the engines differ. With 'auto', what the compiled engine refuses when
  it is built (e.g. a model it cannot compile) runs on TFF instead."""
  choice = config_lib.engine_choice(config)
  if choice.name == 'compiled':
    try:  # First: its refusals come before TFF builds.
      compiled_process = build_compiled_process(config, task, options=options)
    except config_lib.ConfigError as e:
      if (config.engine != 'auto' or config.privacy.noise_seed is not None
          or config.jit_compile is not None):
        raise  # privacy.noise_seed and jit_compile apply to the compiled engine only.
      choice = config_lib.EngineChoice('tff', str(e))
    else:
      tff_process = _state_layout(config, compiled_process, options)
      rounds = (_CompiledStatefulRounds if _is_stateful(config) else _CompiledRounds)(
          compiled_process, task.train_data, config.data.batch_size, privacy)
      return _Engine(tff_process, rounds, compiled_process.from_tff_state,
                     compiled_process.to_tff_state, choice)
  process = (user_task.build_process(user_process, task) if user_process is not None
             else build_process(config, task, options=options))
  composed = (_TffStatefulRounds(process, task.train_data.dataset_computation)
              if _is_stateful(config) and user_process is None else
              tff.simulation.compose_dataset_computation_with_learning_process(
                  task.train_data.dataset_computation, process))
  return _Engine(process, composed, lambda state: state, lambda state, _: state, choice)


def _initial_state(config, task, process, checkpoint_dir: str) -> checkpoints.Restored:
  """The newest intact checkpoint's state (as a TFF state), or the initial one at round 0."""
  template = process.initialize()
  specs = (process.state_specs(template) if isinstance(process, _CompiledStateLayout)
           else checkpoints.state_specs(process))
  restored = checkpoints.restore_latest(checkpoint_dir, template, specs=specs)
  if restored is not None:
    return restored
  weights = tff_model.initial_weights(task.model_fn, config.seed)
  return checkpoints.Restored(process.set_model_weights(template, weights), 0, 0.0)


def _train(config, task, engine: _Engine, workdir: str, progress_fn,
           privacy: Optional[run_privacy.RunPrivacy],
           stopping: callbacks_lib.Stopping,
           has_examples_fn: Callable[[Sequence[str]], bool]) -> float:
  """Runs the remaining rounds; returns the run's total training seconds."""
  start = time.perf_counter()
  evaluate = evaluation_fn(task, engine.rounds, engine=engine.choice.name,
                           per_client=config.per_client_eval)
  evaluate = personalized.wrap(evaluate, config, task, engine.rounds)  # Ditto's v_k.
  checkpoint_dir = os.path.join(workdir, run_dir.CHECKPOINTS)
  tff_state, last_round, elapsed_s, _, metadata = _initial_state(
      config, task, engine.tff_process, checkpoint_dir)
  store = _client_state_store(config, task, engine.rounds, workdir)
  if store:
    store.restore(last_round)  # Exact resume: the rows after the checkpoint's round.
  if privacy:
    privacy.resume(last_round, metadata, engine=engine.choice.name, workdir=workdir,
                   published_round=run_dir.last_written_round(workdir))
  total_rounds = last_round if stopping.resume(last_round, metadata) else config.total_rounds
  rows = run_dir.resumed_rows(workdir, last_round, rounds_per_eval=config.rounds_per_eval,
                              total_rounds=config.total_rounds)
  plans = _RoundPlans(config, task)
  rounds = _AdaptiveStrengthRounds.wrap(config, engine.rounds, rows)
  columns = (['round', 'round_time_s', 'examples_per_s']
             + _train_metric_names(engine.tff_process) + plans.metric_names
             + ([_STRENGTH_METRIC] if rounds is not engine.rounds else [])
             + evaluate.metric_names + ([accounting.EPSILON_METRIC] if privacy else []))
  if privacy:
    columns = privacy.published_columns(columns)
  stopping.publish_only(columns)
  train_ids = task.train_data.client_ids
  if isinstance(engine.rounds, _CompiledRounds):  # The round of an empty cohort.
    engine.rounds.start_round = last_round + 1
  select = lambda round_num: plans.tagged_ids(round_num, training.sample_clients(
      train_ids, config.clients_per_round, round_num=round_num, seed=config.seed,
      sampling=config.privacy.sampling))

  def save(round_num, state):
    if store:  # Journal first: a kill before the checkpoint is undone at restore.
      store.write_journal(round_num)
    checkpoints.save(
        checkpoint_dir, round_num, engine.to_tff_state(state, tff_state),
        elapsed_s=elapsed_s + time.perf_counter() - start, keep=config.output.checkpoints_to_keep,
        metadata={**(privacy.checkpoint_metadata() if privacy else {}),
                  **stopping.checkpoint_metadata(round_num)})
    if store:
      store.apply(round_num)
      store.prune(checkpoints.rounds(checkpoint_dir))
    if privacy:
      privacy.write_ledger(workdir)

  with run_dir.metric_writers(workdir, columns, rows=rows,
                              tensorboard=config.output.tensorboard) as writers:
    published = lambda row: {k: v for k, v in row.items() if k in columns}
    writers = [lambda row, write=write: write(published(row))
               for write in writers + [progress_fn or _skip]]
    try:
      training.run_training(
          rounds, select, total_rounds=total_rounds,
          state=engine.from_tff_state(tff_state),
          start_round=last_round + 1, evaluation_fn=evaluate,
          rounds_per_eval=config.rounds_per_eval, metrics_writers=writers,
          checkpoint_fn=save, rounds_per_checkpoint=config.rounds_per_checkpoint,
          round_metrics_fn=_round_metrics_fn(plans, privacy, rounds),
          has_examples_fn=has_examples_fn,
          callbacks=stopping.callbacks, history=rows)
    except training.TrainingDivergedError as e:
      kept = checkpoints.rounds(checkpoint_dir)
      raise training.TrainingDivergedError(
          f'{e} The last good checkpoint ({"round " + str(kept[-1]) if kept else "none yet"}) '
          f'is kept in {checkpoint_dir}.') from None
  return elapsed_s + time.perf_counter() - start


class _RoundPlans:
  """The round-tagged ids of each round's cohort after `config.heterogeneity`
  (`fedtff.data.heterogeneity`), and the round's `train/stragglers` and
  `train/dropped` counts; without heterogeneity, the cohort's plain tagged ids."""

  def __init__(self, config, task):
    group = config.heterogeneity
    self._heterogeneity = heterogeneity_lib.Heterogeneity(
        group.straggler_fraction, group.dropout_fraction,
        heterogeneity_lib.resolve_policy(group.straggler_policy, config.algorithm.name))
    self._seed = config.seed
    self._full_batches = heterogeneity_lib.FullBatches(task.train_data)
    self._plans = {}
    self.metric_names = ([heterogeneity_lib.STRAGGLERS_METRIC, heterogeneity_lib.DROPPED_METRIC]
                         if self._heterogeneity.enabled else [])

  def tagged_ids(self, round_num: int, cohort: Sequence[str]) -> list:
    if not self._heterogeneity.enabled:
      return data.round_client_ids(round_num, cohort)
    plan = heterogeneity_lib.plan_round(cohort, self._heterogeneity, seed=self._seed,
                                        round_num=round_num, full_batches_fn=self._full_batches)
    self._plans[round_num] = plan
    return plan.tagged_ids

  def metrics(self, round_num: int) -> training.Metrics:
    plan = self._plans.pop(round_num, None)
    return plan.metrics() if plan else {}


_STRENGTH_METRIC = 'train/proximal_strength'


class _AdaptiveStrengthRounds:
  """`rounds` with FedProx's mu adapted after every round (`config.algorithm.adaptive_mu`).

  The round runs with the mu in its state (`state.client_work`, on either
  engine); the next mu (`fed_prox.AdaptiveStrength`, from the round's
  `train/loss`) is written into the state it returns, so checkpoints carry
  it. The rule's count of improvements is replayed from the metrics rows of
  the rounds before a resume.
  """

  def __init__(self, rounds, rule: fed_prox.AdaptiveStrength, history: Sequence[Mapping]):
    self._rounds = rounds
    self._rule = rule
    self._previous, self._improvements = rule.replay([row['train/loss'] for row in history])
    self._used = None

  @classmethod
  def wrap(cls, config, rounds, history):
    """`rounds` wrapped if the config adapts mu, else `rounds` itself."""
    algorithm = config.algorithm
    if not algorithm.adaptive_mu:
      return rounds
    rule = fed_prox.AdaptiveStrength(algorithm.adaptive_mu_step, algorithm.adaptive_mu_patience)
    return cls(rounds, rule, history)

  def next(self, state, clients):
    self._used = float(np.asarray(state.client_work))  # float32, as the state holds it.
    output = self._rounds.next(state, clients)
    loss = float(output.metrics['client_work']['train']['loss'])
    strength, self._improvements = self._rule.next(self._used, loss, self._previous,
                                                   self._improvements)
    self._previous = loss
    state = output.state._replace(client_work=np.float32(strength))
    return tff.learning.templates.LearningProcessOutput(state, output.metrics)

  def metrics(self, round_num: int) -> training.Metrics:
    del round_num
    return {_STRENGTH_METRIC: self._used}

  def __getattr__(self, name):  # get_model_weights, start_round, ...
    return getattr(self._rounds, name)


def _round_metrics_fn(plans: _RoundPlans, privacy: Optional[run_privacy.RunPrivacy], rounds):
  """A round's added metrics: the heterogeneity counts, mu, then the privacy spent."""
  parts = ([plans.metrics] if plans.metric_names else []) + (
      [rounds.metrics] if isinstance(rounds, _AdaptiveStrengthRounds) else []) + (
      [privacy.metrics] if privacy else [])
  if not parts:
    return None
  return lambda round_num: {k: v for part in parts for k, v in part(round_num).items()}


def _skip(row) -> None:
  del row
