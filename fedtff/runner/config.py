"""The experiment config schema, and its validation.

Every experiment config is an `ml_collections.ConfigDict` that starts from
`base_config()` and overrides some fields; docs/configs.md documents each
field. `validate` rejects unknown keys, wrong types, non-finite numbers and
unknown choices with one sentence naming the key and what is allowed.

The optimizer fields whose default depends on the algorithm (`optimizer`,
`learning_rate`, `momentum` of `client` and `server`) are None ("unset") in
the schema; `resolve` fills them from `fedtff.algorithms.registry`, so
`algorithm.name` alone gives that algorithm's documented defaults and a value
the user sets always wins.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, NamedTuple, Tuple

import ml_collections

from fedtff.algorithms import aggregators
from fedtff.algorithms import attacks
from fedtff.algorithms import robust
from fedtff import models
from fedtff.algorithms import optimizers
from fedtff.runner import outputs
from fedtff.execution import runtime as runtime_lib
from fedtff import tasks
from fedtff.algorithms import builder
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.data import heterogeneity

# Where rounds run: TFF's runtime, or fedtff.compiled's one-graph rounds (docs/performance.md).
# Where the rounds run (docs/runner.md, "Choosing the engine"): 'auto' is the
# compiled engine unless the config needs what only TFF runs (`tff_only_options`).
ENGINES = ('auto', 'compiled', 'tff')
# With aggregator.kind='dp' (docs/privacy.md): the mechanism, how rounds sample
# clients and which accountant reports epsilon.
PRIVACY_MECHANISMS = ('dp_fedavg', 'dp_ftrl', 'ddp_skellam')
PRIVACY_SAMPLINGS = ('fixed', 'poisson', 'cyclic')
PRIVACY_ACCOUNTANTS = ('rdp', 'pld')
# Where a stateful algorithm's per-client states live (fedtff.runner.client_states):
# 'auto' keeps them in memory up to 1 GiB, on disk beyond.
CLIENT_STATES = ('auto', 'memory', 'disk')

_CHOICES = {
    'data.dataset': tasks.DATASETS,
    'data.partition': tasks.PARTITIONS,
    'data.class_assignment': tasks.CLASS_ASSIGNMENTS,
    'data.group_mode': tasks.GROUP_MODES,
    'model.name': models.MODEL_NAMES,
    'algorithm.name': builder.ALGORITHMS,
    'client.optimizer': optimizers.OPTIMIZER_NAMES,
    'client.lr_schedule': schedules.SCHEDULES,
    'server.optimizer': optimizers.OPTIMIZER_NAMES,
    'aggregator.kind': aggregators.KINDS,
    'attack.kind': attacks.KINDS,
    'engine': ENGINES,
    'data.feed': tasks.FEEDS,
    'privacy.mechanism': PRIVACY_MECHANISMS,
    'privacy.sampling': PRIVACY_SAMPLINGS,
    'privacy.accountant': PRIVACY_ACCOUNTANTS,
    'algorithm.client_states': CLIENT_STATES,
    'heterogeneity.straggler_policy': heterogeneity.POLICIES,
}


# Keys that are true, false or None (unset).
_OPTIONAL_BOOLS = frozenset({'jit_compile'})

# Integer keys with a lower bound (a seed is a NumPy seed: non-negative).
_MINIMUMS = {'total_rounds': 1, 'clients_per_round': 1, 'rounds_per_eval': 1,
             'rounds_per_checkpoint': 1, 'seed': 0, 'data.num_test_clients': 0}


class ConfigError(ValueError):
  """An experiment config that does not fit the schema."""


def base_config() -> ml_collections.ConfigDict:
  """Returns the schema with its defaults; config files override fields."""
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(dict(
      dataset='digits', path='', num_clients=60, num_test_clients=10, test_fraction=0.0,
      partition='dirichlet', dirichlet_alpha=0.5, shards_per_client=2, quantity_sigma=1.0,
      synthetic_alpha=1.0, synthetic_beta=1.0, num_classes=0,
      batch_size=10, client_epochs=1, shuffle_buffer=100, max_elements=0,
      drop_remainder=False, weight_decay=0.0,
      cache_dir='', allow_download=False, synthetic_standin=False, max_test_clients=0,
      eval_batch_size=0, sequence_length=0, vocab_size=10000, feed='auto', feed_dir=''))
  # dropout=False leaves out a built-in model's dropout layers (emnist_cnn's): the
  # differential harness compares the engines with it off (fedtff.compiled.differential).
  config.model = ml_collections.ConfigDict(dict(name='mlp', hidden_units=(64,), dropout=True))
  config.algorithm = ml_collections.ConfigDict(dict(
      name='fedavg', weighted=True, proximal_strength=0.0,
      # fedprox: adapt mu after every round from the round's train/loss (Li et al.,
      # Appendix C.3.3, as pfl-research; fedtff.algorithms.fed_prox.AdaptiveStrength).
      adaptive_mu=False, adaptive_mu_step=0.1, adaptive_mu_patience=5))
  config.algorithm.q = _optional_float()  # q-FedAvg's q >= 0, required by (only) qfedavg.
  # Ditto's λ >= 0 (Li et al., ICML 2021), required by (only) ditto.
  config.algorithm.ditto_lambda = _optional_float()
  config.client = _optimizer_group()
  config.client.update(dict(lr_schedule='constant', lr_decay_rate=0.1, lr_decay_steps=1000,
                            lr_staircase=False, lr_warmup_rounds=0))
  config.server = _optimizer_group()
  config.aggregator = ml_collections.ConfigDict(dict(
      kind='mean', clip_norm=_optional_float(), zeroing=False, zeroing_norm=_optional_float(),
      quantization_bits=8, quantization_threshold=20000, noise_multiplier=_optional_float(),
      masking_bits=aggregators.DEFAULT_MASKING_BITS,
      target_unclipped_quantile=0.5, clipped_count_stddev=_optional_float(),
      trim_fraction=0.1, byzantine_clients=1, krum_selected=0, rfa_iterations=3,
      rfa_smoothing=1e-6))
  # A simulated attack on a fraction of each round's clients (fedtff.algorithms.attacks).
  config.attack = ml_collections.ConfigDict(dict(kind='none', fraction=0.0,
                                                 scale=_optional_float()))
  config.privacy = ml_collections.ConfigDict(dict(
      target_epsilon=_optional_float(), delta=_optional_float(), mechanism='dp_fedavg',
      sampling='fixed', accountant='rdp',
      noise_seed=ml_collections.FieldReference(None, field_type=int),
      publish_client_metrics=False,
      ddp_bits=ml_collections.FieldReference(None, field_type=int)))
  # Systems heterogeneity (fedtff.data.heterogeneity; Li et al. 2020, Section 5.2):
  # the share of each round's clients that straggle (train on a random number of
  # their batches) and that never report; 'auto' keeps a straggler's partial work
  # for fedprox and fednova and drops the straggler for the other algorithms.
  config.heterogeneity = ml_collections.ConfigDict(dict(
      straggler_fraction=0.0, dropout_fraction=0.0, straggler_policy='auto'))
  config.total_rounds = 10
  config.clients_per_round = 10
  config.rounds_per_eval = 1
  # Log each eval metric's distribution over the test clients (fedtff.runner.client_metrics).
  config.per_client_eval = False
  config.rounds_per_checkpoint = 10
  config.seed = 0
  config.output = ml_collections.ConfigDict(dict(tensorboard=True, checkpoints_to_keep=2))
  # Early stopping on one metric (fedtff.runner.callbacks): at a target, or on a plateau.
  config.stop = ml_collections.ConfigDict(dict(
      metric='', target=_optional_float(), patience=0, min_delta=0.0, mode='auto'))
  config.engine = 'auto'
  # The compiled engine's XLA compilation (fedtff.compiled.build_compiled_process's
  # jit_compile): None compiles when every example has one fixed shape.
  config.jit_compile = ml_collections.FieldReference(None, field_type=bool)
  # TFF workers ('host:port', see fedtff.execution.distributed); empty runs on this machine.
  # Sites that own their data ('name=host:port', see fedtff.execution.sites and
  # docs/cross_silo.md): the clients are the sites' and each round's are routed to them.
  # With sites: `credentials`, the trainer's credentials directory (mutual TLS, written by
  # `python -m fedtff.execution.certs`; '' connects in plain text, for tests on one
  # machine only), and `secure_aggregation`, the sites' pairwise masks on the model
  # update's mean (fedtff.execution.secagg; it needs credentials).
  config.runtime = ml_collections.ConfigDict(dict(
      workers=(), connect_timeout_s=30.0, sites=(), credentials='', secure_aggregation=True))
  # Your own model, data and algorithm by import path 'module:name' ('' = built in;
  # fedtff.runner.user_task): they replace model.name, data.dataset and algorithm.name.
  config.model.update(dict(factory='', loss='', metrics=''))
  config.data.update(dict(source='', preprocess=''))
  # Parameters of the Flower-parity partitions (docs/data.md, "Partitioners").
  config.data.update(dict(classes_per_client=2, class_assignment='random', client_sizes=(),
                          class_distribution=(), strictness=0.5, group_size=2,
                          group_mode='allow-smaller', dirichlet_self_balancing=False,
                          dirichlet_min_examples=1))
  config.algorithm.process = ''
  # SCAFFOLD's per-client control variates: 'auto', 'memory' or 'disk' (CLIENT_STATES).
  config.algorithm.client_states = 'auto'
  return config


def _optional_float() -> ml_collections.FieldReference:
  """A float field that is `None` (meaning "adaptive" or "unset") by default."""
  return ml_collections.FieldReference(None, field_type=float)


def _optimizer_group() -> ml_collections.ConfigDict:
  """Optimizer name and hyperparameters; unused ones are ignored (docs/configs.md).

  `optimizer`, `learning_rate` and `momentum` are unset (None) until `resolve`
  fills them with the algorithm's defaults (`fedtff.algorithms.registry`).
  """
  return ml_collections.ConfigDict(dict(
      optimizer=ml_collections.FieldReference(None, field_type=str),
      learning_rate=_optional_float(), momentum=_optional_float(),
      **optimizers.ADAPTIVE_DEFAULTS['yogi']))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose unset optimizer fields hold the algorithm's defaults.

  The one place a config's algorithm defaults come from: the `client` and
  `server` fields left None take `fedtff.algorithms.registry`'s values for
  `algorithm.name` (`registry.resolve_group`); fields the config sets are
  kept. Resolving a resolved config changes nothing.
  """
  resolved = config.copy_and_resolve_references()
  for role in ('client', 'server'):
    group = registry.resolve_group(config.algorithm.name, role, config[role].to_dict())
    for key in ('optimizer', 'learning_rate', 'momentum'):
      resolved[role][key] = group[key]
  return resolved


