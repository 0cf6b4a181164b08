"""The quick tier of `scripts/test.sh`: tests/slow_tests.txt and scripts/slow_tests.py."""

import os
import subprocess

import pytest

from tests import conftest

SCRIPT = os.path.join(conftest.REPO_ROOT, 'scripts', 'slow_tests.py')
TEST_SH = os.path.join(conftest.REPO_ROOT, 'scripts', 'test.sh')
A, B = 'tests/test_a.py', 'tests/test_b.py'  # In a repository made for each test.

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="7">
<testcase classname="tests.test_a" name="test_quick" time="1.0"/>
<testcase classname="tests.test_a" name="test_slow" time="8.0"/>
<testcase classname="tests.test_b" name="test_cases[x#1]" time="12.0"/>
<testcase classname="tests.test_b" name="test_cases[y]" time="9.0"/>
<testcase classname="tests.test_b" name="test_cases[z]" time="3.0"/>
<testcase classname="tests.test_b" name="test_all_slow[p]" time="20.0"/>
<testcase classname="tests.test_b" name="test_all_slow[q]" time="30.0"/>
</testsuite></testsuites>
"""
SLOW_LINES = [f'{A}::test_slow  # 8.0 s', f'{B}::test_all_slow[q]  # 30.0 s',
              f'{B}::test_cases[x#1]  # 12.0 s', f'{B}::test_cases[y]  # 9.0 s']


@pytest.fixture
def root(tmp_path):
  """A repository whose tests/ the JUNIT report could have come from."""
  (tmp_path / 'tests').mkdir()
  (tmp_path / A).write_text('def test_quick():\n  pass\n\n\ndef test_slow():\n  pass\n')
  (tmp_path / B).write_text('def test_cases(x):\n  pass\n\n\ndef test_all_slow(x):\n  pass\n')
  return tmp_path


def run_generator(root, *args):
  return conftest.run_script([SCRIPT, '--root', str(root)] + list(args), fresh=True, timeout=60)


def listed_lines(path):
  return [line for line in path.read_text().splitlines() if not line.startswith('#')]


def test_every_listed_slow_test_names_a_test_function_of_its_file():
  listed = conftest.slow_tests.listed_ids(conftest.SLOW_TESTS_FILE)
  assert len(listed) > 100
  missing = sorted(i for i in listed if not conftest.slow_tests.names_a_test(i))
  assert not missing, f'tests/slow_tests.txt lists tests that do not exist: {missing}'


def test_slow_cases_reach_the_threshold_but_each_parametrized_test_keeps_its_fastest(root):
  (root / 'junit.xml').write_text(JUNIT)
  output = root / 'tests' / 'slow_tests.txt'  # The default.
  result = run_generator(root, str(root / 'junit.xml'))
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
      '4 of 7 measured tests are slow: 59 of 83 s summed over the workers; the quick tier keeps '
      f'24 s. 0 listed tests no report ran stay listed. Wrote {output}.')
  assert listed_lines(output) == SLOW_LINES
  assert conftest.slow_tests.listed_ids(str(output)) == {
      f'{A}::test_slow', f'{B}::test_all_slow[q]', f'{B}::test_cases[x#1]', f'{B}::test_cases[y]'}


def test_a_case_takes_its_longest_time_and_unmeasured_listed_tests_stay(root):
  # The second report, a quick tier's: test_slow was not run; test_quick now builds a
  # fixture; test_cases[z] rises to 4 s, under the threshold in either report but not summed.
  quick = JUNIT.replace('name="test_quick" time="1.0"', 'name="test_quick" time="6.5"').replace(
      '<testcase classname="tests.test_a" name="test_slow" time="8.0"/>\n', '').replace(
          'name="test_cases[z]" time="3.0"', 'name="test_cases[z]" time="4.0"')
  output = root / 'slow.txt'
  output.write_text(f'# header\n{A}::test_slow  # 8.0 s\n{A}::test_deleted_long_ago  # 9.0 s\n')
  (root / 'quick.xml').write_text(quick)
  (root / 'quick2.xml').write_text(quick.replace('time="6.5"', 'time="2.0"'))
  result = run_generator(root, str(root / 'quick.xml'), str(root / 'quick2.xml'),
                         '--output', str(output))
  assert result.returncode == 0, result.stderr
  assert '1 listed tests no report ran stay listed' in result.stdout
  assert listed_lines(output) == [
      f'{A}::test_quick  # 6.5 s', f'{A}::test_slow  # not in these reports'] + SLOW_LINES[1:]


BAD_INPUT = {
    'missing_report': (None, [], "No such file or directory: '"),
    'not_xml': ('<testsuites><testcase classname="tests.test_a" name="t"', [],
                'junit.xml: not a JUnit XML report (unclosed token'),
    'other_tests': (JUNIT.replace('tests.test_a', 'other.test_a'), [],
                    "classname 'other.test_a'; expected a module of tests/"),
    'test_class': (JUNIT.replace('tests.test_a"', 'tests.test_a.TestClass"'), [],
                   'tests in classes are not supported'),
    'no_time': (JUNIT.replace(' time="8.0"', ''), [],
                "'test_slow' has time None; expected a number of seconds"),
    'nan_threshold': (JUNIT, ['--threshold', 'nan'],
                      '--threshold must be a positive number of seconds, got nan'),
    'unwritable_output': (JUNIT, ['--output', '/nonexistent/dir/slow.txt'],
                          "No such file or directory: '/nonexistent/dir"),
}


@pytest.mark.parametrize('case', BAD_INPUT)
def test_bad_input_gets_one_line_a_nonzero_exit_and_leaves_the_list(root, case):
  report, args, message = BAD_INPUT[case]
  output = root / 'slow.txt'
  output.write_text('# before\n')
  if report is not None:
    (root / 'junit.xml').write_text(report)
  result = run_generator(root, str(root / 'junit.xml'), '--output', str(output), *args)
  assert result.returncode == (2 if '--threshold' in args else 1)
  assert result.stderr.startswith('slow_tests.py: error: ') and result.stderr.count('\n') == 1
  assert message in result.stderr
  assert output.read_text() == '# before\n'
  assert not [name for name in os.listdir(root) if name.startswith('.tmp-')]


QUICK_TIER_LINE = ('[test] quick tier: the tests listed in tests/slow_tests.txt are left out; '
                   'scripts/test.sh --all runs them')


def collect_with_the_test_command(*args, workers='3'):
  """(node ids, stderr) of `scripts/test.sh --collect-only -q args...`."""
  result = subprocess.run(['bash', TEST_SH, '--collect-only', '-q'] + list(args),
                          capture_output=True, text=True, cwd=conftest.REPO_ROOT, check=False,
                          timeout=300, env=conftest.script_env(FEDTFF_TEST_WORKERS=workers))
  assert result.returncode == 0, result.stdout + result.stderr
  return {line for line in result.stdout.splitlines() if '::' in line}, result.stderr


def test_the_test_command_leaves_out_exactly_the_listed_cases():
  files = ['tests/test_setup_script.py', 'tests/test_readme.py']  # Collected without TensorFlow.
  listed = {i for i in conftest.slow_tests.listed_ids(conftest.SLOW_TESTS_FILE)
            if i.split('::')[0] in files}
  assert {i.split('::')[0] for i in listed} == set(files), 'each file needs a slow test'
  quick, quick_err = collect_with_the_test_command(*files)
  everything, all_err = collect_with_the_test_command('--all', *files)
  assert QUICK_TIER_LINE in quick_err and QUICK_TIER_LINE not in all_err
  assert everything - quick == listed and quick <= everything


def test_all_anywhere_a_marker_expression_or_test_ids_run_every_selected_test():
  file = 'tests/test_setup_script.py'
  listed = {i for i in conftest.slow_tests.listed_ids(conftest.SLOW_TESTS_FILE)
            if i.startswith(file + '::')}
  everything, _ = collect_with_the_test_command('--all', file)
  assert listed < everything
  assert collect_with_the_test_command(file, '--all', workers='0')[0] == everything
  assert collect_with_the_test_command(file, '-m', 'slow')[0] == listed
  slow_id = sorted(listed)[0]
  named, stderr = collect_with_the_test_command(slow_id)
  assert named == {slow_id} and QUICK_TIER_LINE not in stderr
