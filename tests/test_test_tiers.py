"""The quick tier of `scripts/test.sh`: tests/slow_tests.txt and scripts/slow_tests.py."""

import os
import re
import subprocess
import sys

from tests import conftest

SCRIPT = os.path.join(conftest.REPO_ROOT, 'scripts', 'slow_tests.py')

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="tests.test_a" name="test_quick" time="1.0"/>
<testcase classname="tests.test_a" name="test_slow" time="8.0"/>
<testcase classname="tests.test_b" name="test_cases[x]" time="12.0"/>
<testcase classname="tests.test_b" name="test_cases[y]" time="9.0"/>
<testcase classname="tests.test_b" name="test_cases[z]" time="3.0"/>
<testcase classname="tests.test_b" name="test_all_slow[p]" time="20.0"/>
<testcase classname="tests.test_b" name="test_all_slow[q]" time="30.0"/>
</testsuite></testsuites>
"""


def run_generator(*args):
  return subprocess.run([sys.executable, SCRIPT] + list(args), capture_output=True, text=True,
                        cwd=conftest.REPO_ROOT, check=False)


def test_every_listed_slow_test_names_a_test_function_of_its_file():
  missing = []
  for node_id in sorted(conftest.slow_test_ids()):
    path, function = node_id.split('::')
    with open(os.path.join(conftest.REPO_ROOT, path)) as f:
      if not re.search(rf'^def {re.escape(function.split("[")[0])}\(', f.read(), re.M):
        missing.append(node_id)
  assert not missing, f'tests/slow_tests.txt lists tests that do not exist: {missing}'


def test_slow_cases_reach_the_threshold_but_each_parametrized_test_keeps_its_fastest(tmp_path):
  (tmp_path / 'junit.xml').write_text(JUNIT)
  output = tmp_path / 'slow.txt'
  result = run_generator(str(tmp_path / 'junit.xml'), '--output', str(output))
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
      f'4 of 7 tests are slow: 59 of 83 s summed over the workers; the quick tier keeps 24 s. '
      f'Wrote {output}.')
  listed = [line for line in output.read_text().splitlines() if not line.startswith('#')]
  assert listed == ['tests/test_a.py::test_slow  # 8.0 s',
                    'tests/test_b.py::test_all_slow[q]  # 30.0 s',
                    'tests/test_b.py::test_cases[x]  # 12.0 s',
                    'tests/test_b.py::test_cases[y]  # 9.0 s']
  assert conftest.slow_test_ids(str(output)) == {
      'tests/test_a.py::test_slow', 'tests/test_b.py::test_all_slow[q]',
      'tests/test_b.py::test_cases[x]', 'tests/test_b.py::test_cases[y]'}


def test_a_case_takes_its_longest_time_over_the_reports(tmp_path):
  (tmp_path / 'all.xml').write_text(JUNIT)
  (tmp_path / 'quick.xml').write_text(JUNIT.replace('name="test_quick" time="1.0"',
                                                    'name="test_quick" time="8.5"'))
  output = tmp_path / 'slow.txt'
  result = run_generator(str(tmp_path / 'all.xml'), str(tmp_path / 'quick.xml'),
                         '--output', str(output))
  assert result.returncode == 0, result.stderr
  assert 'tests/test_a.py::test_quick' in conftest.slow_test_ids(str(output))
  assert len(conftest.slow_test_ids(str(output))) == 5


def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path):
  missing = run_generator(str(tmp_path / 'none.xml'), '--output', str(tmp_path / 'out.txt'))
  assert missing.returncode == 1
  assert missing.stderr.startswith('slow_tests.py: error: ') and missing.stderr.count('\n') == 1
  (tmp_path / 'other.xml').write_text(JUNIT.replace('tests.test_a', 'other.test_a'))
  foreign = run_generator(str(tmp_path / 'other.xml'), '--output', str(tmp_path / 'out.txt'))
  assert foreign.returncode == 1
  assert "classname 'other.test_a'; expected a module of tests/" in foreign.stderr
  threshold = run_generator(str(tmp_path / 'other.xml'), '--threshold', '0')
  assert threshold.returncode == 2
  assert '--threshold must be a positive number of seconds, got 0.0' in threshold.stderr
  assert not (tmp_path / 'out.txt').exists()


QUICK_TIER_LINE = ('[test] quick tier: the tests listed in tests/slow_tests.txt are left out; '
                   'scripts/test.sh --all runs them')


def collect_with_the_test_command(*args):
  """(node ids, stderr) of `scripts/test.sh --collect-only -q args...` in this process's venv."""
  result = subprocess.run(
      ['bash', os.path.join(conftest.REPO_ROOT, 'scripts', 'test.sh'), '--collect-only', '-q']
      + list(args), capture_output=True, text=True, cwd=conftest.REPO_ROOT, check=False,
      env=conftest.script_env(FEDTFF_TEST_WORKERS='0'))
  assert result.returncode == 0, result.stdout + result.stderr
  return {line for line in result.stdout.splitlines() if '::' in line}, result.stderr


def test_the_test_command_leaves_out_exactly_the_listed_cases_unless_given_all():
  file = 'tests/test_setup_script.py'
  listed = {node_id for node_id in conftest.slow_test_ids() if node_id.startswith(file + '::')}
  assert listed, f'this check needs a slow test of {file}'
  quick, quick_err = collect_with_the_test_command(file)
  everything, all_err = collect_with_the_test_command('--all', file)
  assert QUICK_TIER_LINE in quick_err and QUICK_TIER_LINE not in all_err
  assert everything - quick == listed
  assert collect_with_the_test_command(file, '--all')[0] == everything  # --all anywhere.
