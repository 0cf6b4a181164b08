"""Per-round callbacks and early stopping (fedtff.runner.callbacks) under `run_experiment`."""

import json
import os
import shutil

import numpy as np
import pytest

import fedtff
from fedtff.runner import callbacks
from fedtff.runner import checkpoints
from fedtff.runner import experiment
from fedtff import tasks
from tests import conftest
from tests import test_resume


def config(total_rounds=6, engine='tff', **stop):
  config = test_resume.small_config(total_rounds, rounds_per_eval=1, engine=engine)
  config.stop.update(stop)
  return config


def read_json(path):
  with open(path) as f:
    return json.load(f)


def column(rows, name):
  return np.array([row[name] for row in rows])


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """6 rounds, evaluated every round, without stopping: the reference."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  fedtff.run_experiment(config(6), workdir)
  return test_resume.comparable_rows(workdir)


@pytest.fixture(scope='module')
def target_run(straight, tmp_path_factory):
  """5 rounds with stop.target at round 3's evaluation accuracy of the reference."""
  target = straight[2]['eval/accuracy'] - 1e-6  # Accuracies are ratios of counts.
  workdir = str(tmp_path_factory.mktemp('target'))
  summary = fedtff.run_experiment(config(5, metric='eval/accuracy', target=target), workdir)
  return workdir, target, summary


def test_stops_at_the_first_round_reaching_the_target(straight, target_run):
  workdir, target, summary = target_run
  expected = int(np.argmax(column(straight, 'eval/accuracy') >= target)) + 1  # NumPy, by hand.
  assert expected <= 3
  rows = test_resume.comparable_rows(workdir)
  assert [row['round'] for row in rows] == list(range(1, expected + 1))
  test_resume.assert_same_rows(rows, straight[:expected])
  first = int(np.argmax(column(rows, 'eval/accuracy') >= target)) + 1
  assert summary['rounds_to_target'] == {'metric': 'eval/accuracy', 'target': target,
                                         'round': first}
  assert first == expected == summary['rounds_completed']
  assert summary['stopped']['round'] == expected
  assert summary['stopped']['reason'].startswith('eval/accuracy reached the target: ')
  assert read_json(os.path.join(workdir, 'summary.json')) == json.loads(json.dumps(summary))
  assert checkpoints.rounds(os.path.join(workdir, 'checkpoints'))[-1] == expected


def test_rerunning_a_stopped_run_runs_nothing(target_run):
  workdir, target, summary = target_run
  mtime = os.stat(os.path.join(workdir, 'metrics.csv')).st_mtime_ns
  rounds = []
  again = fedtff.run_experiment(config(5, metric='eval/accuracy', target=target), workdir,
                                progress_fn=rounds.append)
  assert rounds == [] and again == summary
  assert os.stat(os.path.join(workdir, 'metrics.csv')).st_mtime_ns == mtime


def test_the_stop_checkpoint_ends_a_run_whose_summary_was_lost(target_run, tmp_path):
  # As if killed between the stop round's checkpoint and summary.json.
  workdir, target, summary = target_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, 'summary.json'))
  rounds = []
  again = fedtff.run_experiment(config(5, metric='eval/accuracy', target=target), copy,
                                progress_fn=rounds.append)
  assert rounds == []
  assert again['stopped'] == summary['stopped']
  assert again['rounds_to_target'] == summary['rounds_to_target']
  assert again['rounds_completed'] == summary['rounds_completed']


def test_extending_a_stopped_run_continues_past_the_stop(straight, target_run, tmp_path):
  workdir, target, summary = target_run
  extended = str(tmp_path / 'extended')
  shutil.copytree(workdir, extended)
  result = fedtff.run_experiment(config(6, metric='eval/accuracy', target=target), extended)
  # The target was reached already: the run goes on to total_rounds, and equals a run
  # that never stopped.
  test_resume.assert_same_rows(test_resume.comparable_rows(extended), straight)
  assert result['rounds_completed'] == 6 and 'stopped' not in result
  assert result['rounds_to_target'] == summary['rounds_to_target']


def test_resume_before_the_stop_stops_where_a_straight_run_does(straight, target_run, tmp_path):
  workdir, target, summary = target_run
  stop_round = summary['stopped']['round']
  assert stop_round > 1
  first = fedtff.run_experiment(config(1), str(tmp_path))  # As if interrupted after round 1.
  assert first['rounds_completed'] == 1
  resumed = fedtff.run_experiment(config(5, metric='eval/accuracy', target=target), str(tmp_path))
  assert resumed['stopped'] == summary['stopped']
  assert resumed['rounds_to_target'] == summary['rounds_to_target']
  test_resume.assert_same_rows(test_resume.comparable_rows(tmp_path), straight[:stop_round])


