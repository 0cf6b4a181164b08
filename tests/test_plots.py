"""fedtff.research.plots and scripts/plot_metrics.py: accuracy and loss against round."""

import os
import struct

import pytest

from fedtff.research import plots
from tests import conftest

COLUMNS = ['round', 'round_time_s', 'examples_per_s', 'train/accuracy', 'train/loss',
           'train/num_examples', 'train/num_batches', 'eval/accuracy', 'eval/loss',
           'eval/num_examples', 'eval/num_batches']


def write_run(directory, accuracies):
  """A metrics.csv of len(accuracies) rounds, evaluated every second round."""
  os.makedirs(directory)
  lines = [','.join(COLUMNS)]
  for round_num, accuracy in enumerate(accuracies, start=1):
    train = [accuracy, 2.0 - accuracy, 300.0, 30.0]
    evaluated = [accuracy - 0.1, 2.2 - accuracy, 90.0, 2.0] if round_num % 2 == 0 else [''] * 4
    lines.append(','.join(str(v) for v in [round_num, 0.1, 3000.0] + train + evaluated))
  (directory / 'metrics.csv').write_text('\n'.join(lines) + '\n')
  return str(directory)


@pytest.fixture
def two_runs(tmp_path):
  return [write_run(tmp_path / 'lr0.1', [0.3, 0.5, 0.6, 0.7]),
          write_run(tmp_path / 'lr1.0', [0.4, 0.6, 0.8, 0.9])]


def png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR'
  return struct.unpack('>II', header[16:24])


def test_plots_two_runs_with_their_names_as_legend(two_runs, tmp_path):
  figure = plots.plot_runs(two_runs)
  assert [t.get_text() for t in figure.legends[0].get_texts()] == ['lr0.1', 'lr1.0']
  accuracy, loss = figure.axes
  assert (accuracy.get_ylabel(), loss.get_ylabel()) == ('accuracy', 'loss')
  lines = accuracy.get_lines()
  assert [line.get_linestyle() for line in lines] == ['--', '-', '--', '-']
  assert [list(line.get_xdata()) for line in lines[:2]] == [[1, 2, 3, 4], [2, 4]]
  assert list(lines[3].get_ydata()) == pytest.approx([0.5, 0.8])
  figure.savefig(tmp_path / 'plot.png', dpi=120)
  width, height = png_size(tmp_path / 'plot.png')
  assert 1000 <= width <= 1400 and 400 <= height <= 600
  assert os.path.getsize(tmp_path / 'plot.png') > 20000


def test_chosen_metrics_set_the_panels(two_runs):
  figure = plots.plot_runs(two_runs, metrics=['eval/loss'])
  assert len(figure.axes) == 1 and figure.axes[0].get_ylabel() == 'loss'
  with pytest.raises(ValueError, match='has no column eval/auc; its columns are: round, '):
    plots.plot_runs(two_runs, metrics=['eval/auc'])


def test_run_names_tell_duplicates_apart():
  assert plots.run_names(['/x/a/run', '/x/b/run', 'solo/']) == ['a/run', 'b/run', 'solo']
  assert plots.run_names(['/x/run', '/x/run']) == ['run', 'run (2)']


def test_default_output():
  assert plots.default_output(['runs/a']) == os.path.join('runs/a', 'metrics.png')
  assert plots.default_output(['runs/a', 'runs/b']) == 'metrics_comparison.png'


def test_script_writes_the_default_png_of_one_run(two_runs):
  result = conftest.run_script(['scripts/plot_metrics.py', two_runs[0]], fresh=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'wrote {two_runs[0]}/metrics.png\n' and result.stderr == ''
  assert png_size(os.path.join(two_runs[0], 'metrics.png'))[0] > 500


@pytest.fixture(scope='module')
def refused(tmp_path_factory):
  """scripts/plot_metrics.py's refused command lines (test_script_writes_the_default_png_of_one_run
  runs it in a fresh process): (not a run directory, its result, no arguments' result)."""
  not_a_run = tmp_path_factory.mktemp('not_a_run')
  missing_csv = conftest.run_script(['scripts/plot_metrics.py', str(not_a_run)])
  no_argument = conftest.run_script(['scripts/plot_metrics.py'])
  return not_a_run, missing_csv, no_argument


def test_missing_metrics_csv_gets_one_line_and_nonzero_exit(refused):
  not_a_run, result, _ = refused
  assert result.returncode != 0
  assert result.stderr == (f'plot_metrics.py: error: {not_a_run}/metrics.csv does not exist; '
                           f'is {not_a_run} a run directory?\n')


def test_no_run_directory_gets_one_line_and_exit_2(refused):
  result = refused[2]
  assert (result.returncode, result.stderr) == (
      2, 'plot_metrics.py: error: Give at least one run directory: '
      'plot_metrics.py RUN_DIR [RUN_DIR ...]\n')
