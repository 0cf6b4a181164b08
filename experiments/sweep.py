"""Runs a config over a cartesian grid of overrides, one run directory per point.

  python experiments/sweep.py --config=configs/quickstart.py --workdir=runs/sweep \
      --grid server.learning_rate=0.1,1.0 --grid seed=0,1 --config.total_rounds=50

Runs every combination of the --grid values in turn, each into
--workdir/<overrides>, e.g. runs/sweep/seed=0,server.learning_rate=0.1, on top
of the config and its --config.<field> overrides (a grid key wins over an
override of the same field). Rerunning skips complete points and resumes a
partly run one. Writes --workdir/sweep.csv and --workdir/sweep.md, the
TensorBoard HParams dashboard's files in --workdir/hparams (open it with
`tensorboard --logdir <workdir>/hparams`) and --workdir/sweep.png, which
draws --metric against round for every point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import flags
from ml_collections import config_flags

from experiments import cli
from fedtff.research import sweeps

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, configs/NAME.py[:VARIANT].', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Sweep directory: one run directory per point, sweep.csv and sweep.md.')
_GRID = flags.DEFINE_multi_string(
    'grid', None, 'KEY=VALUE[,VALUE...], e.g. seed=0,1; repeat for more keys.')
_METRIC = flags.DEFINE_string(
    'metric', sweeps.DEFAULT_METRIC, 'The metrics column sweep.png compares the points on.')
_QUIET = flags.DEFINE_bool('quiet', False, 'Print one line per point, not one line per round.')


def main(argv):
  cli.reject_extra_args(argv)
  grid = sweeps.parse_grid(_GRID.value)
  sweeps.check_metric(_METRIC.value)
  progress = None if _QUIET.value else lambda config: cli.RoundPrinter(config.total_rounds)
  sweeps.run_sweep(_CONFIG.value, _WORKDIR.value, grid, make_progress_fn=progress,
                   log_fn=lambda line: print(line, flush=True), metric=_METRIC.value)
  with open(os.path.join(_WORKDIR.value, sweeps.SWEEP_MD)) as f:
    print(f.read(), end='')
  print(f'sweep table: {os.path.join(_WORKDIR.value, sweeps.SWEEP_CSV)}', flush=True)
  print(f'HParams dashboard: tensorboard --logdir {os.path.join(_WORKDIR.value, sweeps.HPARAMS)}; '
        f'plot: {os.path.join(_WORKDIR.value, sweeps.SWEEP_PNG)}', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir', 'grid'])
  cli.run(main, verbose=quiet_tf.VERBOSE)