def _plateau_round(values, patience, min_delta):
  """Keras EarlyStopping by hand: the round whose value makes `patience` in a row without
  an improvement of more than min_delta (losses: lower is better)."""
  best, wait = None, 0
  for round_num, value in enumerate(values, start=1):
    if best is None or best - value > min_delta:
      best, wait = value, 0
    else:
      wait += 1
      if wait == patience:
        return round_num
  return None


def test_plateau_stop_matches_a_hand_computation(straight, tmp_path):
  patience, min_delta = 1, 0.3
  expected = _plateau_round(column(straight, 'eval/loss'), patience, min_delta)
  assert expected is not None and expected < 6
  summary = fedtff.run_experiment(
      config(6, metric='eval/loss', patience=patience, min_delta=min_delta), str(tmp_path))
  assert summary['stopped']['round'] == summary['rounds_completed'] == expected
  assert summary['stopped']['reason'].startswith('eval/loss has not improved on ')
  assert 'rounds_to_target' not in summary
  # Extending it with another patience continues from the stop.
  extended = fedtff.run_experiment(config(6, metric='eval/loss', patience=3, min_delta=min_delta),
                                   str(tmp_path))
  assert extended['rounds_completed'] == 6 and 'stopped' not in extended
  test_resume.assert_same_rows(test_resume.comparable_rows(tmp_path), straight)


def test_plateau_stop_on_the_compiled_engine(tmp_path):
  # min_delta 10: no later loss improves on the first, so patience 2 stops at round 3.
  summary = fedtff.run_experiment(
      config(6, metric='eval/loss', patience=2, min_delta=10.0, engine='compiled'), str(tmp_path))
  assert summary['stopped']['round'] == summary['rounds_completed'] == 3
  assert len(test_resume.comparable_rows(tmp_path)) == 3


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_user_callback_sees_the_checkpointed_weights_and_stops(engine, tmp_path):
  seen = []

  def watch(end):
    seen.append(end)
    if end.round_num == 2:
      return 'seen enough'

  cfg = config(4, engine=engine)
  cfg.rounds_per_checkpoint = 3
  summary = fedtff.run_experiment(cfg, str(tmp_path), callbacks=[watch])
  assert summary['stopped'] == {'round': 2, 'reason': 'seen enough'}
  assert [end.round_num for end in seen] == [1, 2]
  rows = test_resume.comparable_rows(tmp_path)
  assert seen[1].metrics['train/loss'] == pytest.approx(rows[1]['train/loss'], abs=1e-6)
  assert [row['round'] for row in seen[1].history] == [1, 2]
  process = experiment.build_process(cfg, tasks.build_task(fedtff.runner.config.resolve(cfg)))
  restored = checkpoints.restore_latest(str(tmp_path / 'checkpoints'), process.initialize())
  assert restored.round_num == 2  # The stop round is checkpointed though none was due.
  saved = restored.state.global_model_weights
  weights = seen[1].model_weights
  assert len(weights.trainable) == len(saved.trainable) > 0
  for got, want in zip(list(weights.trainable) + list(weights.non_trainable),
                       list(saved.trainable) + list(saved.non_trainable)):
    np.testing.assert_array_equal(got, want)
  assert not np.array_equal(seen[0].model_weights.trainable[0], seen[1].model_weights.trainable[0])


def test_callback_returning_true_stops_with_its_name(tmp_path):
  def enough(end):
    return end.round_num == 1

  summary = fedtff.run_experiment(config(3), str(tmp_path), callbacks=[enough])
  assert summary['stopped'] == {'round': 1, 'reason': 'enough asked to stop'}


