"""An NIID-Bench-style table on the offline digits: algorithms x partitions x seeds.

NIID-Bench (Li, Diao, Chen and He, "Federated Learning on Non-IID Data Silos:
An Experimental Study", ICDE 2022, arXiv 2102.02079) compares FedAvg, FedProx,
SCAFFOLD and FedNova across label-skew partitions. This runs the same
comparison on scikit-learn's 1,797 8x8 digits, which ship offline: 10 clients,
all of them in every round (as NIID-Bench's 10-party setting), each holding out
`--test-fraction` of its examples; the pooled held-out examples of all clients
are the test set. Partitions are `fedtff.tasks.NIID_BENCH_PARTITIONS`: IID,
Dirichlet(0.5) label skew (balanced sizes, at least 10 examples per client),
and #C = 1 and #C = 2 (each client holds 1 or 2 labels). Every algorithm runs
the same local training, plain SGD (SCAFFOLD's option II and FedNova's a_i = τ_i
assume it), on the compiled engine, and the server step is SGD 1.0. FedProx
uses μ = `--mu` (NIID-Bench's 0.01 by default).

Prints a markdown table of the final test accuracy, mean ± std over seeds.

  .venv/bin/python scripts/niid_table.py [--rounds 30] [--epochs 5] [--seeds 0,1,2]
      [--algorithms fedavg,fedprox,scaffold,fednova] [--workdir /tmp/niid_table]
"""

import argparse
import csv
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

import fedtff
from fedtff import tasks
from fedtff.algorithms import registry
from configs import quickstart

ALGORITHMS = tuple(a for a in ('fedavg', 'fedprox', 'scaffold', 'fednova')
                   if a in registry.ALGORITHMS)


def config_for(algorithm: str, partition: str, seed: int, args):
  """The quickstart task (digits, MLP 64) in NIID-Bench's 10-party setting."""
  config = quickstart.get_config()
  config.data.update(tasks.NIID_BENCH_PARTITIONS[partition])
  config.data.num_clients = 10
  config.data.num_test_clients = 0
  config.data.test_fraction = args.test_fraction
  config.data.batch_size = args.batch_size
  config.data.client_epochs = args.epochs
  config.clients_per_round = 10
  config.algorithm.name = algorithm
  if algorithm == 'fedprox':
    config.algorithm.proximal_strength = args.mu
  config.client.learning_rate = args.learning_rate
  config.server.learning_rate = 1.0
  config.server.momentum = 0.0
  config.engine = 'compiled'
  config.seed = seed
  config.total_rounds = config.rounds_per_eval = config.rounds_per_checkpoint = args.rounds
  config.output.tensorboard = False
  return config


def run(algorithm: str, partition: str, seed: int, args) -> float:
  workdir = os.path.join(args.workdir, f'{algorithm}_{partition}_{seed}')
  fedtff.run_experiment(config_for(algorithm, partition, seed, args), workdir, overwrite=True)
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return float(list(csv.DictReader(f))[-1]['eval/accuracy'])


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--learning-rate', type=float, default=0.05)
  parser.add_argument('--mu', type=float, default=0.01)
  parser.add_argument('--test-fraction', type=float, default=0.2)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--algorithms', default=','.join(ALGORITHMS))
  parser.add_argument('--partitions', default=','.join(tasks.NIID_BENCH_PARTITIONS))
  parser.add_argument('--workdir', default='/tmp/niid_table')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  partitions = args.partitions.split(',')
  print(f'digits, 10 clients all in every round, {args.rounds} rounds of {args.epochs} local '
        f'epochs (SGD {args.learning_rate}, batch {args.batch_size}), FedProx mu {args.mu}, '
        f'{args.test_fraction:.0%} of each client held out, seeds {seeds}; final test accuracy, '
        'mean ± std over seeds')
  print('\n| algorithm | ' + ' | '.join(partitions) + ' |\n|---|' + '---|' * len(partitions))
  for algorithm in args.algorithms.split(','):
    cells = []
    for partition in partitions:
      accuracy = np.array([run(algorithm, partition, seed, args) for seed in seeds])
      cells.append(f'{accuracy.mean():.3f} ± {accuracy.std():.3f}')
    print(f'| {algorithm} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
