"""The suite's sharing of built processes between runs of one config (conftest)."""

import fedtff
from fedtff.algorithms import aggregators
from tests import conftest


def key(config):
  config = fedtff.runner.config.resolve(config)
  return conftest._process_key('tff', config, {'aggregator': aggregators.AggregatorSpec()})  # pylint: disable=protected-access


def base():
  return fedtff.runner.config.base_config()


def test_runs_differing_in_run_only_keys_share_a_build():
  extended = base()
  extended.total_rounds, extended.rounds_per_eval, extended.stop.target = 99, 7, 0.5
  assert key(extended) == key(base()) is not None


def test_any_other_difference_builds_anew():
  for path, value in [('client.learning_rate', 0.5), ('seed', 3), ('clients_per_round', 3),
                      ('data.batch_size', 4), ('model.hidden_units', [8]),
                      ('algorithm.name', 'fedprox')]:
    changed = base()
    group, _, name = path.rpartition('.')
    setattr(changed[group] if group else changed, name, value)
    assert key(changed) != key(base()), path


def test_user_objects_sites_and_files_are_never_shared():
  for path, value in [('model.factory', 'tests.test_user_task:mlp'),
                      ('runtime.sites', ['a=127.0.0.1:1']), ('data.dataset', 'shakespeare'),
                      ('data.feed_dir', '/tmp/feed')]:
    changed = base()
    group, _, name = path.rpartition('.')
    setattr(changed[group], name, value)
    assert conftest._config_key(changed) is None, path  # pylint: disable=protected-access
  no_spec = conftest._process_key('tff', base(), {'aggregator': object()})  # pylint: disable=protected-access
  assert no_spec is None
