"""Config-built processes: algorithm, optimizer, schedule and aggregator fields."""

import re

import pytest

import fedtff
from fedtff.runner import config as config_lib
from fedtff.runner import experiment
from fedtff import tasks


def config_for(**groups):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 12
  config.data.num_test_clients = 3
  config.clients_per_round = 4
  for group, fields in groups.items():
    config[group].update(fields)
  fedtff.runner.config.validate(config)
  return config


@pytest.fixture(scope='module')
def task():
  return tasks.build_task(config_for())


@pytest.mark.parametrize(
    'groups',
    [
        dict(algorithm=dict(name='fedadam'), server=dict(optimizer='adam', learning_rate=0.01)),
        dict(algorithm=dict(name='fedprox', proximal_strength=0.1)),
        dict(client=dict(lr_schedule='exp_decay', lr_decay_steps=5)),
        dict(algorithm=dict(name='fedavg', weighted=False),
             aggregator=dict(kind='dp', noise_multiplier=0.5, clip_norm=1.0)),
        dict(aggregator=dict(kind='robust', clip_norm=2.0, zeroing=True)),
        dict(aggregator=dict(kind='secure', clip_norm=2.0)),
        dict(algorithm=dict(weighted=False),
             aggregator=dict(kind='masking_simulation', clip_norm=2.0, masking_bits=24)),
    ],
    ids=['fedadam', 'fedprox', 'schedule', 'dp', 'robust', 'secure', 'masking_simulation'])
def test_config_builds_a_process_that_runs(groups, task):
  process = experiment.build_process(config_for(**groups), task)
  train_ids = task.train_data.client_ids[:2]
  datasets = [task.train_data.create_tf_dataset_for_client(i) for i in train_ids]
  output = process.next(process.initialize(), datasets)
  assert output.metrics['client_work']['train']['num_examples'] > 0


@pytest.mark.parametrize(
    'groups, message',
    [
        (dict(algorithm=dict(name='fedyogi'), server=dict(optimizer='sgd')),
         "needs server.optimizer='yogi', got 'sgd'"),
        (dict(algorithm=dict(name='fedavgm'), server=dict(optimizer='adam')),
         "needs server.optimizer='sgd', got 'adam'"),
        (dict(algorithm=dict(proximal_strength=0.5)), 'proximal_strength is used only by fedprox'),
        (dict(algorithm=dict(name='fedsgdx')), "algorithm.name is 'fedsgdx'; expected one of"),
        (dict(algorithm=dict(name='fedsgd'), client=dict(lr_schedule='exp_decay')),
         "^Config key client.lr_schedule is 'exp_decay' \\(with client.lr_warmup_rounds=0\\), "
         'but fedsgd takes no client learning-rate schedule; schedules combine with the FedAvg '
         'family \\(fedavg, fedavgm, fedadagrad, fedadam, fedyogi\\).$'),
        (dict(algorithm=dict(name='mimelite'), client=dict(lr_warmup_rounds=2)),
         'but mimelite takes no client learning-rate schedule'),
        (dict(aggregator=dict(kind='fedmedian')), "aggregator.kind is 'fedmedian'; expected one of"),
        (dict(client=dict(learning_rate=float('nan'))),
         '^Config key client.learning_rate must be a finite number, got nan.$'),
        (dict(server=dict(learning_rate=float('inf'))),
         '^Config key server.learning_rate must be a finite number, got inf.$'),
        (dict(aggregator=dict(clip_norm=float('-inf'))),
         '^Config key aggregator.clip_norm must be a finite number, got -inf.$'),
    ],
    ids=['server_optimizer_mismatch', 'fedavgm_needs_sgd', 'mu_without_fedprox',
         'unknown_algorithm', 'fedsgd_schedule', 'mimelite_warmup', 'unknown_aggregator',
         'nan_client_lr', 'inf_server_lr', 'inf_clip_norm'])
def test_inconsistent_configs_are_refused(groups, message):
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    config_for(**groups)


def test_auto_runs_the_compiled_engine_unless_the_config_needs_tff():
  config = config_lib.base_config()
  assert config.engine == 'auto'
  assert config_lib.engine_choice(config) == config_lib.EngineChoice('compiled', '')
  config.runtime.workers = ('localhost:8000',)
  workers = "runtime.workers needs engine='tff': the compiled engine runs on this machine only."
  assert config_lib.engine_choice(config) == config_lib.EngineChoice('tff', workers)
  config.engine = 'tff'
  assert config_lib.engine_choice(config) == config_lib.EngineChoice('tff', '')
  config.engine = 'compiled'
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(workers)}$'):
    config_lib.validate(config)


def test_jit_compile_reaches_the_compiled_engine_and_is_refused_on_tff(task):
  config = config_lib.base_config()
  assert config.jit_compile is None  # XLA when every example has one fixed shape.
  assert experiment.build_compiled_process(config, task).jit_compile
  config.jit_compile = False
  assert not experiment.build_compiled_process(config, task).jit_compile
  config.engine = 'tff'
  with pytest.raises(config_lib.ConfigError, match=r'^jit_compile=False applies to the compiled '
                     r'engine, but this config runs on TFF; leave jit_compile unset \(None\)\.$'):
    config_lib.validate(config)
  config.engine, config.runtime.workers = 'auto', ('localhost:8000',)
  with pytest.raises(config_lib.ConfigError, match=r'runs on TFF \(runtime.workers needs'):
    config_lib.validate(config)


def test_privacy_noise_seed_needs_the_run_on_the_compiled_engine():
  config = config_lib.base_config()
  config.aggregator.kind, config.aggregator.clip_norm = 'dp', 1.0
  config.aggregator.noise_multiplier, config.algorithm.weighted = 1.0, False
  config.privacy.noise_seed = 7
  config_lib.validate(config)  # 'auto' runs it on the compiled engine.
  config.runtime.workers = ('localhost:8000',)  # Now 'auto' runs TFF, which ignores the seed.
  with pytest.raises(config_lib.ConfigError, match="^Config key privacy.noise_seed must be a "
                     r"non-negative integer with engine='compiled' .* with engine='auto'\.$"):
    config_lib.validate(config)
