"""Benchmark: a fedtff-built FedAvg (or FedProx) process against the one built by hand in TFF.

Both processes run on the same clients (the TFF tutorial workload: Dense
784->10, batch 20, SGD 0.02) on the same fedtff-owned worker, alternating round
by round in ABBA order so that machine noise hits both alike. Prints the median seconds per
round of each and their ratio (fedtff / raw TFF).

With `--algorithm fedprox` it compares fedtff's FedProx client work (its own,
with the proximal term's sign corrected) against TFF 0.87's
`build_weighted_fed_prox`, mu = 1: the same work per step, opposite sign.

  .venv/bin/python scripts/bench_overhead.py [--clients 10] [--examples 200] [--rounds 30]
      [--algorithm fedavg|fedprox]
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import fedtff
from fedtff.research import bench_tools as bt

MU = 1.0


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clients', type=int, default=10)
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--algorithm', choices=('fedavg', 'fedprox'), default='fedavg')
  args = parser.parse_args(argv)
  datasets = bt.random_datasets(args.clients, args.examples)
  options = dict(proximal_strength=MU) if args.algorithm == 'fedprox' else {}
  processes = {
      'raw TFF': bt.raw_tff_process(datasets[0].element_spec, algorithm=args.algorithm,
                                    proximal_strength=MU),
      'fedtff': fedtff.build_learning_process(
          bt.tutorial_model, datasets[0], algorithm=args.algorithm,
          client_optimizer=fedtff.build_optimizer('sgd', bt.TUTORIAL_LEARNING_RATE), **options),
  }
  rounds = {name: bt.Stateful(p.initialize(), lambda s, p=p: p.next(s, datasets).state)
            for name, p in processes.items()}
  # The first rounds include tracing and compilation.
  medians = bt.medians(bt.alternate(rounds, args.rounds, warmup=2, order='abba'))
  print(f'workload: {args.algorithm}, {args.clients} clients x {args.examples} examples, Dense 784->10, '
        f'batch 20; {args.rounds} alternating rounds each')
  for name, median in medians.items():
    print(f'{name:8s} median {median:.4f} s/round')
  print(f"ratio fedtff / raw TFF: {medians['fedtff'] / medians['raw TFF']:.3f}")


if __name__ == '__main__':
  main(sys.argv[1:])
