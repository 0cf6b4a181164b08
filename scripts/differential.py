"""Differential tests: both engines over every shipped config and the generated grid.

For each combination (fedtff.compiled.differential: shipped configs/*.py and their
variants, then algorithm x aggregator x weighting x schedule x model kind),
runs both engines for --rounds rounds from the same state on tiny data and
prints one line, `<status> <name>: <detail>`; then the tally: checked, passed,
failed, refused by the compiled engine, invalid. Exit status 1 if any failed.

  python scripts/differential.py                       # everything
  python scripts/differential.py --set shipped --filter quickstart --limit 5
"""

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import quiet_tf  # pylint: disable=g-import-not-at-top,unused-import  # Before TF.
from fedtff.compiled import differential  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--set', choices=('all', 'shipped', 'grid'), default='all',
                      help='which combinations: shipped configs, the grid, or both')
  parser.add_argument('--filter', default='',
                      help='a regular expression; only combinations whose name it matches')
  parser.add_argument('--limit', type=int, default=0,
                      help='check at most this many combinations (0: all)')
  parser.add_argument('--rounds', type=int, default=differential.ROUNDS,
                      help='rounds per combination (at least 3)')
  args = parser.parse_args(argv)
  if args.rounds < 3:
    parser.error(f'--rounds must be at least 3, got {args.rounds}')
  if args.limit < 0:
    parser.error(f'--limit must be non-negative, got {args.limit}')
  try:
    args.filter = re.compile(args.filter)
  except re.error as e:
    parser.error(f'--filter is not a regular expression: {e}')
  return args


def combinations(args):
  sets = []
  if args.set in ('all', 'shipped'):
    sets.append(differential.shipped_combinations(os.path.join(REPO, 'configs')))
  if args.set in ('all', 'grid'):
    sets.append(differential.grid_combinations())
  chosen = [c for s in sets for c in s if args.filter.search(c.name)]
  return chosen[:args.limit] if args.limit else chosen


def main(argv=None):
  args = parse_args(argv)
  outcomes = []
  for combination in combinations(args):
    start = time.perf_counter()
    outcome = differential.check(combination, rounds=args.rounds)
    outcomes.append(outcome)
    print(f'{outcome.line()} [{time.perf_counter() - start:.1f} s]', flush=True)
  counts = differential.tally(outcomes)
  print(', '.join(f'{key} {value}' for key, value in counts.items()))
  return 1 if counts['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
