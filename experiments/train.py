"""Runs a federated training experiment from a config file.

  python experiments/train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/r \
      --config.total_rounds=3 --config.client.learning_rate=0.05

Writes the run directory (config.json, metrics.csv, metrics.jsonl, tensorboard/,
checkpoints/, summary.json) into --workdir. Rerunning the same command resumes
from the last checkpoint; raising --config.total_rounds extends a finished run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
import fedtff

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, configs/NAME.py[:VARIANT].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory for metrics and summaries.')
_QUIET = flags.DEFINE_bool('quiet', False, 'Print only the final line, not one line per round.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Start over in --workdir even if it holds a run of another config.')


def main(argv):
  cli.reject_extra_args(argv)
  config = _CONFIG.value
  progress = None if _QUIET.value else cli.RoundPrinter(config.total_rounds)
  summary = fedtff.run_experiment(config, _WORKDIR.value, progress_fn=progress,
                                  overwrite=_OVERWRITE.value)
  final = summary['final']
  engine = f" on the {summary['engine']} engine" if 'engine' in summary else ''
  if 'stopped' in summary:
    print(f"stopped early after round {summary['stopped']['round']}: "
          f"{summary['stopped']['reason']}", flush=True)
  print(f"test {_headline(final)} (loss {final.get('eval/loss', float('nan')):.4f}) after round "
        f"{final['round']}{engine}; run directory: {_WORKDIR.value}", flush=True)


def _headline(final) -> str:
  """'accuracy 0.9645', or with metrics of your own (model.metrics) the first of them."""
  name = 'eval/accuracy'
  if name not in final:
    own = [k for k in final if k.startswith('eval/') and k[5:] not in _COUNTERS]
    name = own[0] if own else name
  return f"{name[5:]} {final.get(name, float('nan')):.4f}"


_COUNTERS = ('loss', 'num_examples', 'num_batches')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main, verbose=quiet_tf.VERBOSE)
