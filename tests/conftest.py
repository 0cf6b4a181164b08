"""Shared fixtures: tiny offline clients, and running fedtff scripts."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before TensorFlow loads: no C++ banners.

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_classification_arrays(num_examples=90, num_features=8, seed=0):
  """Linearly separable 3-class data: features float32, labels int32."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(num_examples, num_features)).astype(np.float32)
  labels = np.argmax(features[:, :3], axis=1).astype(np.int32)
  return features, labels


@pytest.fixture(scope='session')
def tiny_arrays():
  return tiny_classification_arrays()


def script_env(**extra):
  env = dict(os.environ)
  env.pop('FEDTFF_VERBOSE', None)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # Set above for this process; scripts choose their own.
  env.update(extra)
  return env


def run_script(args, *, timeout=300, **popen_kwargs):
  """Runs `python args...` from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable] + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout, env=script_env(), **popen_kwargs)


# Runs in one `python -c` subprocess: imports `preload` once (TensorFlow, TFF,
# fedtff: ~6 s), then runs each command line as `python argv...` would, in a
# fork of that process: `argv[0]` as __main__ with a fresh sys.argv, its own
# stdout and stderr files, and its exit code. Flags a script defines are
# defined in the child only, so each child parses its command line afresh.
_FORKED_DRIVER = r'''
import json, os, runpy, sys, traceback
spec = json.loads(sys.argv[1])
sys.path.insert(0, os.getcwd())
for module in spec['preload']:
  __import__(module)
results = []
for i, argv in enumerate(spec['argvs']):
  out, err = (os.path.join(spec['dir'], f'{i}.{s}') for s in ('out', 'err'))
  sys.stdout.flush(), sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    code = 0
    try:
      for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      sys.argv = list(argv)
      runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException:
      traceback.print_exc()
      code = 1
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)
  _, status = os.waitpid(pid, 0)
  results.append(os.waitstatus_to_exitcode(status))
print(json.dumps(results))
'''


def run_scripts_forked(argvs, preload, tmp_dir, *, timeout=300):
  """Like `[run_script(argv) for argv in argvs]`, sharing one interpreter's imports.

  For command lines that fail or finish before any TensorFlow work (refused
  input): each still runs its script as __main__ with its own argv, exit code,
  stdout and stderr, but pays the imports of `preload` once instead of per
  line. Output the imports themselves print is not in any line's stderr;
  check that with one `run_script`. The preloaded modules saw the driver's
  argv and environment when imported (experiments.quiet_tf decides verbosity
  then), so a line that needs other ones (--verbosity, FEDTFF_VERBOSE) needs
  `run_script`.
  """
  spec = dict(argvs=[list(a) for a in argvs], preload=list(preload), dir=str(tmp_dir))
  driver = run_script(['-c', _FORKED_DRIVER, json.dumps(spec)], timeout=timeout)
  assert driver.returncode == 0, driver.stderr
  codes = json.loads(driver.stdout.strip().splitlines()[-1])
  results = []
  for i, (argv, code) in enumerate(zip(argvs, codes)):
    with open(os.path.join(tmp_dir, f'{i}.out')) as out, open(
        os.path.join(tmp_dir, f'{i}.err')) as err:
      results.append(subprocess.CompletedProcess(list(argv), code, out.read(), err.read()))
  return results
