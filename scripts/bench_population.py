"""Benchmark: does the compiled engine's round cost grow with the population it samples from?

Runs the compiled engine's training loop (`fedtff.research.bench_tools.population_run`: what
`fedtff.run_experiment` does each round with engine='compiled': sample the cohort, read and pad its
round's batches, run the compiled round; FedAvgM on the quickstart's MLP 64->64->10, batch 10)
with --clients_per_round clients per round over generated populations of each --populations size,
whose clients' 30 examples are drawn from their ids when read (the data source holds only the
ids). Each run is a fresh process, the sizes in ABBA order (--repeats times), so memory figures
do not mix and load changes hit both alike. Prints each run, then the mean over repeats per size
and the ratio of the largest population to the smallest (target: at most 1.2).

  .venv/bin/python scripts/bench_population.py [--populations 3400,342477] [--rounds 50]
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from fedtff.research import bench_tools as bt

COLUMNS = {'setup_s': 'setup s', 'median_s': 'median s/round', 'rss_warm_mb': 'RSS MB after warm-up',
           'rss_end_mb': 'RSS MB at end', 'peak_mb': 'peak RSS MB'}


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--populations', default='3400,342477', help='Population sizes, comma-separated.')
  parser.add_argument('--clients_per_round', type=int, default=50)
  parser.add_argument('--rounds', type=int, default=50, help='Timed rounds per run, after 2 warm-up.')
  parser.add_argument('--repeats', type=int, default=1, help='ABBA repeats (2 runs per size each).')
  args = parser.parse_args(argv)
  sizes = [int(n) for n in args.populations.split(',')]
  print(f'population: {bt.machine_line()}; {args.clients_per_round} clients/round, '
        f'{args.rounds} timed rounds after 2 warm-up, each run a fresh process, sizes in ABBA order')
  print(bt.markdown_table(['run', 'clients'] + list(COLUMNS.values())))
  runs = {n: [] for n in sizes}
  for n in (sizes + sizes[::-1]) * args.repeats:
    runs[n].append(bt.run_in_subprocess('population_run', n, args.clients_per_round, args.rounds))
    print(bt.markdown_row([sum(map(len, runs.values())), f'{n:,}']
                          + [f'{runs[n][-1][k]:.4g}' for k in COLUMNS]), flush=True)
  mean = {n: {k: statistics.mean(r[k] for r in rs) for k in COLUMNS} for n, rs in runs.items()}
  small, big = mean[min(sizes)], mean[max(sizes)]
  print(f'\nmean over the {2 * args.repeats} runs of each size, and the ratio '
        f'{max(sizes):,} / {min(sizes):,} (target: median s/round and RSS at most 1.2):')
  print(bt.markdown_table(['clients'] + list(COLUMNS.values()), [
      [f'{n:,}'] + [f'{m[k]:.4g}' for k in COLUMNS] for n, m in mean.items()] + [
          ['ratio'] + [f'{big[k] / small[k]:.3f}' for k in COLUMNS]]))
  print(f'load average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main(sys.argv[1:])
