"""Prints per-client statistics of a config's data; optionally plots label distributions.

  python -m experiments.data_stats --config=configs/quickstart.py [--plot=labels.png]
  python -m experiments.data_stats --config=configs/quickstart.py --partitions=all

With --partitions, one line per partition (docs/data.md, "Partitioners") of
the config's data instead: its training clients' statistics.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import flags
from ml_collections import config_flags

from experiments import cli
from fedtff.research import data_stats

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, configs/NAME.py[:VARIANT].', lock_config=True)
_PARTITIONS = flags.DEFINE_list(
    'partitions', None, "Partitions to compare ('all' for every data.partition choice).")
_PLOT = flags.DEFINE_string('plot', None, 'Save a PNG of each training client\'s labels here.')


def _line(s) -> str:
  return (f"clients {s['num_clients']}  examples per client min {s['examples_min']} "
          f"median {s['examples_median']:g} max {s['examples_max']}  classes per client min "
          f"{s['classes_min']} median {s['classes_median']:g} max {s['classes_max']}  "
          f"dominant-label share {s['dominant_label_share']:.3f}  label TV distance to overall "
          f"{s['mean_tv_distance']:.3f}")


def _print_partitions(config, names) -> None:
  names = None if names == ['all'] else names
  for name, s in data_stats.partition_stats(config, names).items():
    print(f'{name:18s} ' + (_line(s) if isinstance(s, dict) else f'refused: {s}'))


def main(argv):
  cli.reject_extra_args(argv)
  if _PARTITIONS.value:
    _print_partitions(_CONFIG.value, _PARTITIONS.value)
    return
  stats = data_stats.config_stats(_CONFIG.value)
  for part in ('train', 'eval'):
    print(f'{part:5s} ' + _line(stats[part]))
  if _PLOT.value:
    data_stats.plot_label_distributions(stats['train']['histograms'], _PLOT.value,
                                        'labels per training client')
    print(f'label distribution plot: {_PLOT.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main, verbose=quiet_tf.VERBOSE)