@pytest.mark.parametrize('stop, message', [
    (dict(target=0.9), "stop.target and stop.patience need stop.metric, e.g. "
                       "stop.metric='eval/accuracy'."),
    (dict(metric='eval/accuracy'), "stop.metric='eval/accuracy' needs stop.target (stop when it "
                                   'is reached) or stop.patience (stop on a plateau).'),
    (dict(metric='accuracy', target=0.9), "Config key stop.metric must be a metrics column "
                                          "'train/<name>' or 'eval/<name>', e.g. 'eval/accuracy', "
                                          "got 'accuracy'."),
    (dict(metric='eval/auc', target=0.9), "Config key stop.metric is 'eval/auc', whose better "
                                          "direction fedtff does not know; set stop.mode='max' "
                                          "or 'min'."),
    (dict(metric='eval/loss', patience=-1), 'Config key stop.patience must be at least 0, got -1.'),
    (dict(metric='eval/loss', patience=1, min_delta=-0.5),
     'Config key stop.min_delta must be at least 0, got -0.5.'),
    (dict(metric='eval/loss', patience=1, mode='down'),
     "Config key stop.mode is 'down'; expected one of: auto, max, min."),
], ids=['no_metric', 'no_condition', 'not_a_column_name', 'unknown_direction', 'patience',
        'min_delta', 'mode'])
def test_bad_stop_options_get_one_line(stop, message, tmp_path):
  with pytest.raises(fedtff.runner.config.ConfigError) as error:
    fedtff.run_experiment(config(2, **stop), str(tmp_path / 'run'))
  assert str(error.value) == message
  assert not (tmp_path / 'run').exists()


def test_a_metric_the_run_lacks_is_refused_before_the_run_directory(tmp_path):
  with pytest.raises(fedtff.runner.config.ConfigError) as error:
    fedtff.run_experiment(config(2, metric='eval/mse', target=0.1), str(tmp_path / 'run'))
  assert str(error.value) == (
      "Config key stop.metric is 'eval/mse', not a metric of this run; expected one of: "
      'train/accuracy, train/loss, train/num_examples, train/num_batches, eval/accuracy, '
      'eval/loss, eval/num_examples, eval/num_batches.')
  assert not (tmp_path / 'run').exists()


def test_a_dp_run_cannot_stop_on_withheld_client_metrics():
  cfg = config(2, metric='train/loss', target=0.1)
  cfg.aggregator.kind = 'dp'
  cfg.aggregator.noise_multiplier = 1.0
  cfg.algorithm.weighted = False
  with pytest.raises(fedtff.runner.config.ConfigError) as error:
    fedtff.runner.config.validate(cfg)
  assert str(error.value) == (
      "stop.metric='train/loss' would stop a DP run on the client metrics it withholds "
      '(privacy.publish_client_metrics=False); stop on an eval/ metric.')


def test_built_in_stops_on_hand_made_histories():
  rows = [{'round': 1, 'eval/loss': 3.0}, {'round': 2}, {'round': 3, 'eval/loss': 2.0},
          {'round': 4, 'eval/loss': 2.5}, {'round': 5, 'eval/loss': 1.9}]
  assert callbacks.rounds_to_target(rows, 'eval/loss', 2.0) == 3
  assert callbacks.rounds_to_target(rows, 'eval/loss', 1.0) is None
  assert callbacks.rounds_to_target(rows, 'eval/loss', 2.5, mode='max') == 1
  plateau = callbacks.PlateauStop('eval/loss', 1, min_delta=0.2)

  def fires(stop, upto):
    end = callbacks.RoundEnd(upto, rows[upto - 1], None, rows[:upto])
    return stop(end)

  # 2.0 improves on 3.0; 2.5 does not (wait 1: stop); 1.9 beats 2.0 by 0.1 <= 0.2 (wait 2: no
  # second stop, the plateau fired once).
  assert [bool(fires(plateau, r)) for r in range(1, 6)] == [False, False, False, True, False]
  target = callbacks.TargetStop('eval/loss', 2.0)
  assert [bool(fires(target, r)) for r in range(1, 6)] == [False, False, True, False, False]


def test_train_script_stops_from_flags_and_says_why(tmp_path):
  # Any loss is at most 100: the target is reached at round 1 of 3.
  config_file = tmp_path / 'small.py'
  config_file.write_text('from tests import test_resume\n\n\n'
                         'def get_config():\n  return test_resume.small_config(3)\n')
  result = conftest.run_script([
      'experiments/train.py', f'--config={config_file}', f'--workdir={tmp_path / "run"}',
      '--quiet', '--config.stop.metric=train/loss', '--config.stop.target=100'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('stopped early after round 1: train/loss reached the target: ')
  assert lines[0].endswith(' <= 100')
  summary = read_json(tmp_path / 'run' / 'summary.json')
  assert summary['rounds_to_target'] == {'metric': 'train/loss', 'target': 100.0, 'round': 1}
