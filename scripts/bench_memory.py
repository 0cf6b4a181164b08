"""Benchmark: resident memory of a long run, to catch growth from round to round.

Runs configs/quickstart.py (or --config) for --rounds rounds into a temporary
run directory with fedtff.run_experiment and records, after every round, the
resident set size (RSS) of this process and of its TFF worker_binary
processes. Prints RSS after round 10 and after the last round, their ratio
(target: at most 1.10) and the median seconds per round.

  .venv/bin/python scripts/bench_memory.py [--rounds=100]
"""

import os
import statistics
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from experiments import quiet_tf  # pylint: disable=g-import-not-at-top  # Before TensorFlow.

from absl import flags
from ml_collections import config_flags

from experiments import cli
import fedtff
from fedtff.research import bench_tools

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO_ROOT, 'configs', 'quickstart.py'), 'Experiment config file.')
_ROUNDS = flags.DEFINE_integer('rounds', 100, 'Rounds to run; RSS is compared at round 10 and this.')
_REFERENCE_ROUND = 10
_MIB = bench_tools.MIB


def main(argv):
  cli.reject_extra_args(argv)
  config = _CONFIG.value
  config.total_rounds = _ROUNDS.value
  samples = {}
  round_times = []

  def record(row):
    samples[int(row['round'])] = (bench_tools.rss_bytes(children=False),
                                  bench_tools.worker_rss_bytes())
    round_times.append(row['round_time_s'])

  with tempfile.TemporaryDirectory() as workdir:
    fedtff.run_experiment(config, workdir, progress_fn=record)
  reference, last = min(_REFERENCE_ROUND, config.total_rounds), config.total_rounds
  print('| after round | trainer RSS MiB | workers RSS MiB | total RSS MiB |\n|---|---|---|---|')
  for round_num in (reference, last):
    trainer, workers = samples[round_num]
    print(f'| {round_num} | {trainer / _MIB:.1f} | {workers / _MIB:.1f} | '
          f'{(trainer + workers) / _MIB:.1f} |')
  ratio = sum(samples[last]) / sum(samples[reference])
  print(f'\ntotal RSS round {last} / round {reference}: {ratio:.3f} (target <= 1.10)')
  print(f'median round time: {statistics.median(round_times):.3f} s over {len(round_times)} rounds',
        flush=True)


if __name__ == '__main__':
  cli.run(main, verbose=quiet_tf.VERBOSE)