class EngineChoice(NamedTuple):
  """The engine a run uses (`name`: 'compiled' or 'tff') and, when 'auto' chose TFF, why."""
  name: str
  reason: str = ''


def tff_only_options(config: Mapping[str, Any]) -> List[str]:
  """What `config` asks for that only the TFF engine runs, one refusal sentence each.

  The one list of the compiled engine's gaps that a config shows (a model
  whose examples it cannot pad is found when it is built): `engine='compiled'`
  refuses the first, and `engine='auto'` runs TFF because of it.
  """
  options = []
  if config['runtime']['workers']:
    options.append("runtime.workers needs engine='tff': the compiled engine runs on this "
                   'machine only.')
  if config['runtime']['sites']:
    options.append("runtime.sites needs engine='tff': the compiled engine runs on this "
                   'machine only, and the sites hold the data.')
  if config['algorithm']['process']:
    options.append("engine='compiled' compiles fedtff's own algorithms only; run a user's "
                   "learning process (algorithm.process) with engine='tff'.")
  return options


def engine_choice(config: Mapping[str, Any]) -> EngineChoice:
  """The engine `config.engine` names: 'auto' is 'compiled' unless `tff_only_options`."""
  if config['engine'] != 'auto':
    return EngineChoice(config['engine'])
  options = tff_only_options(config)
  return EngineChoice('tff', options[0]) if options else EngineChoice('compiled')


