"""`run_experiment`: a config in, a run directory out."""

import json
import os

import pytest

import fedtff
from fedtff.runner import outputs


def small_config(**overrides):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 12
  config.data.num_test_clients = 3
  config.total_rounds = 3
  config.clients_per_round = 4
  config.rounds_per_eval = 2
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  rows = []
  summary = fedtff.run_experiment(small_config(), workdir, progress_fn=rows.append)
  return workdir, summary, rows


def test_writes_metrics_csv_with_the_documented_columns(finished_run):
  workdir, _, progress_rows = finished_run
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    header = f.readline().strip().split(',')
  assert header == ['round', 'round_time_s', 'examples_per_s', 'train/accuracy', 'train/loss',
                    'train/num_examples', 'train/num_batches', 'eval/accuracy', 'eval/loss',
                    'eval/num_examples', 'eval/num_batches']
  assert [r['round'] for r in rows] == [1.0, 2.0, 3.0]
  assert [r['eval/accuracy'] is None for r in rows] == [True, False, False]
  assert [r['train/loss'] for r in rows] == pytest.approx([r['train/loss'] for r in progress_rows])


def test_writes_config_and_summary(finished_run):
  workdir, summary, _ = finished_run
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['total_rounds'] == 3
  with open(os.path.join(workdir, 'summary.json')) as f:
    written = json.load(f)
  assert written['final']['round'] == 3 and written == json.loads(json.dumps(summary))
  assert written['rounds_completed'] == 3
  assert 0.0 <= written['final']['eval/accuracy'] <= 1.0
  assert written['final']['eval/num_examples'] > 0


def test_same_seed_gives_the_same_metrics(finished_run, tmp_path):
  workdir, _, _ = finished_run
  fedtff.run_experiment(small_config(), str(tmp_path))
  first = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  second = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  timing = ('round_time_s', 'examples_per_s')
  for a, b in zip(first, second):
    assert {k: v for k, v in a.items() if k not in timing} == pytest.approx(
        {k: v for k, v in b.items() if k not in timing}, abs=1e-6)


@pytest.mark.parametrize(
    'mutate, message',
    [
        (lambda c: c.data.__setattr__('dataset', 'mnist'),
         "data.dataset is 'mnist'; expected one of: digits"),
        (lambda c: c.__setattr__('total_rounds', 0), 'total_rounds must be at least 1'),
    ],
    ids=['unknown_dataset', 'zero_rounds'])
def test_rejects_bad_configs_with_the_key_named(tmp_path, mutate, message):
  config = small_config()
  config.unlock()
  mutate(config)
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.run_experiment(config, str(tmp_path))


def test_wrong_type_in_a_plain_dict_is_refused():
  config = small_config().to_dict()
  config['client']['learning_rate'] = 'compiled'
  with pytest.raises(fedtff.runner.config.ConfigError, match='client.learning_rate must be a number'):
    fedtff.runner.config.validate(config)


def test_unknown_key_lists_the_valid_keys():
  config = small_config()
  config.client.lr = 0.1
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match='Unknown config key client.lr; valid keys here are: client.beta_1, '
                     '.*client.learning_rate, .*client.optimizer'):
    fedtff.runner.config.validate(config)


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(OSError, match='Cannot write to the run directory'):
    fedtff.run_experiment(small_config(), str(blocker / 'run'))
