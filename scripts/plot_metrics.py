"""Plots accuracy and loss against round for one run directory or several.

  python scripts/plot_metrics.py runs/quickstart
  python scripts/plot_metrics.py runs/sweep/seed=0 runs/sweep/seed=1 --output=seeds.png
  python scripts/plot_metrics.py runs/a --metrics=eval/accuracy,eval/loss
  python scripts/plot_metrics.py runs/a --noclient_band

Reads RUN_DIR/metrics.csv of each run and writes one PNG with a panel per kind
of metric: training dashed, evaluation solid, one colour per run, the legend
naming the runs by directory. A run with per-client evaluation
(`--config.per_client_eval=True`) gets the 10th-90th percentile over its
held-out clients shaded around each evaluation line. Default output:
RUN_DIR/metrics.png for one run, ./metrics_comparison.png for several.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import app
from absl import flags

from experiments import cli
from fedtff.research import plots

_OUTPUT = flags.DEFINE_string('output', None, 'The PNG to write; see the module docstring.')
_METRICS = flags.DEFINE_list('metrics', list(plots.DEFAULT_METRICS),
                             'metrics.csv columns to draw, comma-separated.')
_BAND = flags.DEFINE_bool(
    'client_band', True, 'Shade the 10th-90th percentile over held-out clients of evaluation '
    'metrics, for runs that logged them (per_client_eval=True).')


def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError('Give at least one run directory: plot_metrics.py RUN_DIR [RUN_DIR ...]')
  output = _OUTPUT.value or plots.default_output(run_dirs)
  figure = plots.plot_runs(run_dirs, metrics=_METRICS.value, client_band=_BAND.value)
  figure.savefig(output, dpi=120)
  print(f'wrote {output}', flush=True)


if __name__ == '__main__':
  cli.run(main, verbose=quiet_tf.VERBOSE)
