"""Your own model, data and algorithm under the runner (fedtff.runner.user_task).

The user's objects live in tests/research_fixtures.py and are named by import
path, as a lab's own module would be.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import checkpoints
from fedtff.research import sweeps
from fedtff.runner import outputs
from tests import conftest
from tests import test_experiment
from tests import research_fixtures as lab

FIXTURES = 'tests.research_fixtures'


def small_config(total_rounds, **overrides):
  config = fedtff.runner.config.base_config()
  config.total_rounds = total_rounds
  config.clients_per_round = 3
  config.rounds_per_checkpoint = 1
  config.data.batch_size = 5
  config.output.checkpoints_to_keep = 0  # Keep every round's weights.
  for key, value in overrides.items():
    group, _, field = key.rpartition('.')
    (config[group] if group else config)[field] = value
  return config


def user_task():
  train, test = lab.load()
  return fedtff.UserTask(lab.model_fn, train, test, preprocess_fn=lab.scale)


def comparable_rows(workdir):
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  return [{k: v for k, v in r.items() if k not in ('round_time_s', 'examples_per_s')}
          for r in rows]


def final_weights(workdir, round_num):
  with np.load(os.path.join(workdir, 'checkpoints', f'round-{round_num:06d}.npz')) as saved:
    return [saved[k] for k in sorted(saved.files) if k.startswith('leaf_')]


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  fedtff.run_experiment(small_config(3), workdir, task=user_task(), process=lab.fed_avg_clipped)
  return workdir


def test_user_process_resumes_to_the_rows_and_weights_of_a_straight_run(straight_run, tmp_path):
  fedtff.run_experiment(small_config(2), str(tmp_path), task=user_task(),
                        process=lab.fed_avg_clipped)
  assert checkpoints.rounds(tmp_path / 'checkpoints') == [1, 2]
  summary = fedtff.run_experiment(small_config(3), str(tmp_path), task=user_task(),
                                  process=lab.fed_avg_clipped)
  assert summary['rounds_completed'] == 3
  # engine='auto' (the default) runs a user's learning process on TFF and records why.
  assert summary['engine'] == 'tff'
  assert summary['engine_reason'].startswith("engine='compiled' compiles fedtff's own algorithms")
  resumed, straight = comparable_rows(tmp_path), comparable_rows(straight_run)
  assert [r['round'] for r in resumed] == [1, 2, 3]
  for a, b in zip(resumed, straight):
    assert a == pytest.approx(b, abs=1e-6)
  for a, b in zip(final_weights(tmp_path, 3), final_weights(straight_run, 3)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_config_records_where_the_user_objects_are_defined(straight_run):
  with open(os.path.join(straight_run, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['factory'] == f'{FIXTURES}:model_fn'
  assert saved['data']['preprocess'] == f'{FIXTURES}:scale'
  assert saved['algorithm']['process'] == f'{FIXTURES}:fed_avg_clipped'
  assert saved['data']['source'] == '<in-memory ClientData: 5 training, 2 held-out clients>'


def test_the_user_algorithm_is_what_ran(straight_run):
  """Each client's step is clipped to norm 0.1 at learning rate 0.5: with 12
  examples in batches of 5 (3 steps) a client moves at most 0.15, and so does
  the example-weighted mean the server applies (learning rate 1)."""
  tf.keras.utils.set_random_seed(0)  # The runner's seeded initial weights.
  initial = lab.model_fn().get_weights()
  after = final_weights(straight_run, 1)[:2]  # Trainable weights lead the state.
  moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, initial)))
  assert 0.05 < moved <= 0.15 + 1e-6


def test_the_composed_algorithm_equals_tff_s_own_fed_avg_with_the_clipping_optimizer(
    straight_run, tmp_path):
  """docs/research.md: composed from TFF's four pieces, fed_avg_clipped is
  `tff.learning.algorithms.build_weighted_fed_avg(model_fn,
  client_optimizer_fn=ClippedSGD(0.5, 0.1))`; the runner gives both the same
  rows and weights."""
  fedtff.run_experiment(small_config(3), str(tmp_path), task=user_task(),
                        process=lab.tff_fed_avg_clipped)
  for a, b in zip(comparable_rows(tmp_path), comparable_rows(straight_run)):
    assert a == pytest.approx(b, abs=1e-6)
  for a, b in zip(final_weights(tmp_path, 3)[:2], final_weights(straight_run, 3)[:2]):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_evaluate_checkpoint_rebuilds_the_user_task_and_process(straight_run):
  evaluated = fedtff.evaluate_checkpoint(straight_run, task=user_task(),
                                         process=lab.fed_avg_clipped)
  last = outputs.read_metrics_csv(os.path.join(straight_run, 'metrics.csv'))[-1]
  assert evaluated['round'] == 3
  assert evaluated['eval/loss'] == pytest.approx(last['eval/loss'], abs=1e-6)
  assert evaluated['eval/accuracy'] == last['eval/accuracy']


def test_a_changed_import_path_is_refused_on_resume(straight_run):
  config = small_config(3, **{'data.preprocess': ''})
  train, test = lab.load()
  with pytest.raises(fedtff.runner.config.ConfigError, match=(
      r"holds a run with another config \(data.preprocess: 'tests.research_fixtures:scale' "
      r"-> ''\)")):
    fedtff.run_experiment(config, straight_run, task=fedtff.UserTask(lab.model_fn, train, test),
                          process=lab.fed_avg_clipped)


@pytest.mark.parametrize('key, path, message', [
    ('model.factory', 'no_such_lab.models:net',
     "Config key model.factory names 'no_such_lab.models:net', which cannot be imported: "
     "No module named 'no_such_lab'."),
    ('model.factory', f'{FIXTURES}:resnet',
     f"Config key model.factory names '{FIXTURES}:resnet', which cannot be imported: "
     f"{FIXTURES} has no attribute 'resnet'."),
    ('model.factory', 'tests.research_fixtures.model_fn',
     "Config key model.factory must be an import path 'module:name' such as "
     "'my_lab.models:resnet_gn', got 'tests.research_fixtures.model_fn'."),
    ('model.factory', f'{FIXTURES}:WIDTH',
     f"Config key model.factory names '{FIXTURES}:WIDTH', which is an int; expected a "
     'no-argument function returning a new, uncompiled tf.keras.Model.'),
    ('model.factory', f'{FIXTURES}:returns_a_string',
     f"Config key model.factory names '{FIXTURES}:returns_a_string', which returned a str; "
     'expected a no-argument function returning a new, uncompiled tf.keras.Model.'),
    ('data.source', f'{FIXTURES}:load_list',
     f"Config key data.source names '{FIXTURES}:load_list', which returned a list; expected a "
     'no-argument function returning a (train, held-out) pair of '
     'tff.simulation.datasets.ClientData.'),
    ('model.metrics', f'{FIXTURES}:model_fn',
     f"Config key model.metrics names '{FIXTURES}:model_fn', which returned a Sequential; "
     'expected a no-argument function returning a list of tf.keras metrics.'),
    ('data.source', f'{FIXTURES}:load',
     'Config key data.source needs model.factory: the built-in models (model.name) are sized '
     "for the built-in datasets; name your model, e.g. 'my_lab.models:resnet_gn'."),
    ('model.factory', 'fedtff.models:mlp',
     "Config key model.factory names 'fedtff.models:mlp', which raised TypeError: mlp() "
     "missing 2 required positional arguments: 'input_shape' and 'num_classes'."),
    ('model.metrics', f'{FIXTURES}:forgetful_metrics',
     f"Config key model.metrics names '{FIXTURES}:forgetful_metrics', which returned a "
     "ForgetfulMeanLogit metric whose get_config() lacks its __init__ argument 'shift'; both "
     'engines rebuild each metric from get_config(), as TFF does, so return it from '
     'get_config().'),
    ('data.preprocess', f'{FIXTURES}:scale',
     'Config key data.preprocess needs data.source: the built-in datasets bring their own '
     'preprocessing.'),
], ids=['no_module', 'no_attribute', 'not_a_path', 'not_callable', 'not_a_model', 'not_a_pair',
        'not_metrics', 'data_without_model', 'needs_arguments', 'metric_not_rebuildable',
        'preprocess_without_data'])
def test_a_bad_import_path_gets_one_line_naming_key_and_path(tmp_path, key, path, message):
  config = small_config(1, **{key: path})
  with pytest.raises(fedtff.runner.config.ConfigError) as raised:
    fedtff.run_experiment(config, str(tmp_path / 'run'))
  assert str(raised.value) == message
  assert not os.path.exists(tmp_path / 'run')  # Refused before the run directory.


def test_compiled_engine_refuses_a_user_process(tmp_path):
  config = small_config(1, engine='compiled', **{'model.factory': f'{FIXTURES}:model_fn',
                                              'data.source': f'{FIXTURES}:load'})
  with pytest.raises(fedtff.runner.config.ConfigError) as raised:
    fedtff.run_experiment(config, str(tmp_path / 'run'), process=lab.fed_avg_clipped)
  assert str(raised.value) == (
      "engine='compiled' compiles fedtff's own algorithms only; run a user's learning process "
      "(algorithm.process) with engine='tff'.")
  assert not os.path.exists(tmp_path / 'run')


def test_dp_with_a_user_process_is_refused(tmp_path):
  config = small_config(1, **{'model.factory': f'{FIXTURES}:model_fn',
                              'data.source': f'{FIXTURES}:load',
                              'algorithm.process': f'{FIXTURES}:fed_avg_clipped'})
  config.algorithm.weighted = False
  config.aggregator.update(dict(kind='dp', clip_norm=1.0, noise_multiplier=1.0))
  with pytest.raises(fedtff.runner.config.ConfigError) as raised:
    fedtff.run_experiment(config, str(tmp_path / 'run'))
  assert str(raised.value) == (
      "aggregator.kind='dp' needs fedtff's own process, whose DP aggregator the privacy "
      "accounting describes; a user's learning process (algorithm.process) brings its own "
      'aggregator, which fedtff cannot account for.')
  assert not os.path.exists(tmp_path / 'run')


def test_a_user_model_loss_and_metrics_on_a_built_in_dataset_give_equal_rows_on_both_engines(
    tmp_path):
  """model.factory, model.loss and model.metrics without data.source: the
  user's model on the built-in digits, the compiled engine's rows equal TFF's."""
  paths = {'model.factory': f'{FIXTURES}:digits_linear',
           'model.loss': f'{FIXTURES}:OneHotMeanSquaredError',
           'model.metrics': f'{FIXTURES}:one_hot_metrics'}
  rows = {}
  for engine in ('tff', 'compiled'):
    config = test_experiment.small_config(total_rounds=2, rounds_per_eval=1, engine=engine)
    config.rounds_per_checkpoint = 2
    for key, path in paths.items():
      config[key.split('.')[0]][key.split('.')[1]] = path
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = comparable_rows(tmp_path / engine)
    assert [w.shape for w in final_weights(tmp_path / engine, 2)[:2]] == [(64, 10), (10,)]
  assert 'eval/one_hot_mae' in rows['tff'][0] and 'eval/accuracy' not in rows['tff'][0]
  for tff_row, compiled_row in zip(rows['tff'], rows['compiled']):
    assert tff_row.keys() == compiled_row.keys()
    for key, value in tff_row.items():
      assert compiled_row[key] == pytest.approx(value, abs=1e-5, rel=1e-5), key


