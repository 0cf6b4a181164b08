"""Writes tests/slow_tests.txt, the tests `scripts/test.sh` leaves to `--all`, from measured times.

Usage: python scripts/slow_tests.py JUNIT_XML... [--threshold SECONDS] [--output PATH] [--root DIR]

Each JUNIT_XML is a run's report on the 2-core machines the suite targets, as
written by `scripts/test.sh --all --junitxml=FILE` (the whole suite) or
`scripts/test.sh --junitxml=FILE` (the quick tier, where a module fixture that
slow tests used to build is now built for a quick one). A case's time is its
setup, call and teardown, the largest over the reports. A case is slow when its
time reached the threshold, except that the fastest case of each parametrized
test stays quick, so the quick tier runs at least one case of every
parametrized test. A case the list already names that no report ran (a quick
tier's report does not run the slow tests) stays listed while its test exists. docs/performance.md
("Test suite time") gives the rule's measured effect.
"""

import argparse
import collections
import math
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Sequence, Set, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_THRESHOLD_S = 6.0
SECONDS_MARK = '  # '  # Between a node id and its seconds; a node id may hold a '#'.
HEADER = """\
# Tests that `scripts/test.sh` leaves out; `scripts/test.sh --all` (and CI) runs them too.
# Written by scripts/slow_tests.py from JUnit reports: each case that took at least
# {threshold:g} s in one of them, except the fastest case of each parametrized test. Seconds
# measured with 3 workers on 2 cores. Regenerate after adding slow tests; docs/performance.md.
"""

Case = Tuple[str, float]  # (pytest node id, seconds)


def listed_ids(path: str) -> Set[str]:
  """The node ids a list written by this script names (none if it does not exist)."""
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    return {line.partition(SECONDS_MARK)[0].strip() for line in f
            if line.strip() and not line.startswith('#')}


def names_a_test(node_id: str, root: str = REPO_ROOT) -> bool:
  """Whether `node_id`'s file exists and defines its test function (its parameters unchecked)."""
  path, _, name = node_id.partition('::')
  file = os.path.join(root, path)
  if not os.path.isfile(file):
    return False
  with open(file) as f:
    return re.search(rf'^def {re.escape(name.split("[")[0])}\(', f.read(), re.M) is not None


def _node_id(junit_path: str, case: ET.Element, root: str) -> str:
  name, module = case.get('name'), case.get('classname') or ''
  path = module.replace('.', '/') + '.py'
  if not module.startswith('tests.') or not os.path.isfile(os.path.join(root, path)):
    raise ValueError(f'{junit_path}: test case {name!r} has classname {module!r}; expected a '
                     f'module of tests/ such as tests.test_config (tests in classes are not '
                     f'supported)')
  return f'{path}::{name}'


def _seconds(junit_path: str, case: ET.Element) -> float:
  try:
    seconds = float(case.get('time', ''))
  except ValueError:
    seconds = math.nan
  if not math.isfinite(seconds) or seconds < 0:
    raise ValueError(f'{junit_path}: test case {case.get("name")!r} has time '
                     f'{case.get("time")!r}; expected a number of seconds')
  return seconds


def read_cases(junit_path: str, root: str = REPO_ROOT) -> List[Case]:
  """(node id, seconds) of every test case in a pytest JUnit XML report of `root`'s tests."""
  try:
    report = ET.parse(junit_path).getroot()
  except ET.ParseError as e:
    raise ValueError(f'{junit_path}: not a JUnit XML report ({e})') from e
  cases = [(_node_id(junit_path, case, root), _seconds(junit_path, case))
           for case in report.iter('testcase')]
  if not cases:
    raise ValueError(f'{junit_path}: no test cases; expected the JUnit report of a test run')
  return cases


def longest_times(junit_paths: Sequence[str], root: str = REPO_ROOT) -> Dict[str, float]:
  """{node id: seconds}, each case's largest time over the reports."""
  longest = {}
  for path in junit_paths:
    for node_id, seconds in read_cases(path, root):
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


def _write_atomically(path: str, text: str) -> None:
  fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix='.tmp-')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('junit_xml', nargs='+')
  parser.add_argument('--threshold', type=float, default=DEFAULT_THRESHOLD_S,
                      help='seconds from which a case is slow (default %(default)s)')
  parser.add_argument('--root', default=REPO_ROOT,
                      help='the repository whose tests/ the reports ran (default: this one)')
  parser.add_argument('--output', help='default: ROOT/tests/slow_tests.txt')
  args = parser.parse_args(argv)
  output = args.output or os.path.join(args.root, 'tests', 'slow_tests.txt')
  if not (math.isfinite(args.threshold) and args.threshold > 0):
    print(f'slow_tests.py: error: --threshold must be a positive number of seconds, got '
          f'{args.threshold}', file=sys.stderr)
    return 2
  try:
    times = longest_times(args.junit_xml, args.root)
    unmeasured = sorted(i for i in listed_ids(output) - set(times) if names_a_test(i, args.root))
    slow = slow_cases(times.items(), args.threshold)
    lines = [f'{node_id}{SECONDS_MARK}{seconds:.1f} s\n' for node_id, seconds in slow]
    lines += [f'{node_id}{SECONDS_MARK}not in these reports\n' for node_id in unmeasured]
    _write_atomically(output, HEADER.format(threshold=args.threshold) + ''.join(sorted(lines)))
  except (OSError, ValueError) as e:
    print(f'slow_tests.py: error: {e}', file=sys.stderr)
    return 1
  total = sum(times.values())
  slow_total = sum(seconds for _, seconds in slow)
  print(f'{len(slow)} of {len(times)} measured tests are slow: {slow_total:.0f} of {total:.0f} s '
        f'summed over the workers; the quick tier keeps {total - slow_total:.0f} s. '
        f'{len(unmeasured)} listed tests no report ran stay listed. Wrote {output}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
