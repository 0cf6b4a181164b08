"""The experiment config schema, and its validation.

Every experiment config is an `ml_collections.ConfigDict` that starts from
`base_config()` and overrides some fields; docs/configs.md documents each
field. `validate` rejects unknown keys, wrong types and unknown choices with
one sentence naming the key and what is allowed.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Tuple

import ml_collections

DATASETS = ('digits',)
PARTITIONS = ('iid', 'dirichlet')
MODELS = ('logistic_regression', 'mlp')
ALGORITHMS = ('fedavg',)
OPTIMIZERS = ('adagrad', 'adam', 'rmsprop', 'sgd', 'yogi')

_CHOICES = {
    'data.dataset': DATASETS,
    'data.partition': PARTITIONS,
    'model.name': MODELS,
    'algorithm.name': ALGORITHMS,
    'client.optimizer': OPTIMIZERS,
    'server.optimizer': OPTIMIZERS,
}


class ConfigError(ValueError):
  """An experiment config that does not fit the schema."""


def base_config() -> ml_collections.ConfigDict:
  """Returns the schema with its defaults; config files override fields."""
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(dict(
      dataset='digits', num_clients=60, num_test_clients=10,
      partition='dirichlet', dirichlet_alpha=0.5,
      batch_size=10, client_epochs=1, shuffle_buffer=100))
  config.model = ml_collections.ConfigDict(dict(name='mlp', hidden_units=(64,)))
  config.algorithm = ml_collections.ConfigDict(dict(name='fedavg', weighted=True))
  config.client = ml_collections.ConfigDict(dict(
      optimizer='sgd', learning_rate=0.1, momentum=0.0))
  config.server = ml_collections.ConfigDict(dict(
      optimizer='sgd', learning_rate=1.0, momentum=0.0))
  config.total_rounds = 10
  config.clients_per_round = 10
  config.rounds_per_eval = 1
  config.seed = 0
  return config


def _leaves(config: Mapping[str, Any], prefix: str = '') -> Iterator[Tuple[str, Any]]:
  for key, value in config.items():
    if isinstance(value, Mapping):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _type_name(value: Any) -> str:
  return 'number' if isinstance(value, float) else type(value).__name__


def _check_type(key: str, value: Any, default: Any) -> None:
  if isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(value, bool) and isinstance(default, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float))
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(
        f'Config key {key} must be a {_type_name(default)}, got {value!r}.')


def check_key(key: str) -> None:
  """Raises `ConfigError` if the dotted `key` is not in the schema."""
  schema = dict(_leaves(base_config().to_dict()))
  groups = {k.rpartition('.')[0] for k in schema}
  if key in schema or key in groups:
    return
  parent = key.rpartition('.')[0]
  siblings = sorted(k for k in schema if k.rpartition('.')[0] == parent) or sorted(
      {k.partition('.')[0] for k in schema})
  raise ConfigError(f'Unknown config key {key}; valid keys here are: {", ".join(siblings)}.')


def describe_type(key: str) -> str:
  """What kind of value the schema's `key` takes, e.g. 'an integer'."""
  default = dict(_leaves(base_config().to_dict()))[key]
  if isinstance(default, bool):
    return 'true or false'
  if isinstance(default, (tuple, list)):
    return 'a tuple such as (64, 32)'
  return {int: 'an integer', float: 'a number', str: 'a string'}[type(default)]


def validate(config: Any) -> None:
  """Raises `ConfigError` naming the first key that does not fit the schema."""
  schema = dict(_leaves(base_config().to_dict()))
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  for key, value in _leaves(config):
    check_key(key)
    _check_type(key, value, schema[key])
    if key in _CHOICES and value not in _CHOICES[key]:
      raise ConfigError(
          f'Config key {key} is {value!r}; expected one of: {", ".join(_CHOICES[key])}.')
  for key in ('total_rounds', 'clients_per_round', 'rounds_per_eval'):
    if config[key] < 1:
      raise ConfigError(f'Config key {key} must be at least 1, got {config[key]}.')


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as indented JSON (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)
