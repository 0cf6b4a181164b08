"""Runs a benchmark suite (configs x seeds) and writes its results table and plots.

  python scripts/reproduce.py fedprox --seeds 0,1,2 --root runs/reproduce
  python scripts/reproduce.py mcmahan_digits --shortened
  python scripts/reproduce.py fedprox --seeds 0,1,2 --engine compiled
  python scripts/reproduce.py reddi --seeds 1 --variants emnist_character:fedadam

Suites: reddi (Reddi et al. 2021, arXiv 2003.00295), fedprox (Li et al. 2020,
arXiv 1812.06127), mcmahan_digits (McMahan et al. 2017, arXiv 1602.05629).
Rerunning skips complete runs and resumes partial ones. The table goes to
`<root>/<suite>/results.md` (and stdout), the curves to `<root>/<suite>/*.png`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedtff.research import benchmarks  # pylint: disable=wrong-import-position


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('suite', choices=benchmarks.SUITES)
  parser.add_argument('--seeds', default='0', help='Comma-separated seeds, e.g. 0,1,2.')
  parser.add_argument('--root', default='runs/reproduce')
  parser.add_argument('--shortened', action='store_true',
                      help="Apply the config module's SHORTENED overrides (fewer rounds).")
  parser.add_argument('--variants', default='', help='Comma-separated subset of VARIANTS.')
  parser.add_argument('--rounds', type=int, default=0, help='Override total_rounds (tests).')
  parser.add_argument('--engine', choices=('tff', 'compiled'), default='',
                      help="Run on this engine instead of the config's (docs/performance.md).")
  return parser.parse_args(argv)


def _header(args, seeds) -> list:
  label = ' (SHORTENED)' if args.shortened or args.rounds else ''
  command = 'python scripts/reproduce.py ' + ' '.join(sys.argv[1:])
  return [f'# {args.suite}{label}', '',
          f'- command: `{command}`',
          f'- machine: {platform.machine()}, {os.cpu_count()} cores ({platform.node()})',
          f'- date: {datetime.date.today().isoformat()}', f'- seeds: {seeds}',
          f"- engine: {args.engine or 'as in the configs'}"]


def main(argv=None) -> int:
  args = _parse(argv)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  overrides = dict({'total_rounds': args.rounds} if args.rounds else {},
                   **({'engine': args.engine} if args.engine else {}))
  variants = [v for v in args.variants.split(',') if v] or None
  runs = benchmarks.run_suite(args.suite, args.root, seeds, shortened=args.shortened,
                              variants=variants, overrides=overrides)
  print(benchmarks.write_results(args.suite, args.root, runs, _header(args, seeds)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
