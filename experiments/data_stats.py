"""Prints per-client statistics of a config's data; optionally plots label distributions.

  python -m experiments.data_stats --config=configs/quickstart.py [--plot=labels.png]
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
_PLOT = flags.DEFINE_string('plot', None, 'Save a PNG of each training client\'s labels here.')


def main(argv):
  cli.reject_extra_args(argv)
  stats = data_stats.config_stats(_CONFIG.value)
  for part in ('train', 'eval'):
    s = stats[part]
    print(f"{part:5s} clients {s['num_clients']}  examples per client min {s['examples_min']} "
          f"median {s['examples_median']:g} max {s['examples_max']}  dominant-label share "
          f"{s['dominant_label_share']:.3f}  label TV distance to overall {s['mean_tv_distance']:.3f}")
  if _PLOT.value:
    data_stats.plot_label_distributions(stats['train']['histograms'], _PLOT.value,
                                        'labels per training client')
    print(f'label distribution plot: {_PLOT.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main, verbose=quiet_tf.VERBOSE)
