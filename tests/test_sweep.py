"""fedtff.research.sweeps and experiments/sweep.py: a grid of runs and its table."""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

import fedtff
from fedtff.research import sweeps
from tests import conftest
from tests import test_resume

GRID = ['server.learning_rate=0.5,1.0', 'seed=0']
NAMES = ['seed=0,server.learning_rate=0.5', 'seed=0,server.learning_rate=1.0']


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """experiments/sweep.py over a 2x1 grid of 2-round runs of test_resume.small_config(2)."""
  config_file = tmp_path_factory.mktemp('configs') / 'small.py'
  config_file.write_text('from tests import test_resume\n\n\n'
                         'def get_config():\n  return test_resume.small_config(2)\n')
  root = tmp_path_factory.mktemp('sweep')
  grid_args = [arg for spec in GRID for arg in ('--grid', spec)]
  result = conftest.run_script(['experiments/sweep.py', f'--config={config_file}',
                                f'--workdir={root}', '--quiet'] + grid_args, fresh=True)
  assert result.returncode == 0, result.stderr
  return root, result


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def test_sweep_runs_every_point_into_its_own_directory(swept):
  root, result = swept
  assert sorted(os.listdir(root)) == ['hparams'] + NAMES + ['sweep.csv', 'sweep.md', 'sweep.png']
  for name in NAMES:
    assert _read_json(root / name / 'summary.json')['rounds_completed'] == 2
  assert _read_json(root / NAMES[0] / 'config.json')['server']['learning_rate'] == 0.5
  assert result.stdout.splitlines()[:2] == [f'[1/2] {NAMES[0]}: running', f'[2/2] {NAMES[1]}: running']
  assert result.stderr == ''


def test_table_rows_match_each_runs_summary(swept):
  root, _ = swept
  with open(root / 'sweep.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['run'] for row in rows] == NAMES
  assert [float(row['server.learning_rate']) for row in rows] == [0.5, 1.0]
  for row in rows:
    summary = _read_json(root / row['run'] / 'summary.json')
    best = summary['best']['eval/accuracy']
    assert row['status'] == 'complete' and row['seed'] == '0'
    assert float(row['final_eval_accuracy']) == summary['final']['eval/accuracy']
    assert float(row['final_eval_loss']) == summary['final']['eval/loss']
    assert float(row['best_eval_accuracy']) == best['value']
    assert int(row['best_eval_accuracy_round']) == best['round']
    assert float(row['total_time_s']) == summary['total_time_s']
    assert row['engine'] == summary['engine'] == 'compiled'
  markdown = (root / 'sweep.md').read_text().splitlines()
  assert len(markdown) == 4 and markdown[2].startswith(f'| {NAMES[0]} | 0 | 0.5 | complete | ')


def _events(directory):
  """(tag, plugin name, value) of every summary value in `directory`'s own event files."""
  found = []
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.append((value.tag, value.metadata.plugin_data.plugin_name, value))
  return found


def _hparams_data(value):
  return plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)


def test_hparams_dashboard_files_read_back(swept):
  root, result = swept
  experiment = [_hparams_data(v).experiment for tag, plugin, v in _events(root / 'hparams')
                if plugin == 'hparams']
  assert len(experiment) == 1
  domains = {info.name: [v.number_value for v in info.domain_discrete.values]
             for info in experiment[0].hparam_infos}
  assert domains == {'server.learning_rate': [0.5, 1.0], 'seed': [0.0]}
  metric_tags = {info.name.tag for info in experiment[0].metric_infos}
  assert {'final/eval/accuracy', 'final/eval/loss', 'best/eval/accuracy', 'best/eval/loss',
          'rounds_completed', 'total_time_s'} <= metric_tags
  assert sorted(p.name for p in (root / 'hparams').iterdir() if p.is_dir()) == NAMES
  for name, learning_rate in zip(NAMES, [0.5, 1.0]):
    events = _events(root / 'hparams' / name)
    starts = [_hparams_data(v).session_start_info for _, plugin, v in events
              if plugin == 'hparams' and _hparams_data(v).HasField('session_start_info')]
    assert len(starts) == 1 and starts[0].group_name == name
    assert {k: v.number_value for k, v in starts[0].hparams.items()} == {
        'server.learning_rate': learning_rate, 'seed': 0.0}
    scalars = {tag: float(tf.make_ndarray(v.tensor)) for tag, plugin, v in events
               if plugin == 'scalars'}
    summary = _read_json(root / name / 'summary.json')
    assert scalars['final/eval/accuracy'] == pytest.approx(summary['final']['eval/accuracy'])
    assert scalars['best/eval/loss'] == pytest.approx(summary['best']['eval/loss']['value'])
    assert scalars['rounds_completed'] == 2
    assert set(scalars) == metric_tags
  assert 'HParams dashboard: tensorboard --logdir ' in result.stdout


def test_sweep_png_compares_the_points(swept):
  root, _ = swept
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(root / 'sweep.png')
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 10  # Not blank.