def test_python_objects_of_the_wrong_kind_are_named(tmp_path):
  train, test = lab.load()
  with pytest.raises(TypeError) as raised:
    fedtff.run_experiment(small_config(1), str(tmp_path / 'run'),
                          task=fedtff.UserTask(lab.model_fn, train, test, loss_fn=lab.model_fn))
  assert str(raised.value) == (
      f'UserTask.loss_fn ({FIXTURES}:model_fn) returned a Sequential; expected a no-argument '
      'function returning a tf.keras loss.')
  with pytest.raises(TypeError, match=(
      rf"^UserTask.metrics_fn \({FIXTURES}:forgetful_metrics\) returned a ForgetfulMeanLogit "
      r"metric whose get_config\(\) lacks its __init__ argument 'shift'")):
    fedtff.run_experiment(small_config(1), str(tmp_path / 'run'), task=fedtff.UserTask(
        lab.model_fn, train, test, metrics_fn=lab.forgetful_metrics))
  with pytest.raises(fedtff.runner.config.ConfigError, match=(
      r"Config key model.factory is 'tests.research_fixtures:wide_model_fn' but "
      r"run_experiment was also given 'tests.research_fixtures:model_fn'; name it in one place.")):
    fedtff.run_experiment(small_config(1, **{'model.factory': f'{FIXTURES}:wide_model_fn'}),
                          str(tmp_path / 'run'), task=fedtff.UserTask(lab.model_fn, train, test))
  assert not os.path.exists(tmp_path / 'run')