def check_engine(config: Mapping[str, Any]) -> None:
  """Refuses `engine='compiled'` with an option only TFF runs (`tff_only_options`), and
  `jit_compile` set for a run on TFF."""
  options = tff_only_options(config)
  if config['engine'] == 'compiled' and options:
    raise ConfigError(options[0])
  choice = engine_choice(config)
  if config['jit_compile'] is not None and choice.name == 'tff':
    reason = f' ({choice.reason})' if choice.reason else ''
    raise ConfigError(f"jit_compile={config['jit_compile']} applies to the compiled engine, but "
                      f"this config runs on TFF{reason}; leave jit_compile unset (None).")


def leaves(config: Mapping[str, Any], prefix: str = '') -> Iterator[Tuple[str, Any]]:
  for key, value in config.items():
    if isinstance(value, Mapping):
      yield from leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _type_name(value: Any) -> str:
  return 'number' if isinstance(value, float) else type(value).__name__


def _check_type(key: str, value: Any, default: Any) -> None:
  if default is None and key in _CHOICES:
    ok = value is None or isinstance(value, str)
  elif key in _OPTIONAL_BOOLS:
    ok = value is None or isinstance(value, bool)
  elif default is None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
  elif isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(value, bool) and isinstance(default, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float))
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(
        f'Config key {key} must be '
        f'{describe_type(key) if default is None else "a " + _type_name(default)}, got {value!r}.')


@functools.lru_cache(maxsize=None)
def _schema_items() -> Tuple[Tuple[str, Any], ...]:
  return tuple(leaves(base_config().to_dict()))


def schema_defaults() -> Dict[str, Any]:
  """Every dotted schema key with its default, e.g. {'data.batch_size': 10, ...}."""
  return dict(_schema_items())


@functools.lru_cache(maxsize=None)
def _schema_keys_and_groups() -> FrozenSet[str]:
  """Every dotted schema key and the group holding each, e.g. 'data.batch_size', 'data'."""
  keys = {key for key, _ in _schema_items()}
  return frozenset(keys | {key.rpartition('.')[0] for key in keys})


def check_key(key: str) -> None:
  """Raises `ConfigError` if the dotted `key` is not in the schema."""
  if key in _schema_keys_and_groups():
    return
  schema = schema_defaults()
  parent = key.rpartition('.')[0]
  siblings = sorted(k for k in schema if k.rpartition('.')[0] == parent) or sorted(
      {k.partition('.')[0] for k in schema})
  raise ConfigError(f'Unknown config key {key}; valid keys here are: {", ".join(siblings)}.')


def takes_string(key: str) -> bool:
  """Whether the schema's `key` holds a string, set or not (e.g. server.optimizer)."""
  default = schema_defaults()[key]
  return isinstance(default, str) or (default is None and key in _CHOICES)