@pytest.fixture(scope='module')
def refused(tmp_path_factory):
  """experiments/sweep.py's refused command lines: {name: (workdir, CompletedProcess)}."""
  cases = {
      'bad_metric': ['--grid', 'seed=0', '--metric=accuracy'],
      'unknown_grid_key': ['--grid', 'server.lr=0.1,1.0'],
  }
  workdirs = {name: tmp_path_factory.mktemp(name) for name in cases}
  return {name: (workdirs[name], conftest.run_script(
      ['experiments/sweep.py', '--config=configs/quickstart.py', f'--workdir={workdirs[name]}']
      + args)) for name, args in cases.items()}


def test_bad_metric_gets_one_line_before_any_run(refused):
  workdir, result = refused['bad_metric']
  assert result.returncode == 2
  assert result.stderr == ("sweep.py: error: The sweep's metric must be a metrics column "
                           "'train/<name>' or 'eval/<name>', e.g. 'eval/accuracy', got "
                           "'accuracy'.\n")
  assert os.listdir(workdir) == []


def test_rerun_skips_complete_points(swept):
  root, _ = swept
  mtimes = [os.stat(root / name / 'metrics.csv').st_mtime_ns for name in NAMES]
  rounds, lines = [], []
  rows = sweeps.run_sweep(test_resume.small_config(2), str(root), sweeps.parse_grid(GRID),
                          make_progress_fn=lambda config: rounds.append, log_fn=lines.append)
  assert rounds == []
  assert lines == [f'[1/2] {NAMES[0]}: skipped, already complete',
                   f'[2/2] {NAMES[1]}: skipped, already complete']
  assert [os.stat(root / name / 'metrics.csv').st_mtime_ns for name in NAMES] == mtimes
  assert [row['run'] for row in rows] == NAMES


def test_diverging_point_is_recorded_and_the_sweep_goes_on(tmp_path):
  lines = []
  rows = sweeps.run_sweep(test_resume.small_config(2), str(tmp_path),
                          sweeps.parse_grid(['server.learning_rate=1e30']), log_fn=lines.append)
  assert rows[0]['status'] == 'diverged' and rows[0]['total_time_s'] is None
  assert lines[1].startswith('[1/1] server.learning_rate=1e+30: Training diverged at round ')
  assert '| diverged |' in (tmp_path / 'sweep.md').read_text()


def test_unknown_grid_key_gets_one_line_and_nonzero_exit(refused):
  workdir, result = refused['unknown_grid_key']
  assert result.returncode != 0
  assert result.stderr.startswith('sweep.py: error: Unknown config key server.lr; valid keys '
                                  'here are: server.beta_1, server.beta_2, ')
  assert len(result.stderr.splitlines()) == 1
  assert os.listdir(workdir) == []


def test_grid_values_take_the_schema_type():
  grid = sweeps.parse_grid(['model.hidden_units=(64,),(32,16)', 'algorithm.weighted=true,False',
                            'aggregator.clip_norm=None,1', 'client.learning_rate=1'])
  assert grid == [('model.hidden_units', [(64,), (32, 16)]),
                  ('algorithm.weighted', [True, False]),
                  ('aggregator.clip_norm', [None, 1.0]), ('client.learning_rate', [1.0])]
  assert isinstance(grid[3][1][0], float)
  points = sweeps.expand(grid)
  assert len(points) == 8
  assert sweeps.point_name(points[-1]) == ('aggregator.clip_norm=1.0,algorithm.weighted=false,'
                                           'client.learning_rate=1.0,model.hidden_units=(32,16)')


@pytest.mark.parametrize('specs, message', [
    (['seed=0.5'], "Config key seed must be an integer, got '0.5'."),
    (['client=0.1'], 'Config key client is a group; give one of its fields'),
    (['seed=0', 'seed=1'], 'Config key seed is given twice in the grid.'),
    (['seed=0,0'], 'Config key seed lists a value twice in the grid: 0,0.'),
    (['seed'], "Grid entry 'seed' must look like key=value1,value2"),
    ([], 'The grid is empty'),
], ids=['wrong_type', 'group', 'key_twice', 'value_twice', 'no_values', 'empty'])
def test_bad_grid_is_refused_with_a_sentence(specs, message):
  with pytest.raises(fedtff.runner.config.ConfigError) as error:
    sweeps.parse_grid(specs)
  assert str(error.value).startswith(message)


def test_point_configs_are_validated_before_any_run(tmp_path):
  grid = sweeps.parse_grid(['algorithm.name=fedavg,fedx'])
  with pytest.raises(fedtff.runner.config.ConfigError, match="algorithm.name is 'fedx'; expected one of"):
    sweeps.run_sweep(test_resume.small_config(2), str(tmp_path / 'root'), grid)
  assert not (tmp_path / 'root').exists()