def test_train_script_runs_import_paths_and_names_a_bad_one(tmp_path):
  paths = [f'--config.model.factory={FIXTURES}:model_fn', f'--config.data.source={FIXTURES}:load',
           f'--config.data.preprocess={FIXTURES}:scale',
           f'--config.model.metrics={FIXTURES}:one_hot_metrics']
  common = ['--config=configs/quickstart.py', f'--workdir={tmp_path}', '--quiet',
            '--config.total_rounds=1', '--config.clients_per_round=2']
  result = conftest.run_script(['experiments/train.py'] + common + paths)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['data']['source'] == f'{FIXTURES}:load'
  last = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))[-1]
  assert last['round'] == 1
  # The final line shows the user's first metric where there is no accuracy.
  assert result.stdout.strip().splitlines()[-1].startswith(
      f"test one_hot_mae {last['eval/one_hot_mae']:.4f} (loss {last['eval/loss']:.4f}) after "
      'round 1 on the compiled engine')
  bad = conftest.run_script(['experiments/train.py'] + common + paths[1:] + [
      '--config.model.factory=tests.research_fixtures:nothing'])
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "train.py: error: Config key model.factory names 'tests.research_fixtures:nothing', "
      "which cannot be imported: tests.research_fixtures has no attribute 'nothing'.")