def describe_type(key: str) -> str:
  """What kind of value the schema's `key` takes, e.g. 'an integer'."""
  default = schema_defaults()[key]
  if key in _OPTIONAL_BOOLS:
    return 'true, false or None'
  if default is None:
    return 'a string or None' if key in _CHOICES else 'a number or None'
  if isinstance(default, bool):
    return 'true or false'
  if key == 'runtime.sites':
    return 'a tuple of quoted \'name=host:port\' strings such as "(\'alice=host1:8000\',)"'
  if key == 'runtime.workers':
    return 'a tuple of quoted \'host:port\' strings such as "(\'host1:8000\',\'host2:8000\')"'
  if isinstance(default, (tuple, list)):
    return 'a tuple such as (64, 32)'
  return {int: 'an integer', float: 'a number', str: 'a string'}[type(default)]


def validate(config: Any) -> None:
  """Raises `ConfigError` naming the first key that does not fit the schema."""
  schema = schema_defaults()
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  for key, value in leaves(config):
    check_key(key)
    _check_type(key, value, schema[key])
    _check_finite(key, value)
    if key == 'aggregator.kind' and value in aggregators.RENAMED_KINDS:
      raise ConfigError(f'Config key {key}: {aggregators.renamed_kind_message(value)}')
    if key in _CHOICES and value not in _CHOICES[key] and not (
        value is None and schema[key] is None):
      raise ConfigError(
          f'Config key {key} is {value!r}; expected one of: {", ".join(_CHOICES[key])}.')
  for key, minimum in _MINIMUMS.items():
    group, _, field = key.rpartition('.')
    value = config[group][field] if group else config[field]
    if value < minimum:
      raise ConfigError(f'Config key {key} must be at least {minimum}, got {value}.')
  _check_test_clients(config['data'])
  _check_run_directory_options(config)
  _check_algorithm(config['algorithm'], registry.resolve_group(
      config['algorithm']['name'], 'server', config['server']), config['client'])
  _check_q_fed_avg(config)
  _check_privacy(config)
  _check_stateful_clients(config)  # Before the attack checks: SCAFFOLD refuses any attack.
  _check_robust(config)
  _check_heterogeneity(config)
  _check_stop(config)
  check_engine(config)
  _check_runtime(config['runtime'])
  _check_site_options(config)


def _check_finite(key: str, value: Any) -> None:
  for item in value if isinstance(value, (tuple, list)) else (value,):
    if isinstance(item, float) and not math.isfinite(item):
      raise ConfigError(f'Config key {key} must be a finite number, got {item}.')


def _check_run_directory_options(config: Mapping[str, Any]) -> None:
  keep = config['output']['checkpoints_to_keep']
  if keep < 0:
    raise ConfigError(f'Config key output.checkpoints_to_keep must be 0 (keep every checkpoint) '
                      f'or a positive number of newest checkpoints to keep, got {keep}.')
  data = config['data']
  if data['num_test_clients'] and data['test_fraction']:
    raise ConfigError('Config keys data.num_test_clients and data.test_fraction are both set; '
                      'evaluate on held-out clients or on a held-out share of each client, '
                      'and set the other to 0.')


def _check_test_clients(data: Mapping[str, Any]) -> None:
  """Held-out clients must leave one to train on; digits has data.num_clients clients.

  Datasets whose client count comes from the data are checked when loaded
  (fedtff.tasks), with the same sentence.
  """
  if data['dataset'] == 'digits':
    try:
      tasks.check_num_test_clients(data['num_test_clients'], data['num_clients'])
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _check_stop(config: Mapping[str, Any]) -> None:
  """`stop.*` (fedtff.runner.callbacks): a metric with a known direction, and a target or a patience."""
  stop = config['stop']
  metric, used = stop['metric'], stop['target'] is not None or stop['patience'] != 0
  if stop['patience'] < 0 or stop['min_delta'] < 0:
    key = 'stop.patience' if stop['patience'] < 0 else 'stop.min_delta'
    raise ConfigError(f'Config key {key} must be at least 0, got {stop[key.partition(".")[2]]}.')
  if stop['mode'] not in outputs.DIRECTION_MODES:
    raise ConfigError(f"Config key stop.mode is {stop['mode']!r}; expected one of: "
                      f'{", ".join(outputs.DIRECTION_MODES)}.')
  if used and not metric:
    raise ConfigError("stop.target and stop.patience need stop.metric, e.g. "
                      "stop.metric='eval/accuracy'.")
  if not metric:
    return
  if not used:
    raise ConfigError(f'stop.metric={metric!r} needs stop.target (stop when it is reached) or '
                      'stop.patience (stop on a plateau).')
  if metric.partition('/')[0] not in ('train', 'eval') or not metric.partition('/')[2]:
    raise ConfigError(f"Config key stop.metric must be a metrics column 'train/<name>' or "
                      f"'eval/<name>', e.g. 'eval/accuracy', got {metric!r}.")
  if outputs.direction(metric, stop['mode']) is None:
    raise ConfigError(f'Config key stop.metric is {metric!r}, whose better direction fedtff '
                      "does not know; set stop.mode='max' or 'min'.")
  if (metric.startswith('train/') and config['aggregator']['kind'] == 'dp'
      and not config['privacy']['publish_client_metrics']):
    raise ConfigError(f'stop.metric={metric!r} would stop a DP run on the client metrics it '
                      'withholds (privacy.publish_client_metrics=False); stop on an eval/ metric.')


