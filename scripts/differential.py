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

With --per-process N (and --results) the checks run in child processes of
this script, N new ones each, until the selection is done: one process that
builds hundreds of TFF processes grows past 5 GB. A child that dies (a crash,
the OOM killer) loses only its current combination: the next child starts with
it, and if that fresh process dies on it too, it is recorded as failed with
the exit status.

  python scripts/differential.py --results out.jsonl --per-process 20   # everything
  python scripts/differential.py --set shipped --filter quickstart --limit 5
  python scripts/differential.py --results out.jsonl --report
  python scripts/differential.py --set shipped --filter cifar100 --dtype float32   # the rounding
"""

import argparse
import os
import re
import subprocess
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
  parser.add_argument('--per-process', type=int, default=0,
                      help='run the checks in child processes, this many new ones each '
                      '(needs --results; 0: all in this process)')
  parser.add_argument('--max-new', type=int, default=0, help=argparse.SUPPRESS)  # A child's share.
  parser.add_argument('--report', action='store_true',
                      help="print --results' table over the selection; run nothing")
  args = parser.parse_args(argv)
  if args.rounds < 3:
    parser.error(f'--rounds must be at least 3, got {args.rounds}')
  if args.limit < 0:
    parser.error(f'--limit must be non-negative, got {args.limit}')
  if args.report and not args.results:
    parser.error('--report needs --results')
  if args.per_process < 0:
    parser.error(f'--per-process must be non-negative, got {args.per_process}')
  if args.per_process and not args.results:
    parser.error('--per-process needs --results')
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


def _finished(args, names):
  """The outcomes --results holds for `names`."""
  wanted = set(names)
  return [o for o in differential.load_outcomes(args.results) if o.name in wanted] if (
      args.results) else []


def run_in_children(argv, args, names):
  """Runs the selection in children of --per-process new checks each; 3 if one saw a change."""
  fingerprint = differential.source_fingerprint(REPO)
  while True:
    if differential.source_fingerprint(REPO) != fingerprint:
      print('stopped: fedtff/ or configs/ changed on disk during the run.', flush=True)
      return 3
    done = {o.name for o in _finished(args, names)}
    pending = [name for name in names if name not in done]
    if not pending:
      return 0
    child = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv +
                           ['--per-process', '0', '--max-new', str(args.per_process)],
                           check=False)
    if child.returncode == 3:
      return 3
    if pending[0] not in {o.name for o in _finished(args, names)}:  # Died on its first check.
      differential.save_outcome(args.results, differential.Outcome(
          pending[0], differential.FAILED,
          message=f'the process checking it died (exit status {child.returncode})'))
      print(f'failed   {pending[0]}: the process checking it died '
            f'(exit status {child.returncode})', flush=True)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  selected = checks(args)
  names = [name for name, _ in selected]
  if args.per_process and not args.report and run_in_children(argv, args, names) == 3:
    return 3
  outcomes = _finished(args, names)
  done, changed, new = {o.name for o in outcomes}, False, 0
  fingerprint = differential.source_fingerprint(REPO)
  for name, run in ([] if args.report or args.per_process else selected):
    if name in done:
      continue
    if args.max_new and new == args.max_new:
      break
    new += 1
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
  if args.max_new:  # A child of --per-process: its parent prints the table.
    return 3 if changed else 0
  print_table(outcomes, names)
  counts = dict(differential.tally(outcomes), **{'not run': len(names) - len(outcomes)})
  print(', '.join(f'{key} {value}' for key, value in counts.items()))
  return 3 if changed else 1 if counts['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
