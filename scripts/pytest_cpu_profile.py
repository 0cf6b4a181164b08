"""A pytest plugin: each test's CPU and wall time, for the suite-time budget.

    CPUPROF_DIR=/tmp/prof PYTHONPATH=scripts .venv/bin/python -m pytest \\
        -p pytest_cpu_profile -n 2 --dist loadfile -q tests

appends `<test id>\\t<own CPU s>\\t<reaped children's CPU s>\\t<wall s>` to
`$CPUPROF_DIR/<worker pid>.tsv`. Own CPU is `getrusage(RUSAGE_SELF)` of the
test process (all its threads); children's is `RUSAGE_CHILDREN`, so only the
subprocesses the test waited for count (docs/performance.md, "Test suite time").
"""

import os
import resource
import time

import pytest


def _cpu_seconds():
  own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
  return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  own, children = _cpu_seconds()
  start = time.time()
  yield
  own_after, children_after = _cpu_seconds()
  path = os.path.join(os.environ['CPUPROF_DIR'], f'{os.getpid()}.tsv')
  with open(path, 'a') as f:
    f.write(f'{item.nodeid}\t{own_after - own:.2f}\t{children_after - children:.2f}\t'
            f'{time.time() - start:.2f}\n')