def _check_runtime(runtime: Mapping[str, Any]) -> None:
  if runtime['workers']:
    try:
      runtime_lib.check_workers(runtime['workers'])
    except ValueError as e:
      raise ConfigError(f'Config key runtime.workers: {e}') from None
  _check_sites(runtime)
  if not runtime['connect_timeout_s'] > 0:
    raise ConfigError(f'Config key runtime.connect_timeout_s must be positive, got '
                      f"{runtime['connect_timeout_s']!r}.")


def _check_sites(runtime: Mapping[str, Any]) -> None:
  """`runtime.sites`: 'name=host:port' each, and not with `runtime.workers`."""
  if not runtime.get('sites'):
    return
  if runtime['workers']:
    raise ConfigError('Config keys runtime.sites and runtime.workers are both set; the sites '
                      'run the rounds on their own data, so leave runtime.workers empty.')
  try:
    runtime_lib.parse_sites(runtime['sites'])
  except ValueError as e:
    raise ConfigError(f'Config key runtime.sites: {e}') from None
  if runtime['credentials'] and not os.path.isdir(runtime['credentials']):
    raise ConfigError(f"Config key runtime.credentials: {runtime['credentials']!r} is not a "
                      'directory; expected the trainer\'s credentials directory (python -m '
                      'fedtff.execution.certs writes one, docs/cross_silo.md).')
  if runtime['secure_aggregation'] and not runtime['credentials']:
    raise ConfigError('Config key runtime.secure_aggregation needs runtime.credentials (the '
                      "sites sign their key-agreement keys with their TLS keys); set "
                      'runtime.credentials to the trainer\'s credentials directory, or '
                      'runtime.secure_aggregation=False for plain-text sites on one machine.')


# The algorithms whose clients send the server nothing but the model update and
# their metrics: secure aggregation masks the update (metrics stay in the clear,
# docs/cross_silo.md). Mime Lite's full gradients, SCAFFOLD's control variates and
# the others' extra sums would leave each site's share visible.
_MASKED_ALGORITHMS = ('fedavg', 'fedprox', 'fedsgd')


def _check_site_options(config: Mapping[str, Any]) -> None:
  """What needs client data on the trainer, which `runtime.sites` does not give it."""
  if not config['runtime'].get('sites'):
    return
  if config['heterogeneity']['straggler_fraction']:
    raise ConfigError('heterogeneity.straggler_fraction does not combine with runtime.sites: a '
                      "straggler's cut needs its batch count, read from its data on the trainer; "
                      'set it to 0.')
  if config['runtime']['secure_aggregation'] and (
      config['algorithm']['name'] not in _MASKED_ALGORITHMS):
    raise ConfigError('Config key runtime.secure_aggregation masks the model update, the only '
                      f"aggregate of {', '.join(_MASKED_ALGORITHMS)}; algorithm.name="
                      f"{config['algorithm']['name']!r} aggregates more, in the clear. Use one "
                      'of those, or runtime.secure_aggregation=False.')
  if config['runtime']['secure_aggregation'] and (
      config['aggregator']['kind'] != 'mean' or not config['algorithm']['weighted']):
    raise ConfigError('Config key runtime.secure_aggregation masks the weighted mean only, got '
                      f"aggregator.kind={config['aggregator']['kind']!r}, algorithm.weighted="
                      f"{config['algorithm']['weighted']!r}; use aggregator.kind='mean' with "
                      'algorithm.weighted=True, or runtime.secure_aggregation=False.')
  if config['data']['source'] or config['data']['dataset'] in tasks.HOSTED_DATASETS:
    raise ConfigError('runtime.sites takes the clients of an array dataset (digits, '
                      f"synthetic_fedprox, synthetic_iid, npz_dir), got data.dataset="
                      f"{config['data']['dataset']!r}{' with data.source' if config['data']['source'] else ''}.")


def _check_algorithm(algorithm: Mapping[str, Any], server: Mapping[str, Any],
                     client: Mapping[str, Any]) -> None:
  name = algorithm['name']
  scheduled = client['lr_schedule'] != 'constant' or client['lr_warmup_rounds'] > 0
  if scheduled and not registry.get(name).schedules:
    family = ', '.join(spec.name for spec in registry.REGISTRY.values() if spec.schedules)
    raise ConfigError(f'Config key client.lr_schedule is {client["lr_schedule"]!r} (with '
                      f'client.lr_warmup_rounds={client["lr_warmup_rounds"]}), but {name} takes '
                      f'no client learning-rate schedule; schedules combine with the FedAvg '
                      f'family ({family}).')
  if algorithm['adaptive_mu'] and name != 'fedprox':
    raise ConfigError(f'Config key algorithm.adaptive_mu adapts fedprox\'s mu, but '
                      f'algorithm.name is {name!r}.')
  if not (algorithm['adaptive_mu_step'] > 0 and algorithm['adaptive_mu_patience'] >= 1):
    raise ConfigError('Config keys algorithm.adaptive_mu_step and adaptive_mu_patience must be '
                      f"positive, got {algorithm['adaptive_mu_step']} and "
                      f"{algorithm['adaptive_mu_patience']}.")
  if name != 'fedprox' and algorithm['proximal_strength']:
    raise ConfigError(f'Config key algorithm.proximal_strength is used only by fedprox, '
                      f'but algorithm.name is {name!r}.')
  expected = registry.get(name).server_family
  if expected and server['optimizer'] != expected:
    raise ConfigError(f'algorithm.name {name!r} needs server.optimizer={expected!r}, '
                      f'got {server["optimizer"]!r}.')


