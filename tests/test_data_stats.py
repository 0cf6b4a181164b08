"""experiments/data_stats.py and fedtff.research.data_stats."""

import numpy as np

import fedtff
from fedtff.research import data_stats
from tests import conftest


def test_client_stats_of_a_known_split():
  labels = np.array([0, 0, 1, 1, 0, 1])
  arrays = fedtff.data.FederatedArrays(np.zeros((6, 1)), labels, [np.array([0, 1]),
                                                                   np.array([2, 3, 4, 5])],
                                       ['a', 'b'])
  stats = data_stats.client_stats(arrays)
  assert (stats['num_clients'], stats['examples_min'], stats['examples_median'],
          stats['examples_max']) == (2, 2, 3.0, 4)
  assert stats['dominant_label_share'] == (1.0 + 0.75) / 2
  np.testing.assert_array_equal(stats['histograms'], [[2, 0], [1, 3]])
  assert stats['mean_tv_distance'] == (0.5 + 0.25) / 2


def test_script_prints_stats_and_saves_the_plot(tmp_path):
  plot = tmp_path / 'labels.png'
  result = conftest.run_script(['-m', 'experiments.data_stats', '--config=configs/quickstart.py',
                                f'--plot={plot}'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('train clients 50  examples per client min ')
  assert lines[1].startswith('eval  clients 10  ')
  assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_partition_stats_show_each_partition_or_why_it_is_refused():
  config = fedtff.runner.config.base_config()
  config.data.update(dict(num_clients=20, num_test_clients=4, classes_per_client=1,
                          class_assignment='first-deterministic'))
  stats = data_stats.partition_stats(config, ['pathological', 'linear', 'natural_id'])
  assert (stats['pathological']['classes_min'], stats['pathological']['classes_max']) == (1, 1)
  assert stats['pathological']['dominant_label_share'] == 1.0
  assert stats['linear']['examples_min'] < stats['linear']['examples_max']
  assert stats['natural_id'].startswith("data.partition='natural_id' needs a source")


def test_script_prints_one_line_per_partition():
  result = conftest.run_script(['-m', 'experiments.data_stats', '--config=configs/quickstart.py',
                                '--partitions=pathological,natural_id'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('pathological       clients 50  examples per client min ')
  assert 'classes per client min 2 median 2 max 2' in lines[0]
  assert lines[1].startswith('natural_id         refused: ')
