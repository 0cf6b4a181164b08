"""Digits accuracy under sign-flipping attackers: FedAvg against each robust aggregator.

The quickstart task (configs/quickstart.py: 1,797 8x8 digits over 60 clients,
Dirichlet(0.5), 10 held out; MLP 64) with unweighted FedAvg (client SGD 0.1,
one epoch; server SGD 1.0, no momentum), `--clients` per round, on the compiled
engine. Each round ⌊fraction · n + ½⌋ clients send −scale · their update
(`attack.kind='sign_flipping'`). Krum, Multi-Krum and Bulyan assume f = the
number of attackers (Bulyan: at most ⌊(n − 3) / 4⌋, its limit); the trimmed
mean drops β = `--trim` at each end. Prints a markdown table of the final
test accuracy (mean ± std over seeds) and the f used.

  .venv/bin/python scripts/robust_attacks.py [--rounds 40] [--seeds 0,1,2] [--clients 20]
      [--fractions 0,0.1,0.3] [--scale 3] [--workdir /tmp/robust_attacks]
"""

import argparse
import csv
import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

import fedtff
from fedtff.algorithms import robust
from configs import quickstart

AGGREGATORS = ('mean',) + robust.RULES


def attackers(fraction: float, clients: int) -> int:
  """The attackers per round (`fedtff.algorithms.attacks.attacker_mask`'s count)."""
  return int(math.floor(fraction * clients + 0.5))


def byzantine_clients(kind: str, fraction: float, clients: int) -> int:
  """f: the attackers, capped by Bulyan's n ≥ 4f + 3."""
  f = attackers(fraction, clients)
  return min(f, (clients - 3) // 4) if kind == 'bulyan' else f


def config_for(kind: str, fraction: float, seed: int, args):
  config = quickstart.get_config()
  config.server.momentum = 0.0
  config.algorithm.weighted = False
  config.engine = 'compiled'
  config.seed = seed
  config.total_rounds = config.rounds_per_eval = config.rounds_per_checkpoint = args.rounds
  config.clients_per_round = args.clients
  config.output.tensorboard = False
  config.aggregator.kind = kind
  config.aggregator.trim_fraction = args.trim
  config.aggregator.byzantine_clients = byzantine_clients(kind, fraction, args.clients)
  if fraction:
    config.attack.kind = 'sign_flipping'
    config.attack.fraction = fraction
    config.attack.scale = args.scale
  return config


def run(kind: str, fraction: float, seed: int, args) -> float:
  workdir = os.path.join(args.workdir, f'{kind}_{fraction}_{seed}')
  fedtff.run_experiment(config_for(kind, fraction, seed, args), workdir, overwrite=True)
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return float(list(csv.DictReader(f))[-1]['eval/accuracy'])


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=40)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--clients', type=int, default=20)
  parser.add_argument('--fractions', default='0,0.1,0.3')
  parser.add_argument('--scale', type=float, default=3.0)
  parser.add_argument('--trim', type=float, default=0.3)
  parser.add_argument('--aggregators', default=','.join(AGGREGATORS))
  parser.add_argument('--workdir', default='/tmp/robust_attacks')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  fractions = [float(f) for f in args.fractions.split(',')]
  print(f'digits (quickstart task), unweighted FedAvg, {args.clients} clients/round, '
        f'{args.rounds} rounds, sign flipping scale {args.scale}, trimmed-mean β {args.trim}, '
        f'seeds {seeds}; final test accuracy, mean ± std over seeds')
  header = ' | '.join(f'{f:.0%} attackers ({attackers(f, args.clients)}/{args.clients})'
                      for f in fractions)
  print(f'\n| aggregator | {header} |\n|---|' + '---|' * len(fractions))
  for kind in args.aggregators.split(','):
    cells = []
    for fraction in fractions:
      accuracy = np.array([run(kind, fraction, seed, args) for seed in seeds])
      f = (f', f={byzantine_clients(kind, fraction, args.clients)}'
           if kind in ('krum', 'multi_krum', 'bulyan') else '')
      cells.append(f'{accuracy.mean():.3f} ± {accuracy.std():.3f}{f}')
    print(f'| {kind} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