def _check_stateful_clients(config: Mapping[str, Any]) -> None:
  """SCAFFOLD's and Ditto's refusals: what would mis-account their client states, or is untested."""
  name = config['algorithm']['name']
  _check_ditto_lambda(config['algorithm'])
  if not registry.get(name).stateful_clients:
    return
  what = {'scaffold': 'control variates', 'ditto': 'personal models'}.get(name, 'client states')
  if config['aggregator']['kind'] != 'mean':
    reason = ('its control variates would bypass a DP, robust or compressing aggregator of the '
              'model deltas' if name == 'scaffold' else
              'its DP and robust variants are not built (the personal models would escape them)')
    raise ConfigError(f"{name} takes aggregator.kind='mean' only, got "
                      f"{config['aggregator']['kind']!r}: {reason}.")
  client = registry.resolve_group(name, 'client', config['client'])
  if client['optimizer'] != 'sgd' or client['momentum']:
    reason = ('option II divides by K·η_l' if name == 'scaffold' else
              'its personal step is v ← v − η(∇F_k(v) + λ(v − w))')
    raise ConfigError(f"{name} needs client.optimizer='sgd' with client.momentum=0 ({reason}), "
                      f"got {client['optimizer']!r} with momentum {client['momentum']}.")
  attack = config.get('attack', {}).get('kind', 'none')  # attack.*: fedtff.algorithms.attacks.
  if attack != 'none':
    raise ConfigError(f"{name} takes no attack.kind (got {attack!r}): its rounds aggregate with "
                      'their own mean, so the attack would be skipped; use attack.kind=\'none\'.')
  if config['runtime']['workers'] or config['runtime'].get('sites'):
    raise ConfigError(f'{name} keeps its clients\' {what} on this machine; '
                      'runtime.workers and runtime.sites are not supported with it (leave them '
                      'empty).')
  if config['algorithm']['process']:
    raise ConfigError(f'algorithm.process replaces algorithm.name; {name} is not used with it.')


def _check_ditto_lambda(algorithm: Mapping[str, Any]) -> None:
  """Ditto's λ >= 0: required by ditto, refused by every other algorithm."""
  value = algorithm.get('ditto_lambda')
  if algorithm['name'] != 'ditto':
    if value is not None:
      raise ConfigError('Config key algorithm.ditto_lambda is used only by ditto, but '
                        f"algorithm.name is {algorithm['name']!r}.")
    return
  if value is None or not value >= 0:
    raise ConfigError(f'Config key algorithm.ditto_lambda must be set to λ >= 0 for ditto, got '
                      f'{value!r}.')


def _check_q_fed_avg(config: Mapping[str, Any]) -> None:
  """q-FedAvg (Li et al., ICLR 2020): q >= 0 required by it alone; plain SGD
  clients (L = 1/eta); the paper's server step (sgd 1.0); its own weights, mean."""
  algorithm, client, aggregator = config['algorithm'], config['client'], config['aggregator']
  server = registry.resolve_group(algorithm['name'], 'server', config['server'])
  if algorithm['name'] != 'qfedavg':
    if algorithm['q'] is not None:
      raise ConfigError(f"Config key algorithm.q is used only by qfedavg, but algorithm.name is "
                        f"{algorithm['name']!r}.")
    return
  if algorithm['q'] is None or not algorithm['q'] >= 0:
    raise ConfigError(f"Config key algorithm.q must be set to q >= 0 for qfedavg, got "
                      f"{algorithm['q']!r}.")
  if client['optimizer'] not in (None, 'sgd') or client['momentum']:
    raise ConfigError('qfedavg needs client.optimizer=\'sgd\' without momentum (L = 1/eta '
                      f"assumes SGD), got {client['optimizer']!r} momentum {client['momentum']!r}.")
  if server['learning_rate'] != 1.0 or server['momentum']:
    raise ConfigError("qfedavg's server step is w - sum(Delta)/sum(h): server.learning_rate must "
                      f"be 1.0 without momentum, got {server['learning_rate']!r} momentum "
                      f"{server['momentum']!r}.")
  if not algorithm['weighted']:
    raise ConfigError('qfedavg weights each client by its h_k; drop algorithm.weighted=False.')
  if aggregator['kind'] != 'mean':
    raise ConfigError(f"qfedavg needs aggregator.kind='mean' (its own weights h_k), got "
                      f"{aggregator['kind']!r}.")


