"""Benchmark: the quickstart, whole job, before and after a change.

Runs README's quickstart command (`scripts/quickstart.sh`, the environment
already set up; with `--config`, on that config instead) `--runs` times in each of two checkouts, alternating in ABBA
order so that the load of a shared machine hits both alike: "before", a git
ref checked out in a temporary worktree that uses this checkout's .venv, and
"after", this working tree. Each run writes a fresh run directory. Both run in this
checkout's venv, set up (untimed) first, the "before" worktree with this
checkout's setup files: no timed run may reinstall (bench_tools.share_setup). Prints
every wall time, with the job's CPU time (user + sys, less sensitive to the
machine's load) and the load average at its start, the medians, their ratios
(after / before), and the machine.

  .venv/bin/python scripts/bench_quickstart.py [--before main] [--runs 5] \
      [--config configs/quickstart_dp.py:eps8]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from fedtff.research import bench_tools as bt


def _git(*args: str) -> str:
  return subprocess.run(['git', '-C', REPO, *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _job(checkout: str, scratch: str, log: list, flags: list):
  """A function running the quickstart (with `flags`) in `checkout` once; appends
  (wall s, CPU s, load)."""

  def run():
    workdir = tempfile.mkdtemp(dir=scratch)
    load, cpu = os.getloadavg()[0], _children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run([os.path.join(checkout, 'scripts', 'quickstart.sh'),
                           f'--workdir={workdir}', *flags], cwd=checkout, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu
    if done.returncode:
      raise RuntimeError(f'The quickstart in {checkout} failed:\n{done.stderr[-2000:]}')
    if 'is up to date' not in done.stderr.partition('\n')[0]:
      raise RuntimeError(f'scripts/setup.sh installed in a timed run in {checkout}:\n'
                         f'{done.stderr[:2000]}')
    log.append((wall, cpu, load))
    print(f'{checkout}: {wall:.2f} s wall, {cpu:.2f} s CPU (load {load:.2f}); '
          f'{done.stdout.strip().splitlines()[-1]}', flush=True)

  return run


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--before', default='main', help='Git ref of the "before" job.')
  parser.add_argument('--runs', type=int, default=5, help='Runs of each job.')
  parser.add_argument('--config', help='A config (path:variant) run instead of the quickstart.')
  args = parser.parse_args(argv)
  flags = [f'--config={args.config}'] if args.config else []
  commit = _git('rev-parse', '--short', args.before)
  with tempfile.TemporaryDirectory(prefix='bench-quickstart-') as scratch:
    before = os.path.join(scratch, 'before')
    _git('worktree', 'add', '--detach', before, commit)
    try:
      os.symlink(os.path.realpath(os.path.join(REPO, '.venv')), os.path.join(before, '.venv'))
      for name in bt.share_setup(before, REPO):
        print(f'before ({commit}) runs with the working tree\'s {name} (one venv, one stamp)')
      subprocess.run([os.path.join(REPO, 'scripts', 'setup.sh')], check=True)
      logs = {f'before ({commit})': [], 'after (working tree)': []}
      checkouts = dict(zip(logs, (before, REPO)))
      bt.alternate({name: _job(checkouts[name], scratch, log, flags)
                    for name, log in logs.items()}, args.runs)
    finally:
      _git('worktree', 'remove', '--force', before)
  walls = bt.medians({name: [run[0] for run in log] for name, log in logs.items()})
  cpus = bt.medians({name: [run[1] for run in log] for name, log in logs.items()})
  loads = [run[2] for log in logs.values() for run in log] + [os.getloadavg()[0]]
  for name in logs:
    print(f'{name}: median {walls[name]:.2f} s wall, {cpus[name]:.2f} s CPU over {args.runs} runs')
  (before_wall, after_wall), (before_cpu, after_cpu) = walls.values(), cpus.values()
  print(f'after / before: {after_wall / before_wall:.2f} wall, {after_cpu / before_cpu:.2f} CPU; '
        f'load average {min(loads):.1f} to {max(loads):.1f} during the runs')
  print(bt.machine_line())


if __name__ == '__main__':
  main(sys.argv[1:])
