"""`config.engine='compiled'` through the experiment runner: the TFF engine's rows,
checkpoints either engine resumes, and clear refusals of what compiled lacks."""

import io
import os
import shutil

import numpy as np
import pytest

from configs import fedprox
from configs import quickstart
from experiments import cli
import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import checkpoint_eval
from fedtff.runner import outputs
from fedtff.research import sweeps
from fedtff.runner import training
from fedtff.privacy import accounting
from tests import test_experiment

ROUNDS, CHECKPOINT_EVERY = 10, 5
TIMING = ('round_time_s', 'examples_per_s')


def quickstart_config(engine):
  """configs/quickstart.py shortened to ROUNDS rounds (FedAvg with server momentum)."""
  config = quickstart.get_config()
  config.engine = engine
  config.total_rounds = ROUNDS
  config.rounds_per_eval = CHECKPOINT_EVERY
  config.rounds_per_checkpoint = CHECKPOINT_EVERY
  return config


def small_compiled_config(**overrides):
  """test_experiment's 12-client config on the compiled engine, 2 rounds, evaluated each."""
  return test_experiment.small_config(**{'engine': 'compiled', 'total_rounds': 2,
                                         'rounds_per_eval': 1, **overrides})


def rows_of(workdir):
  return outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))


def header_of(workdir):
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return f.readline().strip().split(',')


def assert_same_rows(expected, actual, tolerance):
  assert [r['round'] for r in actual] == [r['round'] for r in expected]
  for want, got in zip(expected, actual):
    assert list(got) == list(want)
    for column, value in want.items():
      if column in TIMING:
        continue
      if value is None or column.endswith(('num_examples', 'num_batches')):
        assert got[column] == value, column
      else:
        assert got[column] == pytest.approx(value, abs=tolerance), column


@pytest.fixture(scope='module')
def quickstart_runs(tmp_path_factory):
  """`{engine: (workdir, progress rows, printed progress)}` of the shortened quickstart."""
  runs = {}
  for engine in ('tff', 'compiled'):
    workdir = str(tmp_path_factory.mktemp(f'quickstart_{engine}'))
    rows, printed = [], io.StringIO()
    printer = cli.RoundPrinter(ROUNDS, stream=printed)
    fedtff.run_experiment(quickstart_config(engine), workdir,
                          progress_fn=lambda row: (rows.append(row), printer(row)))
    runs[engine] = (workdir, rows, printed.getvalue())
  return runs


def test_fedavg_rows_equal_the_tff_engine(quickstart_runs):
  tff_dir, _, _ = quickstart_runs['tff']
  compiled_dir, compiled_rows, printed = quickstart_runs['compiled']
  assert header_of(compiled_dir) == header_of(tff_dir)
  assert_same_rows(rows_of(tff_dir), rows_of(compiled_dir), tolerance=1e-4)
  assert [r['train/loss'] for r in compiled_rows] == pytest.approx(
      [r['train/loss'] for r in rows_of(compiled_dir)])
  lines = printed.splitlines()
  assert len(lines) == ROUNDS and lines[0].startswith(f'round  1/{ROUNDS}  loss ')
  assert 'test accuracy' in lines[CHECKPOINT_EVERY - 1] and 'ETA' in lines[-1]


def test_shortened_quickstart_reaches_the_tff_accuracy(quickstart_runs):
  final = {engine: rows_of(workdir)[-1] for engine, (workdir, _, _) in quickstart_runs.items()}
  assert final['tff']['eval/accuracy'] > 0.7  # Training got somewhere in ROUNDS rounds.
  assert final['compiled']['eval/accuracy'] == pytest.approx(final['tff']['eval/accuracy'], abs=0.005)


@pytest.mark.parametrize('written_on, resumed_on', [('compiled', 'compiled'), ('compiled', 'tff'),
                                                    ('tff', 'compiled')])
