"""experiments/evaluate.py and fedtff.runner.checkpoint_eval: a run's checkpoint evaluated again."""

import json
import os
import shutil

import pytest

import fedtff
from fedtff.runner import checkpoint_eval
from tests import conftest
from tests import test_resume


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  summary = fedtff.run_experiment(test_resume.small_config(2), workdir)
  final_eval = {k: v for k, v in summary['final'].items() if k.startswith('eval/')}
  assert set(final_eval) >= {'eval/accuracy', 'eval/loss', 'eval/num_examples'}
  return workdir, final_eval


def test_library_reproduces_the_final_eval_metrics(trained_run):
  workdir, final_eval = trained_run
  metrics = checkpoint_eval.evaluate_checkpoint(workdir)
  assert metrics.pop('round') == 2
  assert metrics == pytest.approx(final_eval, rel=0, abs=1e-6)


def test_script_writes_the_same_metrics_as_json(trained_run, tmp_path):
  workdir, final_eval = trained_run
  output = tmp_path / 'eval.json'
  result = conftest.run_script(['experiments/evaluate.py', f'--workdir={workdir}',
                                f'--output={output}'], fresh=True)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert result.stdout == f'wrote the metrics of checkpoint round 2 to {output}\n'
  with open(output) as f:
    written = json.load(f)
  assert written.pop('round') == 2
  assert written == pytest.approx(final_eval, rel=0, abs=1e-6)


def test_missing_checkpoint_gets_one_line_naming_the_directory(trained_run, tmp_path):
  workdir, _ = trained_run
  shutil.copy(os.path.join(workdir, 'config.json'), tmp_path)
  result = conftest.run_script(['experiments/evaluate.py', f'--workdir={tmp_path}'])
  assert result.returncode != 0
  assert result.stderr == (f'evaluate.py: error: No checkpoint in {tmp_path}/checkpoints; '
                           'train the run first.\n')


def test_missing_workdir_is_refused_with_a_sentence(tmp_path):
  with pytest.raises(FileNotFoundError, match=f'^Run directory {tmp_path}/missing does not exist.$'):
    checkpoint_eval.evaluate_checkpoint(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match=f'^{tmp_path} is not a run directory: it has no config.json.$'):
    checkpoint_eval.evaluate_checkpoint(str(tmp_path))


def test_saved_config_is_rebuilt_on_the_schema(trained_run, tmp_path):
  workdir, _ = trained_run
  config = checkpoint_eval.load_config(workdir)
  assert config.to_dict() == fedtff.runner.config.resolve(test_resume.small_config(2)).to_dict()
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  saved['client']['lr'] = 0.1
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(fedtff.runner.config.ConfigError, match='^Unknown config key client.lr; '):
    checkpoint_eval.load_config(str(tmp_path))
