"""Writes tests/slow_tests.txt, the tests `scripts/test.sh` leaves to `--all`, from measured times.

Usage: python scripts/slow_tests.py JUNIT_XML... [--threshold SECONDS] [--output PATH]

Each JUNIT_XML is a run's report on the 2-core machines the suite targets, as
written by `scripts/test.sh --all --junitxml=FILE` (the whole suite) or
`scripts/test.sh --junitxml=FILE` (the quick tier, where a module fixture that
slow tests used to build is now built for a quick one). A case's time is its
setup, call and teardown, the largest over the reports. A case is slow when its
time reached the threshold, except that the fastest case of each parametrized
test stays quick: the quick tier still runs every test function.
docs/performance.md ("Test suite time") gives the rule's measured effect.
"""

import argparse
import collections
import sys
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Sequence, Tuple

DEFAULT_THRESHOLD_S = 6.0
DEFAULT_OUTPUT = 'tests/slow_tests.txt'
HEADER = """\
# Tests that `scripts/test.sh` leaves out; `scripts/test.sh --all` (and CI) runs them too.
# Written by scripts/slow_tests.py from JUnit reports: each case that took at least
# {threshold:g} s in one of them, except the fastest case of each parametrized test. Seconds
# measured with 3 workers on 2 cores. Regenerate after adding slow tests; docs/performance.md.
"""

Case = Tuple[str, float]  # (pytest node id, seconds)


def read_cases(junit_path: str) -> List[Case]:
  """(node id, seconds) of every test case in a pytest JUnit XML report."""
  cases = []
  for case in ET.parse(junit_path).getroot().iter('testcase'):
    module = case.get('classname', '')
    if not module.startswith('tests.'):
      raise ValueError(f'{junit_path}: test case {case.get("name")!r} has classname '
                       f'{module!r}; expected a module of tests/ such as tests.test_config')
    cases.append((f'{module.replace(".", "/")}.py::{case.get("name")}', float(case.get('time'))))
  if not cases:
    raise ValueError(f'{junit_path}: no test cases; expected the report of a whole-suite run')
  return cases


def longest_times(junit_paths: Sequence[str]) -> Dict[str, float]:
  """{node id: seconds}, each case's largest time over the reports."""
  longest = {}
  for path in junit_paths:
    for node_id, seconds in read_cases(path):
      longest[node_id] = max(seconds, longest.get(node_id, 0.0))
  return longest


def slow_cases(cases: Iterable[Case], threshold_s: float) -> List[Case]:
  """The cases at or over `threshold_s`, but never the fastest case of a parametrized test."""
  families = collections.defaultdict(list)
  for node_id, seconds in cases:
    families[node_id.split('[')[0]].append((node_id, seconds))
  slow = []
  for family in families.values():
    family.sort(key=lambda case: case[1])
    kept_quick = 1 if len(family) > 1 else 0
    slow.extend(case for case in family[kept_quick:] if case[1] >= threshold_s)
  return sorted(slow)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('junit_xml', nargs='+')
  parser.add_argument('--threshold', type=float, default=DEFAULT_THRESHOLD_S,
                      help='seconds from which a case is slow (default %(default)s)')
  parser.add_argument('--output', default=DEFAULT_OUTPUT)
  args = parser.parse_args(argv)
  if args.threshold <= 0:
    parser.error(f'--threshold must be a positive number of seconds, got {args.threshold}')
  try:
    cases = sorted(longest_times(args.junit_xml).items())
  except (OSError, ET.ParseError, ValueError) as e:
    print(f'slow_tests.py: error: {e}', file=sys.stderr)
    return 1
  slow = slow_cases(cases, args.threshold)
  lines = [HEADER.format(threshold=args.threshold)]
  lines += [f'{node_id}  # {seconds:.1f} s\n' for node_id, seconds in slow]
  with open(args.output, 'w') as f:
    f.writelines(lines)
  total = sum(seconds for _, seconds in cases)
  slow_total = sum(seconds for _, seconds in slow)
  print(f'{len(slow)} of {len(cases)} tests are slow: {slow_total:.0f} of {total:.0f} s '
        f'summed over the workers; the quick tier keeps {total - slow_total:.0f} s. '
        f'Wrote {args.output}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