def test_resume_from_a_checkpoint_on_either_engine(quickstart_runs, tmp_path, written_on,
                                                   resumed_on):
  workdir = str(tmp_path / 'run')
  shutil.copytree(quickstart_runs[written_on][0], workdir)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  os.remove(os.path.join(checkpoint_dir, f'round-{ROUNDS:06d}.npz'))  # Killed before it.
  assert checkpoints.rounds(checkpoint_dir) == [CHECKPOINT_EVERY]
  summary = fedtff.run_experiment(quickstart_config(resumed_on), workdir)
  assert summary['rounds_completed'] == ROUNDS
  tolerance = 1e-6 if written_on == resumed_on else 1e-4
  assert_same_rows(rows_of(quickstart_runs[written_on][0]), rows_of(workdir), tolerance)
  assert checkpoint_eval.load_config(workdir).engine == resumed_on


def test_fedprox_rows_equal_fedtffs_tff_fedprox(tmp_path):
  """configs/fedprox.py (FedProx, mu=1, L2-regularized logistic regression), shortened."""
  rows = {}
  for engine in ('tff', 'compiled'):
    config = fedprox.get_config('synthetic_1_1:fedprox')
    config.engine = engine
    config.total_rounds = 2
    config.clients_per_round = 5
    config.data.client_epochs = 1
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = rows_of(tmp_path / engine)
  assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-4)


def test_dp_accounting_and_divergence_detection(tmp_path):
  """One DP run whose server step blows the weights up: round 1 is written with
  the privacy spent and checkpointed, round 2's loss is not finite."""
  config = small_compiled_config(total_rounds=4, rounds_per_eval=2, rounds_per_checkpoint=1)
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  config.aggregator.noise_multiplier = 1.0
  config.privacy.publish_client_metrics = True
  config.server.learning_rate = 1e30
  with pytest.raises(training.TrainingDivergedError, match=r'Training diverged at round 2: '
                     r'.*\. The last good checkpoint \(round 1\)'):
    fedtff.run_experiment(config, str(tmp_path))
  (row,) = rows_of(tmp_path)
  tracker = accounting.PrivacyTracker(1.0, 4, 9, None)  # 4 of the 9 training clients.
  assert row['round'] == 1 and np.isfinite(row['train/loss'])
  assert row[accounting.EPSILON_METRIC] == pytest.approx(tracker.epsilon(1))
  assert checkpoints.rounds(tmp_path / 'checkpoints') == [1]


@pytest.mark.parametrize('overrides', [
    {'algorithm.name': 'mimelite'},
    {'client.lr_schedule': 'inv_sqrt_decay', 'client.lr_decay_steps': 1,
     'client.lr_warmup_rounds': 1},
], ids=['mimelite', 'schedule'])
def test_mime_lite_and_schedules_give_the_tff_engines_rows(overrides, tmp_path):
  """Mime Lite and a client learning-rate schedule through the runner: the same
  rows (training and evaluation metrics, the schedule's learning rate) on both
  engines."""
  rows = {}
  for engine in ('tff', 'compiled'):
    config = sweeps.point_config(small_compiled_config(engine=engine), overrides)
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = rows_of(tmp_path / engine)
  assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-5)
  assert len(rows['compiled']) == 2


REFUSED = {
    'workers': ({'runtime.workers': ('localhost:8000',)},
                "runtime.workers needs engine='tff': the compiled engine runs on this machine"),
}


def test_adaptive_robust_norms_run_and_resume(tmp_path):
  """Adaptive clipping and zeroing run through the runner; their estimates are
  checkpointed in TFF's state and the run resumes from it."""
  config = small_compiled_config(total_rounds=2, rounds_per_checkpoint=1)
  config.aggregator.kind = 'robust'
  config.aggregator.zeroing = True
  fedtff.run_experiment(config, str(tmp_path))
  assert [int(row['round']) for row in rows_of(tmp_path)] == [1, 2]
  config.total_rounds = 3
  fedtff.run_experiment(config, str(tmp_path))
  assert [int(row['round']) for row in rows_of(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_unsupported_options_are_refused(name, tmp_path):
  overrides, message = REFUSED[name]
  with pytest.raises(fedtff.runner.config.ConfigError, match=message) as raised:
    config = sweeps.point_config(small_compiled_config(), overrides)
    fedtff.run_experiment(config, str(tmp_path))
  assert "engine='tff'" in str(raised.value) and '\n' not in str(raised.value)
  assert not checkpoints.rounds(tmp_path / 'checkpoints')

