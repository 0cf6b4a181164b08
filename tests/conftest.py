"""Shared fixtures: tiny offline clients, and running fedtff scripts."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before TensorFlow loads: no C++ banners.

# pylint: disable=g-import-not-at-top,wrong-import-position
import atexit
import contextlib
import importlib.util
import json
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_TESTS_FILE = os.path.join(REPO_ROOT, 'tests', 'slow_tests.txt')


def load_module(path):
  """The Python script at `path` (outside any package), loaded fresh.

  Configs load with `fedtff.research.benchmarks.load_config_file`."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


slow_tests = load_module(os.path.join(REPO_ROOT, 'scripts', 'slow_tests.py'))  # Its list's format.


@pytest.hookimpl(tryfirst=True)  # Before `-m` deselects by marker.
def pytest_collection_modifyitems(items):
  """Marks the tests listed in tests/slow_tests.txt `slow`: `scripts/test.sh` runs
  `-m 'not slow'` unless given `--all`."""
  slow = slow_tests.listed_ids(SLOW_TESTS_FILE)
  for item in items:
    if item.nodeid in slow:  # Relative to the repository, setup.cfg's rootdir.
      item.add_marker(pytest.mark.slow)


def tiny_classification_arrays(num_examples=90, num_features=8, seed=0):
  """Linearly separable 3-class data: features float32, labels int32."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(num_examples, num_features)).astype(np.float32)
  labels = np.argmax(features[:, :3], axis=1).astype(np.int32)
  return features, labels


@pytest.fixture(scope='session')
def tiny_arrays():
  return tiny_classification_arrays()


def cpu_seconds(process):
  """User plus system CPU of a `psutil.Process`: proof that it did some work."""
  times = process.cpu_times()
  return times.user + times.system


def script_env(**extra):
  env = dict(os.environ)
  env.pop('FEDTFF_VERBOSE', None)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # Set above for this process; scripts choose their own.
  env.update(extra)
  return env


# Every `run_script` without options of its own runs in a fork of one
# preloaded interpreter per test process (`_Zygote`): TensorFlow, TFF and
# fedtff are imported once (~7 s of CPU) instead of in every subprocess.
# A child runs its command line as `python argv...` would: its own process
# group, argv, `sys.path[0]`, stdin (/dev/null), stdout and stderr files, the
# signal handlers and default TFF context a fresh import would install (their
# threads do not survive a fork), atexit handlers, and its exit code.
_ZYGOTE = r'''
import atexit, json, os, runpy, sys, traceback
import experiments.quiet_tf  # Before TensorFlow, as every script imports it.
from experiments import stopping
import tensorflow, tensorflow_federated, fedtff, fedtff.runner
from fedtff.execution import runtime


def run(request):
  code = 0
  try:
    os.setpgid(0, 0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request['out']), (2, request['err'])):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    stopping.install()
    runtime.install_default_context()
    argv = request['argv']
    if argv[0] == '-m':
      sys.argv, sys.path[0] = argv[1:], os.getcwd()
      runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    else:
      sys.argv, sys.path[0] = list(argv), os.path.dirname(os.path.abspath(argv[0]))
      runpy.run_path(argv[0], run_name='__main__')
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush(), sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


for line in sys.stdin:
  sys.stdout.flush(), sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    run(json.loads(line))
  print(pid, flush=True)
  print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''


_ZYGOTE_START_S = 60  # A fork of a loaded interpreter, on a busy machine.


class _Zygote:
  """A preloaded interpreter that runs each command line in a fork of itself."""

  def __init__(self):
    self._dir = tempfile.mkdtemp(prefix='fedtff-zygote-')
    self._log = open(os.path.join(self._dir, 'zygote.err'), 'w')  # pylint: disable=consider-using-with
    self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, '-c', _ZYGOTE], cwd=REPO_ROOT, env=script_env(), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
    self._runs = 0
    atexit.register(self.close)

  def _read_line(self, deadline):
    fd = self._proc.stdout.fileno()
    line = b''
    while not line.endswith(b'\n'):
      if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return None
      chunk = os.read(fd, 1)
      if not chunk:
        with open(self._log.name) as log:
          raise RuntimeError(f'the test zygote exited: {log.read()[-3000:]}')
      line += chunk
    return int(line)

  def run(self, args, timeout):
    """`subprocess.run([python] + args)` as a fork; TimeoutExpired after `timeout` s."""
    self._runs += 1
    out, err = (os.path.join(self._dir, f'{self._runs}.{s}') for s in ('out', 'err'))
    self._proc.stdin.write(json.dumps(dict(argv=list(args), out=out, err=err)) + '\n')
    self._proc.stdin.flush()
    start_s = timeout if self._runs == 1 else _ZYGOTE_START_S  # The first awaits imports.
    pid = self._read_line(time.monotonic() + start_s)
    if pid is None:  # Its late replies would answer the next command line: start anew.
      self._abandon(awaiting_pid=True)
      raise RuntimeError(f'the test zygote did not start {args} within {start_s} s')
    code = self._read_line(time.monotonic() + timeout)
    if code is None:
      os.killpg(pid, signal.SIGKILL)
      replied = self._read_line(time.monotonic() + _ZYGOTE_START_S) is not None
    with open(out) as o, open(err) as e:
      stdout, stderr = o.read(), e.read()
    if code is None:
      if not replied:  # Its late exit code would answer the next command line.
        self._abandon(awaiting_pid=False)  # The child was killed above.
      raise subprocess.TimeoutExpired(args, timeout, stdout, stderr)
    return subprocess.CompletedProcess([sys.executable] + list(args), code, stdout, stderr)

  def _abandon(self, *, awaiting_pid):
    """Kills the zygote and, if it forked the awaited child but named it too
    late, that child's process group."""
    self._proc.kill()
    self._proc.wait()
    late = b''
    while chunk := os.read(self._proc.stdout.fileno(), 4096):
      late += chunk
    if awaiting_pid and late.split():
      with contextlib.suppress(ProcessLookupError):
        os.killpg(int(late.split()[0]), signal.SIGKILL)
    self.close()

  @property
  def closed(self):
    return self._log.closed

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._log.close()
    shutil.rmtree(self._dir, ignore_errors=True)


_zygote = None


def run_script(args, *, timeout=300, fresh=False, **popen_kwargs):
  """Runs `python args...` from the repo root; returns CompletedProcess.

  A script path or `-m module` runs in a fork of this test process's
  preloaded interpreter (`_Zygote`), unless `fresh` is true or `popen_kwargs`
  are given: then in a new `python` process. Output the imports themselves
  print (TensorFlow's warnings) appears only in a fresh process's stderr, so
  a test that checks that stderr is empty of them passes `fresh=True`, as does
  one that asks for verbose output (the preloaded imports were quiet).
  """
  global _zygote
  if fresh or popen_kwargs or args[0] == '-c':
    return subprocess.run([sys.executable] + list(args), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=script_env(), **popen_kwargs)
  if _zygote is None or _zygote.closed:
    _zygote = _Zygote()
  return _zygote.run(args, timeout)
