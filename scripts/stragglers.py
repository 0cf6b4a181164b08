"""FedProx's Figure 1 setting: Synthetic(1,1) with 0%, 50% and 90% stragglers.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(arXiv 1812.06127), Section 5.2 and Figure 1: in each round a share of the
10 selected devices straggle (run a uniformly drawn number of local steps);
FedAvg drops them, FedProx aggregates their partial work, with mu = 0 and
mu > 0 (1 on Synthetic(1,1)). configs/fedprox.py gives the recipe (E = 20,
batch 10, client SGD lr 0.01, L2 1e-3, weighted), `heterogeneity.*` the
stragglers (`fedtff.data.heterogeneity`).

Runs, one after the other in this process, every (fraction, method, seed)
into ROOT/<fraction>_<method>_s<seed> (a finished run is read back, not
rerun; a run of fewer rounds is extended from its checkpoint, taken every
CHECKPOINT_EVERY rounds), and prints one markdown table: per method and straggler fraction,
over the seeds, the global model's loss on every device's held-out 10%
(`eval/loss`) at the end and its largest value over the second half of the
rounds (how unstable the run is), the largest change of test accuracy
between consecutive rounds over the second half (`largest late jump`,
`fedtff.research.benchmarks.largest_jump`), and the final and best test
accuracy (mean ± std). `train/loss` is not used: it averages the clients' losses
during their local steps, over different clients for each method.

  .venv/bin/python scripts/stragglers.py [--root runs/stragglers] [--rounds 200]
      [--seeds 0,1,2] [--fractions 0,0.5,0.9] [--engine compiled] [--table-only]

`--table-only` runs nothing: it prints the table from the metrics.csv of the
runs under ROOT.
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

from configs import fedprox
import fedtff
from fedtff.research import benchmarks
from fedtff.runner import outputs

# name -> (algorithm, mu, straggler policy)
METHODS = {'FedAvg (drop)': ('fedavg', 0.0, 'drop'),
           'FedProx mu=0 (keep)': ('fedprox', 0.0, 'keep_partial'),
           'FedProx mu=1 (keep)': ('fedprox', 1.0, 'keep_partial')}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default='runs/stragglers')
  parser.add_argument('--rounds', type=int, default=200)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--fractions', default='0,0.5,0.9')
  parser.add_argument('--engine', default='compiled')
  parser.add_argument('--table-only', action='store_true')
  return parser.parse_args(argv)


CHECKPOINT_EVERY = 100


def straggler_config(fraction: float, method: str, seed: int, rounds: int, engine: str):
  """configs/fedprox.py's Synthetic(1,1) with `fraction` stragglers under `method`."""
  algorithm, mu, policy = METHODS[method]
  config = fedprox.get_config(f'synthetic_1_1:{algorithm}')
  config.algorithm.proximal_strength = mu
  config.heterogeneity.straggler_fraction = fraction
  config.heterogeneity.straggler_policy = policy
  config.total_rounds = rounds
  config.rounds_per_eval = 1
  config.rounds_per_checkpoint = CHECKPOINT_EVERY  # Fixed, so that a run can be extended.
  config.seed = seed
  config.engine = engine
  config.output.tensorboard = False
  return config


def run_one(root, fraction, method, seed, rounds, engine, table_only=False):
  """The run's metric rows (run now, or read back if finished or `table_only`)."""
  algorithm, mu, _ = METHODS[method]
  workdir = os.path.join(root, f'{fraction:g}_{algorithm}_mu{mu:g}_s{seed}')
  if not table_only:
    fedtff.run_experiment(straggler_config(fraction, method, seed, rounds, engine), workdir)
  return outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))


def _cell(values, digits=3):
  values = np.asarray(values, np.float64)
  return f'{values.mean():.{digits}f} ± {values.std():.{digits}f}'


def summary_cells(runs):
  """Final test loss, max test loss over the second half, final and best test accuracy."""
  final_loss = [rows[-1]['eval/loss'] for rows in runs]
  half = [max(r['eval/loss'] for r in rows[len(rows) // 2:]) for rows in runs]
  jumps = [benchmarks.largest_jump(benchmarks.Run('', 0, '', 'complete', rows, None),
                                   'eval/accuracy') for rows in runs]
  return [_cell(final_loss), _cell(half), _cell(jumps),
          _cell([rows[-1]['eval/accuracy'] for rows in runs]),
          _cell([max(r['eval/accuracy'] for r in rows) for rows in runs])]


def main(argv=None) -> int:
  args = _parse(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  fractions = [float(f) for f in args.fractions.split(',')]
  print(f'| stragglers | method | final test loss | max test loss, rounds '
        f'{args.rounds // 2 + 1}-{args.rounds} | largest late jump | final test accuracy | '
        'best test accuracy |')
  print('|---|---|---|---|---|---|---|')
  for fraction in fractions:
    for method in METHODS:
      runs = [run_one(args.root, fraction, method, seed, args.rounds, args.engine,
                      args.table_only) for seed in seeds]
      print(f'| {fraction:.0%} | {method} | ' + ' | '.join(summary_cells(runs)) + ' |',
            flush=True)
  print(f'\n{len(seeds)} seeds ({args.seeds}), {args.rounds} rounds, engine {args.engine}; '
        'mean ± std over seeds.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