def _check_heterogeneity(config: Mapping[str, Any]) -> None:
  """`heterogeneity.*`: fractions in range; not with DP (its accounting counts every sampled client)."""
  group = config['heterogeneity']
  for key, upper, closed in (('straggler_fraction', 1.0, True), ('dropout_fraction', 1.0, False)):
    value = group[key]
    if not (0.0 <= value <= upper if closed else 0.0 <= value < upper):
      raise ConfigError(f'Config key heterogeneity.{key} must be in '
                        f'[0, 1{"]" if closed else ")"}, got {value}.')
  if (group['straggler_fraction'] or group['dropout_fraction']) and (
      config['aggregator']['kind'] == 'dp'):
    raise ConfigError("heterogeneity.straggler_fraction and heterogeneity.dropout_fraction do "
                      "not combine with aggregator.kind='dp': its accounting assumes every "
                      'sampled client reports; set both to 0.')


def _check_privacy(config: Mapping[str, Any]) -> None:
  aggregator, privacy = config['aggregator'], config['privacy']
  _check_clipped_count_stddev(aggregator, config['clients_per_round'])
  _check_masking(aggregator, config['clients_per_round'])
  if privacy['ddp_bits'] is not None and (aggregator['kind'], privacy['mechanism']) != (
      'dp', 'ddp_skellam'):
    raise ConfigError("Config key privacy.ddp_bits needs aggregator.kind='dp' with "
                      f"privacy.mechanism='ddp_skellam', got kind={aggregator['kind']!r}, "
                      f"mechanism={privacy['mechanism']!r}.")
  if aggregator['kind'] != 'dp':
    if any(privacy[k] is not None for k in ('target_epsilon', 'delta', 'noise_seed')):
      raise ConfigError("privacy.target_epsilon, privacy.delta and privacy.noise_seed need "
                        "aggregator.kind='dp'.")
    if (privacy['mechanism'], privacy['sampling'], privacy['accountant']) != (
        'dp_fedavg', 'fixed', 'rdp'):
      raise ConfigError("privacy.mechanism, privacy.sampling and privacy.accountant need "
                        "aggregator.kind='dp'.")
    return
  seed = privacy['noise_seed']
  if seed is not None and (engine_choice(config).name != 'compiled' or not isinstance(seed, int)
                           or seed < 0):
    raise ConfigError(f"Config key privacy.noise_seed must be a non-negative integer with "
                      f"engine='compiled' (TFF's DP aggregator draws its own noise), got {seed!r} "
                      f"with engine={config['engine']!r}.")
  if config['algorithm']['weighted']:
    raise ConfigError("aggregator.kind='dp' needs algorithm.weighted=False: DP-FedAvg's noise is "
                      'calibrated to unweighted averaging.')
  if (aggregator['noise_multiplier'] is None) == (privacy['target_epsilon'] is None):
    raise ConfigError("aggregator.kind='dp' needs exactly one of aggregator.noise_multiplier and "
                      'privacy.target_epsilon.')
  _check_privacy_mechanism(config)


def _check_privacy_mechanism(config: Mapping[str, Any]) -> None:
  privacy = config['privacy']
  mechanism, sampling = privacy['mechanism'], privacy['sampling']
  _check_ddp(config)
  if privacy['accountant'] == 'pld' and sampling != 'poisson':
    raise ConfigError("privacy.accountant='pld' needs privacy.sampling='poisson': "
                      "dp_accounting's PLD accountant has no fixed-size or cyclic sampling.")
  if (mechanism == 'dp_ftrl') != (sampling == 'cyclic'):
    raise ConfigError("privacy.mechanism='dp_ftrl' goes with privacy.sampling='cyclic' and only "
                      f"with it (got mechanism={mechanism!r}, sampling={sampling!r}): DP-FTRL's "
                      'accounting bounds how often and how close together a client joins.')
  if mechanism == 'dp_ftrl':
    if privacy['noise_seed'] is not None:
      raise ConfigError("privacy.noise_seed does not apply to privacy.mechanism='dp_ftrl': the "
                        "tree's noise seeds are drawn when its state is created and kept in it.")
    if privacy['accountant'] != 'rdp':
      raise ConfigError("privacy.mechanism='dp_ftrl' is accounted with privacy.accountant='rdp'.")
    if config['aggregator']['clip_norm'] is None:
      raise ConfigError("privacy.mechanism='dp_ftrl' needs a fixed aggregator.clip_norm.")


def _check_ddp(config: Mapping[str, Any]) -> None:
  """`privacy.mechanism='ddp_skellam'`: fixed sampling, RDP, fixed clip, no zeroing."""
  privacy, aggregator = config['privacy'], config['aggregator']
  bits = privacy['ddp_bits']
  if privacy['mechanism'] != 'ddp_skellam':
    return
  from fedtff.privacy import ddp  # pylint: disable=g-import-not-at-top
  if privacy['sampling'] != 'fixed':
    raise ConfigError("privacy.mechanism='ddp_skellam' needs privacy.sampling='fixed': the noise "
                      f"shares add up to the accounted noise only with exactly clients_per_round "
                      f"clients (got sampling={privacy['sampling']!r}).")
  if privacy['accountant'] != 'rdp':
    raise ConfigError("privacy.mechanism='ddp_skellam' is accounted with privacy.accountant='rdp' "
                      "(Agarwal et al.'s Skellam RDP bound).")
  if aggregator['clip_norm'] is None:
    raise ConfigError("privacy.mechanism='ddp_skellam' needs a fixed aggregator.clip_norm: TFF's "
                      'adaptive clip (auto_l2_clip) is not accounted.')
  if aggregator['zeroing'] or aggregator['zeroing_norm'] is not None:
    raise ConfigError("privacy.mechanism='ddp_skellam' refuses aggregator.zeroing and "
                      "aggregator.zeroing_norm: TFF's adaptive zeroing estimates its threshold "
                      'without noise.')
  if bits is not None and not ddp.MIN_BITS <= bits <= ddp.MAX_BITS:
    raise ConfigError(f'Config key privacy.ddp_bits must be an integer from '
                      f'{ddp.MIN_BITS} to {ddp.MAX_BITS}, got {bits!r}.')
  try:
    ddp.check_bits(ddp.DEFAULT_BITS if bits is None else bits, config['clients_per_round'])
  except ValueError as e:
    raise ConfigError(f'Config key privacy.ddp_bits: {e}') from None


