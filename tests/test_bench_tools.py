"""fedtff.research.bench_tools: what the scripts/bench*.py benchmarks share, and the scripts' size."""

import glob
import math
import os
import shutil
import socket
import subprocess

import numpy as np
import portpicker
import psutil
import pytest

from fedtff.research import bench_tools
from tests import conftest
from tests import test_distributed

MAX_SCRIPT_LINES = 100


def test_every_benchmark_script_is_at_most_100_lines_of_glue():
  scripts = sorted(glob.glob(os.path.join(conftest.REPO_ROOT, 'scripts', 'bench*.py')))
  assert len(scripts) >= 7
  lengths = {os.path.basename(path): sum(1 for _ in open(path)) for path in scripts}
  assert {name: n for name, n in lengths.items() if n > MAX_SCRIPT_LINES} == {}


@pytest.mark.parametrize('order, expected', [
    ('abba', 'AB BA AB BA'),
    ('rotate', 'ABC BCA CAB ABC'),
])
def test_alternate_runs_every_function_each_round_in_turning_order(order, expected):
  calls = []
  names = 'AB' if order == 'abba' else 'ABC'
  fns = {name: (lambda name=name: calls.append(name)) for name in names}
  times = bench_tools.alternate(fns, 3, warmup=1, order=order)
  assert ' '.join(''.join(calls[i:i + len(names)]) for i in range(0, len(calls), len(names))) == (
      expected)
  assert {name: len(t) for name, t in times.items()} == {name: 3 for name in names}
  assert all(s >= 0 for t in times.values() for s in t)


def test_stateful_carries_the_state():
  counter = bench_tools.Stateful(1, lambda n: 2 * n)
  for _ in range(3):
    counter()
  assert counter.state == 8


def test_memory_and_cpu_of_this_process():
  own = bench_tools.rss_bytes(children=False)
  assert 10 * bench_tools.MIB < own <= bench_tools.rss_bytes()
  with bench_tools.PeakRss(interval_s=0.001) as peak:
    block = np.ones(64 * bench_tools.MIB // 8)  # 64 MiB, touched.
    sum(range(10**6))
  assert peak.peak_bytes >= own + 32 * bench_tools.MIB
  del block
  assert bench_tools.cpu_seconds([__import__('psutil').Process()]) > 0


def test_generated_population_draws_each_client_from_its_id():
  population = bench_tools.generated_population(342477, 30, num_features=4)
  assert len(population.client_ids) == 342477 and population.client_ids[-1] == '342476'
  first = next(iter(population.create_tf_dataset_for_client('000007').batch(30)))
  again = next(iter(population.create_tf_dataset_for_client('000007').batch(30)))
  other = next(iter(population.create_tf_dataset_for_client('000008').batch(30)))
  assert first['x'].shape == (30, 4) and first['y'].dtype.name == 'int32'
  np.testing.assert_array_equal(first['x'], again['x'])
  assert not np.array_equal(first['x'], other['x'])
  assert set(np.unique(first['y'])) <= set(range(10))


def test_markdown_and_differences():
  assert bench_tools.markdown_table(['a', 'b'], [[1, 'x']]) == '| a | b |\n|---|---|\n| 1 | x |'
  assert bench_tools.max_abs_difference([np.ones(3), np.zeros(2)],
                                        [np.ones(3), np.array([0.0, -0.5])]) == 0.5
  line = bench_tools.window_ratio_line('t', [1.0, 3.0, 2.0, 4.0, 6.0, 5.0], 3, 1e3, 'ms')
  assert line.split() == ['t', 'first', '3:', '2000.0', 'ms', 'last', '3:', '5000.0', 'ms',
                          'ratio', '2.500']


def test_population_run_reports_round_time_and_memory_in_a_fresh_process():
  result = bench_tools.run_in_subprocess('population_run', 500, 5, 2, 30, 1)
  assert set(result) == {'setup_s', 'median_s', 'rss_warm_mb', 'rss_end_mb', 'peak_mb'}
  assert all(math.isfinite(v) and v > 0 for v in result.values())
  assert result['peak_mb'] >= result['rss_end_mb'] > 100


def test_share_setup_lets_two_checkouts_share_one_venv_without_reinstalling(tmp_path):
  """scripts/setup.sh in two checkouts on one venv whose python only logs its arguments.

  Setup files that differ (a "before" commit's setup.cfg lacking a later
  requirement) made each switch reinstall, which was the quickstart
  benchmark's slow mode: about 15 s of CPU in pip and an import check in about every other run.
  """
  log, venv = tmp_path / 'python.log', tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
  (venv / 'bin' / 'python').chmod(0o755)
  env = conftest.script_env(FEDTFF_VENV=str(venv), FEDTFF_PYTHON=str(venv / 'bin' / 'python'))
  checkouts = {name: tmp_path / name for name in ('before', 'after')}
  for checkout in checkouts.values():
    (checkout / 'scripts').mkdir(parents=True)
    for name in bench_tools.SETUP_FILES:
      shutil.copy(os.path.join(conftest.REPO_ROOT, name), checkout / name)
  with open(checkouts['before'] / 'setup.cfg', 'a') as f:
    f.write('# An older commit.\n')

  def pip_installs(name):
    logged = log.read_text() if log.exists() else ''
    result = subprocess.run(['bash', str(checkouts[name] / 'scripts' / 'setup.sh')], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text()[len(logged):].count('-m pip install') if log.exists() else 0

  assert [pip_installs(name) for name in ('after', 'after', 'before', 'after')] == [3, 0, 3, 3]
  assert bench_tools.share_setup(str(checkouts['before']), str(checkouts['after'])) == ['setup.cfg']
  assert [pip_installs(name) for name in ('before', 'after', 'before')] == [0, 0, 0]
  assert bench_tools.share_setup(str(checkouts['before']), str(checkouts['after'])) == []


def test_run_in_subprocess_names_the_failure():
  with pytest.raises(RuntimeError, match=r"population_run\(0, 5, 1\) failed"):
    bench_tools.run_in_subprocess('population_run', 0, 5, 1)


def test_listening_servers_waits_for_each_server_and_stops_it_with_its_worker(tmp_path):
  port = portpicker.pick_unused_port()
  with bench_tools.listening_servers([('fedtff.execution.worker', f'--port={port}')],
                                     str(tmp_path)) as (proc,):
    assert proc.poll() is None and 'listening on' in (tmp_path / 'server0.log').read_text()
    [binary] = [p for p in psutil.Process(proc.pid).children() if p.name() == 'worker_binary']
    socket.create_connection(('127.0.0.1', port), timeout=10).close()
  assert proc.poll() is not None
  test_distributed.assert_gone([binary])


def test_listening_servers_names_a_server_that_exits(tmp_path):
  with pytest.raises(RuntimeError, match='fedtff.execution.worker did not start'):
    with bench_tools.listening_servers([('fedtff.execution.worker', '--port=0')], str(tmp_path)):
      pass