def test_sweep_over_user_models_runs_and_skips_complete_points(tmp_path):
  config = small_config(1, **{'data.source': f'{FIXTURES}:load'})
  grid = sweeps.parse_grid([f'model.factory={FIXTURES}:model_fn,{FIXTURES}:wide_model_fn'])
  lines = []
  rows = sweeps.run_sweep(config, str(tmp_path), grid, log_fn=lines.append)
  assert [r['status'] for r in rows] == ['complete', 'complete']
  assert [line.rpartition(': ')[2] for line in lines] == ['running', 'running']
  wide = tmp_path / f'model.factory={FIXTURES}:wide_model_fn'
  with open(wide / 'config.json') as f:
    assert json.load(f)['model']['factory'] == f'{FIXTURES}:wide_model_fn'
  assert [w.shape for w in final_weights(wide, 1)[:4]] == [(4, 8), (8,), (8, 3), (3,)]
  lines.clear()
  sweeps.run_sweep(config, str(tmp_path), grid, log_fn=lines.append)
  assert [line.rpartition(': ')[2] for line in lines] == ['skipped, already complete'] * 2
  with pytest.raises(fedtff.runner.config.ConfigError, match='names .tests.research_fixtures:WIDTH., '
                     'which is an int'):
    sweeps.run_sweep(config, str(tmp_path / 'bad'), sweeps.parse_grid(
        [f'model.factory={FIXTURES}:model_fn,{FIXTURES}:WIDTH']))
  assert not os.path.exists(tmp_path / 'bad')


def test_a_sweep_compares_points_on_a_metric_of_the_user_s_own(tmp_path):
  """With model.metrics the default metric (eval/accuracy) is not a column:
  refused before any point runs; one of the user's metrics is plotted."""
  config = small_config(1, **{'data.source': f'{FIXTURES}:load',
                              'model.metrics': f'{FIXTURES}:one_hot_metrics'})
  grid = sweeps.parse_grid([f'model.factory={FIXTURES}:model_fn'])
  with pytest.raises(fedtff.runner.config.ConfigError) as raised:
    sweeps.run_sweep(config, str(tmp_path / 'refused'), grid)
  assert str(raised.value) == (
      "The sweep's metric 'eval/accuracy' is not a column of these runs: model.metrics "
      f"'{FIXTURES}:one_hot_metrics' reports one_hot_mae, mean_logit (with loss, num_examples, "
      'num_batches); choose one, e.g. eval/one_hot_mae.')
  assert not os.path.exists(tmp_path / 'refused')
  rows = sweeps.run_sweep(config, str(tmp_path / 'run'), grid,
                                          metric='eval/mean_logit')
  assert [r['status'] for r in rows] == ['complete']
  assert os.path.exists(tmp_path / 'run' / sweeps.SWEEP_PNG)


def test_preprocessing_that_fails_on_the_data_gets_one_line(tmp_path):
  config = small_config(1, **{'model.factory': f'{FIXTURES}:model_fn',
                              'data.source': f'{FIXTURES}:load',
                              'data.preprocess': f'{FIXTURES}:needs_z'})
  with pytest.raises(ValueError) as raised:
    fedtff.run_experiment(config, str(tmp_path / 'run'))
  assert str(raised.value) == (
      f"The training clients (data.source '{FIXTURES}:load', data.preprocess "
      f"'{FIXTURES}:needs_z') cannot be iterated: KeyError: 'z'")
  assert not os.path.exists(tmp_path / 'run')


