"""Accuracy and round time of the quickstart task with and without DP.

Runs, one after the other in this process, the plain quickstart and
configs/quickstart_dp.py's variants (all, or those named by --runs) into
RUNS_ROOT/<name>, and prints one markdown table: held-out accuracy (final and
best), mechanism, sampling, accountant, epsilon, delta, noise multiplier and
mean seconds per round (total training time / rounds).

  .venv/bin/python scripts/privacy_tradeoff.py [--root runs/privacy] [--rounds 100]
      [--runs plain,eps8,poisson_eps8,ftrl_eps8]

With --noise-table it runs nothing and prints the noise multiplier each
mechanism and accountant needs for epsilon = 1 and 8 on the quickstart's
setting (50 training clients, 10 per round, --rounds rounds, delta = 1/50^1.1).
"""

import argparse
import importlib.util
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
import fedtff

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = (('plain', 'quickstart.py', None),) + tuple(
    (variant, 'quickstart_dp.py', variant)
    for prefix in ('', 'poisson_', 'ftrl_', 'ddp_') for variant in (
        prefix + 'noiseless', prefix + 'eps8', prefix + 'eps1'))
QUICKSTART_CLIENTS, QUICKSTART_PER_ROUND = 50, 10


def load_config(file_name, variant):
  spec = importlib.util.spec_from_file_location(file_name[:-3],
                                                os.path.join(REPO_ROOT, 'configs', file_name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def table_row(name, workdir, summary):
  privacy = summary.get('privacy', {})
  cells = [name, f"{summary['final']['eval/accuracy']:.4f}",
           f"{summary['best']['eval/accuracy']['value']:.4f}",
           ' / '.join(privacy[k] for k in ('mechanism', 'accountant')) if privacy else '-',
           f"{privacy['epsilon']:.3g}" if privacy else '- (no DP)',
           f"{privacy['delta']:.3g}" if privacy else '-',
           f"{privacy['noise_multiplier']:.3f}" if privacy else '-',
           # A DP run withholds round_time_s (docs/privacy.md): the mean from the summary.
           f"{summary['total_time_s'] / summary['rounds_completed']:.3f}"]
  return '| ' + ' | '.join(cells) + ' |'


def noise_table(rounds):
  """Markdown rows: the noise multiplier for epsilon 1 and 8, per mechanism and accountant."""
  from fedtff.privacy import accounting, ddp, ftrl  # pylint: disable=g-import-not-at-top
  n, m = QUICKSTART_CLIENTS, QUICKSTART_PER_ROUND
  dim = ddp.model_dim(fedtff.tasks.build_task(load_config('quickstart.py', None)).model_fn)
  settings = [
      ('DP-FedAvg, fixed-size sampling, replace-one', 'RDP',
       lambda eps: accounting.noise_multiplier_for_epsilon(eps, m, n, rounds)),
      ('DP-FedAvg, Poisson sampling, add-or-remove', 'RDP',
       lambda eps: accounting.noise_multiplier_for_epsilon(eps, m, n, rounds, sampling='poisson')),
      ('DP-FedAvg, Poisson sampling, add-or-remove', 'PLD',
       lambda eps: accounting.noise_multiplier_for_epsilon(eps, m, n, rounds, sampling='poisson',
                                                           accountant='pld')),
      ('DP-FTRL, cyclic cohorts, replace-with-empty', 'RDP (single tree)',
       lambda eps: ftrl.noise_multiplier_for_epsilon(eps, m, n, rounds)),
      ('Distributed Skellam (20 bits), replace-one, no amplification', 'RDP (Skellam)',
       lambda eps: ddp.noise_multiplier_for_epsilon(eps, m, clip=1.0, dim=dim, rounds=rounds,
                                                    delta=accounting.default_delta(n))),
  ]
  lines = ['| mechanism | accountant | z for epsilon = 1 | z for epsilon = 8 |',
           '|---|---|---|---|']
  for name, accountant, solve in settings:
    lines.append(f'| {name} | {accountant} | {solve(1.0):.3f} | {solve(8.0):.3f} |')
    print(lines[-1], flush=True)
  return lines


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default=os.path.join(REPO_ROOT, 'runs', 'privacy'))
  parser.add_argument('--rounds', type=int, default=100)
  parser.add_argument('--runs', default=','.join(name for name, _, _ in RUNS),
                      help='comma-separated run names: ' + ', '.join(n for n, _, _ in RUNS))
  parser.add_argument('--noise-table', action='store_true')
  args = parser.parse_args(argv)
  if args.noise_table:
    print('\n'.join(noise_table(args.rounds)))
    return
  known = {name: (file_name, variant) for name, file_name, variant in RUNS}
  names = args.runs.split(',')
  unknown = [name for name in names if name not in known]
  if unknown:
    parser.error(f'unknown run(s) {", ".join(unknown)}; expected names from: {", ".join(known)}')
  lines = ['| run | final accuracy | best accuracy | mechanism / accountant | epsilon | delta | '
           'noise multiplier | mean s/round |', '|---|---|---|---|---|---|---|---|']
  for name in names:
    config = load_config(*known[name])
    config.total_rounds = args.rounds
    workdir = os.path.join(args.root, name)
    summary = fedtff.run_experiment(config, workdir, overwrite=True)
    lines.append(table_row(name, workdir, summary))
    print(lines[-1], flush=True)
  print('\n'.join(lines))


if __name__ == '__main__':
  main(sys.argv[1:])