# Built-in datasets whose labels are class ids (label flipping maps y to C - 1 - y).
LABEL_FLIPPING_DATASETS = ('digits', 'synthetic_fedprox', 'synthetic_iid', 'npz_dir')


def _check_robust(config: Mapping[str, Any]) -> None:
  """The robust aggregators' and the attacks' options (docs/configs.md)."""
  aggregator, attack = config['aggregator'], config['attack']
  try:
    spec = attacks.AttackSpec(attack['kind'], attack['fraction'], attack['scale'])
    rule = robust.Rule(aggregator['kind'] if aggregator['kind'] in robust.RULES else 'mean',
                       **{key: aggregator[key] for key in robust.OPTIONS})
  except ValueError as e:
    raise ConfigError(f'Config keys attack.* / aggregator.*: {e}') from None
  gathered = aggregator['kind'] in robust.RULES or spec.on_updates
  if gathered and config['algorithm']['weighted']:
    raise ConfigError(f"aggregator.kind={aggregator['kind']!r} with attack.kind="
                      f"{attack['kind']!r} aggregates unweighted updates; set "
                      'algorithm.weighted=False.')
  if spec.on_updates and aggregator['kind'] not in robust.RULES + ('mean',):
    raise ConfigError(f"attack.kind={attack['kind']!r} runs with aggregator.kind 'mean' or one of "
                      f"{', '.join(robust.RULES)}, got {aggregator['kind']!r}.")
  if gathered and config['clients_per_round'] < rule.min_clients():
    raise ConfigError(f"aggregator.kind={aggregator['kind']!r} needs clients_per_round of at "
                      f'least {rule.min_clients()} with aggregator.byzantine_clients='
                      f"{aggregator['byzantine_clients']}, got {config['clients_per_round']}.")
  if attack['kind'] == 'label_flipping' and (
      config['data']['dataset'] not in LABEL_FLIPPING_DATASETS or config['data']['source']):
    raise ConfigError("attack.kind='label_flipping' needs a built-in classification dataset "
                      f"({', '.join(LABEL_FLIPPING_DATASETS)}), got data.dataset="
                      f"{config['data']['dataset']!r}{' with data.source' if config['data']['source'] else ''}.")


def _check_clipped_count_stddev(aggregator: Mapping[str, Any], clients_per_round: int) -> None:
  stddev = aggregator['clipped_count_stddev']
  if stddev is None:
    return
  if aggregator['kind'] != 'dp' or aggregator['clip_norm'] is not None:
    raise ConfigError("Config key aggregator.clipped_count_stddev needs aggregator.kind='dp' with "
                      'adaptive clipping (aggregator.clip_norm None).')
  if aggregator['noise_multiplier'] is not None:
    from fedtff.privacy import mechanisms  # pylint: disable=g-import-not-at-top
    try:
      mechanisms.adaptive_noise_split(aggregator['noise_multiplier'], clients_per_round, stddev)
    except ValueError as e:
      raise ConfigError(f'Config key aggregator.clipped_count_stddev: {e}') from None


def _check_masking(aggregator: Mapping[str, Any], clients_per_round: int) -> None:
  if aggregator['kind'] != 'masking_simulation':
    return
  if aggregator['clip_norm'] is None:
    raise ConfigError("aggregator.kind='masking_simulation' needs aggregator.clip_norm.")
  from fedtff.privacy import masking_simulation  # pylint: disable=g-import-not-at-top
  try:  # The model-size check runs when the process is built.
    masking_simulation.MaskingSimulationSumFactory(
        aggregator['clip_norm'], clients_per_round, bits=aggregator['masking_bits'])
  except ValueError as e:
    raise ConfigError(f'Config key aggregator.masking_bits: {e}') from None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list:
  """`key: old -> new` for every leaf that differs between two config dicts."""
  old_leaves, new_leaves = dict(leaves(old)), dict(leaves(new))
  return [f'{key}: {old_leaves.get(key)!r} -> {new_leaves.get(key)!r}'
          for key in sorted(set(old_leaves) | set(new_leaves))
          if old_leaves.get(key) != new_leaves.get(key)]


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config (`resolve`) as indented JSON (tuples become lists)."""
  return json.dumps(resolve(config).to_dict(), indent=2, sort_keys=True)
