"""Accuracy and round time of the quickstart task with and without DP-FedAvg.

Runs, one after the other in this process, the plain quickstart and
configs/quickstart_dp.py's noiseless, eps8 and eps1 variants into
RUNS_ROOT/<name>, and prints one markdown table: held-out accuracy (final and
best), epsilon, delta, noise multiplier and median seconds per round.

  .venv/bin/python scripts/privacy_tradeoff.py [--root runs/privacy] [--rounds 100]
"""

import argparse
import importlib.util
import os
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import fedtff
from fedtff import outputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = (('plain', 'quickstart.py', None), ('noiseless', 'quickstart_dp.py', 'noiseless'),
        ('eps8', 'quickstart_dp.py', 'eps8'), ('eps1', 'quickstart_dp.py', 'eps1'))


def load_config(file_name, variant):
  spec = importlib.util.spec_from_file_location(file_name[:-3],
                                                os.path.join(REPO_ROOT, 'configs', file_name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def table_row(name, workdir, summary):
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  privacy = summary.get('privacy', {})
  cells = [name, f"{summary['final']['eval/accuracy']:.4f}",
           f"{summary['best']['eval/accuracy']['value']:.4f}",
           f"{privacy['epsilon']:.3g}" if privacy else '- (no DP)',
           f"{privacy['delta']:.3g}" if privacy else '-',
           f"{privacy['noise_multiplier']:.3f}" if privacy else '-',
           f"{statistics.median(r['round_time_s'] for r in rows):.3f}"]
  return '| ' + ' | '.join(cells) + ' |'


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default=os.path.join(REPO_ROOT, 'runs', 'privacy'))
  parser.add_argument('--rounds', type=int, default=100)
  args = parser.parse_args(argv)
  lines = ['| run | final accuracy | best accuracy | epsilon | delta | noise multiplier | '
           'median s/round |', '|---|---|---|---|---|---|---|']
  for name, file_name, variant in RUNS:
    config = load_config(file_name, variant)
    config.total_rounds = args.rounds
    workdir = os.path.join(args.root, name)
    summary = fedtff.run_experiment(config, workdir, overwrite=True)
    lines.append(table_row(name, workdir, summary))
    print(lines[-1], flush=True)
  print('\n'.join(lines))


if __name__ == '__main__':
  main(sys.argv[1:])