def test_none_override_and_none_grid_value_reach_the_points(tmp_path):
  # quickstart_dp.py:noiseless sets aggregator.noise_multiplier=0.0; DP needs
  # exactly one of it and privacy.target_epsilon, so the points run only if
  # the None override was applied.
  result = conftest.run_script([
      'experiments/sweep.py', '--config=configs/quickstart_dp.py:noiseless',
      f'--workdir={tmp_path}', '--config.aggregator.noise_multiplier=None',
      '--config.total_rounds=1', '--config.engine=compiled', '--quiet',
      '--grid', 'privacy.target_epsilon=8', '--grid', 'privacy.delta=none,0.001'])
  assert result.returncode == 0, result.stderr
  deltas = {}
  for name in os.listdir(tmp_path):
    if os.path.isdir(tmp_path / name) and name != sweeps.HPARAMS:
      config = _read_json(tmp_path / name / 'config.json')
      assert config['aggregator']['noise_multiplier'] is None
      deltas[name] = config['privacy']['delta']
  assert sorted(deltas.values(), key=str) == [0.001, None]


LAB_MODULE = '''"""A lab's own models and data, as a user's module (written by tests/test_sweep.py)."""
import numpy as np
import tensorflow as tf

import fedtff


def narrow():
  return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])


def wide():
  return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8),
                              tf.keras.layers.Dense(3)])


def load():
  x = np.random.default_rng(0).normal(size=(60, 4)).astype('float32')
  y = np.argmax(x[:, :3], axis=1).astype('int32')
  return (fedtff.data.from_arrays(x[:48], y[:48], np.array_split(np.arange(48), 4)),
          fedtff.data.from_arrays(x[48:], y[48:], np.array_split(np.arange(12), 2)))
'''
LAB_GRID = 'model.factory=my_lab.tasks:narrow,my_lab.tasks:wide'
LAB_NAMES = ['model.factory=my_lab.tasks:narrow', 'model.factory=my_lab.tasks:wide']


def run_lab_sweep(lab_dir, root, *args):
  """experiments/sweep.py over 2-round runs of quickstart with `my_lab` on PYTHONPATH."""
  return subprocess.run(
      [sys.executable, 'experiments/sweep.py', '--config=configs/quickstart.py',
       f'--workdir={root}', '--quiet', '--config.total_rounds=2', '--config.rounds_per_eval=1',
       '--config.clients_per_round=2', '--config.data.source=my_lab.tasks:load', *args],
      cwd=conftest.REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=conftest.script_env(PYTHONPATH=str(lab_dir)))


@pytest.fixture(scope='module')
def lab_dir(tmp_path_factory):
  """A directory holding the package `my_lab` (module `my_lab.tasks`)."""
  directory = tmp_path_factory.mktemp('lab')
  (directory / 'my_lab').mkdir()
  (directory / 'my_lab' / '__init__.py').write_text('')
  (directory / 'my_lab' / 'tasks.py').write_text(LAB_MODULE)
  return directory


def test_sweep_script_runs_import_paths_end_to_end(lab_dir, tmp_path):
  result = run_lab_sweep(lab_dir, tmp_path, '--grid', LAB_GRID)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ['hparams'] + LAB_NAMES + [
      'sweep.csv', 'sweep.md', 'sweep.png']
  with open(tmp_path / 'sweep.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['run'] for row in rows] == LAB_NAMES
  assert [row['model.factory'] for row in rows] == ['my_lab.tasks:narrow', 'my_lab.tasks:wide']
  for name, row, kernels in zip(LAB_NAMES, rows, [[(4, 3)], [(4, 8), (8, 3)]]):
    run = tmp_path / name
    assert {'config.json', 'metrics.csv', 'metrics.jsonl', 'tensorboard', 'checkpoints',
            'summary.json'} <= set(os.listdir(run))
    config, summary = _read_json(run / 'config.json'), _read_json(run / 'summary.json')
    assert config['model']['factory'] == row['model.factory']
    assert config['data']['source'] == 'my_lab.tasks:load'
    assert row['status'] == 'complete' and summary['rounds_completed'] == 2
    assert float(row['final_eval_accuracy']) == summary['final']['eval/accuracy']
    metrics = fedtff.runner.outputs.read_metrics_csv(str(run / 'metrics.csv'))
    assert [r['round'] for r in metrics] == [1, 2]
    assert metrics[-1]['eval/num_examples'] == 12  # my_lab's 2 held-out clients.
    assert metrics[-1]['eval/accuracy'] == summary['final']['eval/accuracy']
    with np.load(run / 'checkpoints' / 'round-000002.npz') as saved:  # The user's model ran.
      shapes = [saved[k].shape for k in saved.files if k.startswith('leaf_')]
    assert [s for s in shapes if len(s) == 2][:len(kernels)] == kernels


def test_sweep_script_names_a_bad_import_path_in_one_line(lab_dir, tmp_path):
  """Every point's paths are imported before the first point runs."""
  result = run_lab_sweep(lab_dir, tmp_path, '--grid',
                         'model.factory=my_lab.tasks:narrow,my_lab.tasks:nothing')
  assert result.returncode != 0
  assert result.stderr.splitlines() == [
      "sweep.py: error: Config key model.factory names 'my_lab.tasks:nothing', which cannot be "
      "imported: my_lab.tasks has no attribute 'nothing'."]
  assert os.listdir(tmp_path) == []