def test_a_user_task_gives_equal_rows_on_both_engines(tmp_path):
  """A user's own model and data (no user process) train alike on the TFF and
  the compiled engine: same rows within 1e-5, also with a preprocessing that
  augments under its per-example `seed` (both engines see the same noise);
  without the noise the training rows differ (the augmentation ran)."""
  train, test = lab.load()
  rows = {}
  for engine, preprocess_fn in (('tff', lab.scale_and_jitter), ('compiled', lab.scale_and_jitter),
                                ('plain', lab.scale)):
    workdir = str(tmp_path / engine)
    fedtff.run_experiment(small_config(2, engine='compiled' if engine == 'plain' else engine),
                          workdir, task=fedtff.UserTask(lab.model_fn, train, test,
                                                        preprocess_fn=preprocess_fn))
    rows[engine] = comparable_rows(workdir)
  assert [r['round'] for r in rows['compiled']] == [1, 2]
  for tff_row, compiled_row in zip(rows['tff'], rows['compiled']):
    assert tff_row.keys() == compiled_row.keys()
    for key, value in tff_row.items():
      assert compiled_row[key] == pytest.approx(value, abs=1e-5, rel=1e-5), key
  assert abs(rows['plain'][0]['train/loss'] - rows['compiled'][0]['train/loss']) > 1e-3


class Killed(Exception):
  """Stands in for a kill: raised by a callback after a round's row is written."""


def kill_in_round(round_num):
  def callback(end):
    if end.round_num == round_num:
      raise Killed
  return callback


def import_path_config(total_rounds, **overrides):
  """The user task named by import path, with the user's loss and metric."""
  return small_config(total_rounds, rounds_per_checkpoint=2, **{
      'model.factory': f'{FIXTURES}:model_fn', 'data.source': f'{FIXTURES}:load',
      'data.preprocess': f'{FIXTURES}:scale', 'model.loss': f'{FIXTURES}:OneHotMeanSquaredError',
      'model.metrics': f'{FIXTURES}:one_hot_metrics', **overrides})


def test_a_killed_import_path_run_resumes_to_the_rows_of_a_straight_run(tmp_path):
  """Killed in round 3 (its row written, its checkpoint not), the run resumes
  from round 2's checkpoint, runs round 3 again and ends with the rows and
  weights of an uninterrupted run; shuffled batches are seeded by round. On the
  compiled engine, the default; the TFF engine's resume of a user task is
  test_user_process_resumes_to_the_rows_and_weights_of_a_straight_run's."""
  engine = 'compiled'
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  fedtff.run_experiment(import_path_config(3, engine=engine), straight)
  with pytest.raises(Killed):
    fedtff.run_experiment(import_path_config(3, engine=engine), killed,
                          callbacks=[kill_in_round(3)])
  assert checkpoints.rounds(os.path.join(killed, 'checkpoints')) == [2]
  assert [r['round'] for r in comparable_rows(killed)] == [1, 2, 3]
  fedtff.run_experiment(import_path_config(3, engine=engine), killed)
  resumed, uninterrupted = comparable_rows(killed), comparable_rows(straight)
  assert 'eval/one_hot_mae' in resumed[0]
  assert [r['round'] for r in resumed] == [1, 2, 3]
  for a, b in zip(resumed, uninterrupted):
    assert a == pytest.approx(b, abs=1e-6)
  for a, b in zip(final_weights(killed, 3), final_weights(straight, 3)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  evaluated = fedtff.evaluate_checkpoint(straight)  # Imports config.json's paths.
  for key in ('eval/one_hot_mae', 'eval/mean_logit', 'eval/loss'):
    assert evaluated[key] == pytest.approx(uninterrupted[-1][key], abs=1e-6), key
  with pytest.raises(fedtff.runner.config.ConfigError) as raised:
    fedtff.run_experiment(import_path_config(
        3, engine=engine, **{'model.loss': 'tensorflow.keras.losses:MeanSquaredError'}), killed)
  assert str(raised.value) == (
      f'{killed} holds a run with another config (model.loss: '
      f"'{FIXTURES}:OneHotMeanSquaredError' -> 'tensorflow.keras.losses:MeanSquaredError'); "
      'pass --overwrite to start it over, or choose another --workdir.')
