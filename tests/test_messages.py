"""Bad config values are refused before the run directory is touched."""

import pytest

import fedtff
from fedtff.runner import config as config_lib


@pytest.mark.parametrize('key, value, message', [
    ('seed', -1, 'Config key seed must be at least 0, got -1.'),
    ('data.num_test_clients', -1, 'Config key data.num_test_clients must be at least 0, got -1.'),
    ('data.num_test_clients', 60,
     'Config key data.num_test_clients must be less than the 60 clients (at most 59), got 60.'),
], ids=['negative_seed', 'negative_test_clients', 'all_clients_held_out'])
def test_refused_before_the_run_directory_exists(tmp_path, key, value, message):
  config = config_lib.base_config()
  group, _, field = key.rpartition('.')
  (config[group] if group else config)[field] = value
  with pytest.raises(fedtff.runner.config.ConfigError) as error:
    fedtff.run_experiment(config, str(tmp_path / 'run'))
  assert str(error.value) == message
  assert not (tmp_path / 'run').exists()
