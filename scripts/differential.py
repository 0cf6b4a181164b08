"""Differential tests: both engines over every shipped config, the generated grid, dropout.

For each combination (fedtff.compiled.differential: shipped configs/*.py and their
variants, then algorithm x aggregator x weighting x schedule x model kind, then
the dropout-rate checks), runs both engines for --rounds rounds from the same
state on tiny data and prints one line, `<status> <name>: <detail>` (and the
traceback of a failure that raised); then a table per family and the tally:
checked, passed, failed, refused by the compiled engine, invalid, not run.
Exit status 1 if any failed, 3 if fedtff's source changed during the run.

With --results FILE each outcome is appended to FILE as it ends, and a rerun
skips the combinations FILE already holds (a checkpoint: a run stopped by
`timeout` resumes); --report prints FILE's table over the selection, running nothing.

--dtype float64 runs both engines in float64 (their models, and so weights,
optimizer states and aggregates), where two engines doing the same maths differ
by float64 rounding; the default, auto, does so only for the models of
`differential.FLOAT64_MODELS` (the ResNet-18, whose float32 rounding alone
exceeds 1e-5; docs/performance.md).

  python scripts/differential.py                       # everything
  python scripts/differential.py --set shipped --filter quickstart --limit 5
  python scripts/differential.py --results out.jsonl --report
  python scripts/differential.py --set shipped --filter cifar100 --dtype float32   # the rounding
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
SETS = ('shipped', 'grid', 'dropout')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--set', choices=('all',) + SETS, default='all',
                      help='which combinations: shipped configs, the grid, dropout rates, or all')
  parser.add_argument('--filter', default='',
                      help='a regular expression; only combinations whose name it matches')
  parser.add_argument('--limit', type=int, default=0,
                      help='check at most this many combinations (0: all)')
  parser.add_argument('--rounds', type=int, default=differential.ROUNDS,
                      help='rounds per combination (at least 3)')
  parser.add_argument('--results', default='',
                      help='JSON-lines checkpoint: outcomes are appended, and those in it skipped')
  parser.add_argument('--dtype', choices=('auto',) + differential.DTYPES, default='auto',
                      help='float type of both engines; auto: float64 for the models of '
                      'FLOAT64_MODELS only')
  parser.add_argument('--report', action='store_true',
                      help="print --results' table over the selection; run nothing")
  args = parser.parse_args(argv)
  if args.rounds < 3:
    parser.error(f'--rounds must be at least 3, got {args.rounds}')
  if args.limit < 0:
    parser.error(f'--limit must be non-negative, got {args.limit}')
  if args.report and not args.results:
    parser.error('--report needs --results')
  try:
    args.filter = re.compile(args.filter)
  except re.error as e:
    parser.error(f'--filter is not a regular expression: {e}')
  return args


def checks(args):
  """[(name, run)] of the selection: run() returns the combination's Outcome."""
  chosen = []
  if args.set in ('all', 'shipped'):
    chosen += differential.shipped_combinations(os.path.join(REPO, 'configs'))
  if args.set in ('all', 'grid'):
    chosen += differential.grid_combinations()
  dtype = None if args.dtype == 'auto' else args.dtype
  pairs = [(c.name, lambda c=c: differential.check(c, rounds=args.rounds, dtype=dtype))
           for c in chosen]
  if args.set in ('all', 'dropout'):
    pairs += [(f'dropout:rate={rate}', lambda rate=rate: differential.check_dropout_rate(rate))
              for rate in differential.DROPOUT_RATES]
  pairs = [(name, run) for name, run in pairs if args.filter.search(name)]
  return pairs[:args.limit] if args.limit else pairs


def print_table(outcomes, names):
  columns = ('checked',) + differential.STATUSES + ('not run',)
  print(f'{"family":32s} ' + ' '.join(f'{c:>7s}' for c in columns) + '  largest |diff| (share)')
  for fam, row in differential.tally_by_family(outcomes, names).items():
    largest = (f'{row["largest"]:.2g} ({row["share"]:.2g})' if row['largest'] is not None
               else '-')
    print(f'{fam:32s} ' + ' '.join(f'{row[c]:7d}' for c in columns) + f'  {largest}')


def main(argv=None):
  args = parse_args(argv)
  selected = checks(args)
  names = [name for name, _ in selected]
  outcomes = [o for o in differential.load_outcomes(args.results) if o.name in set(names)] if (
      args.results) else []
  done, changed = {o.name for o in outcomes}, False
  fingerprint = differential.source_fingerprint(REPO)
  for name, run in ([] if args.report else selected):
    if name in done:
      continue
    if differential.source_fingerprint(REPO) != fingerprint:
      print(f'stopped before {name}: fedtff/ or configs/ changed on disk during the run; '
            'rerun from a checkout nothing edits (autograph reads source lazily).', flush=True)
      changed = True
      break
    start = time.perf_counter()
    outcome = run()
    outcomes.append(outcome)
    if args.results:
      differential.save_outcome(args.results, outcome)
    print(f'{outcome.line()} [{time.perf_counter() - start:.1f} s]', flush=True)
    if outcome.traceback:
      print(outcome.traceback, flush=True)
  print_table(outcomes, names)
  counts = dict(differential.tally(outcomes), **{'not run': len(names) - len(outcomes)})
  print(', '.join(f'{key} {value}' for key, value in counts.items()))
  return 3 if changed else 1 if counts['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
