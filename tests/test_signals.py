"""SIGINT and SIGTERM stop a script at any moment: one line, 130 or 143, within 2 s.

experiments/stopping.py; mid-training signals are tested in
tests/test_train_script.py.
"""

import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests import conftest

SMALL = ['--config.total_rounds=500', '--config.engine=compiled']  # After --config.


def _popen(args):
  return subprocess.Popen([sys.executable] + args, cwd=conftest.REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=conftest.script_env())


def _stop(proc, signum):
  """Sends `signum`; returns (seconds until the process ended, stderr, its workers)."""
  workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if p.name() == 'worker_binary']
  sent = time.monotonic()
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=60)
  elapsed = time.monotonic() - sent
  _, alive = psutil.wait_procs(workers, timeout=5)
  assert not alive, f'workers still alive: {[p.pid for p in alive]}'
  return elapsed, stderr


def test_sigint_during_imports_prints_one_line(tmp_path):
  proc = _popen(['experiments/train.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}']
                + SMALL)
  time.sleep(1.0)  # TensorFlow, TFF and JAX take several seconds to import.
  elapsed, stderr = _stop(proc, signal.SIGINT)
  assert (proc.returncode, stderr) == (130, 'train.py: interrupted (SIGINT)\n')
  assert elapsed < 2.0


def test_sigterm_as_main_starts_prints_one_line(tmp_path):
  # A config file that says when flag parsing reads it: main is about to run,
  # every module is imported, and JAX's gc callbacks are live.
  config = tmp_path / 'announcing.py'
  config.write_text(textwrap.dedent('''\
      import sys
      sys.path.insert(0, 'configs')
      import quickstart

      def get_config():
        print('config read', flush=True)
        return quickstart.get_config()
      '''))
  proc = _popen(['experiments/train.py', f'--config={config}', f'--workdir={tmp_path / "run"}']
                + SMALL)
  assert proc.stdout.readline() == 'config read\n', proc.stderr.read()
  elapsed, stderr = _stop(proc, signal.SIGTERM)
  assert (proc.returncode, stderr) == (143, 'train.py: terminated (SIGTERM)\n')
  assert elapsed < 2.0


SWALLOWING = textwrap.dedent('''\
    import gc, sys, time
    sys.path.insert(0, '.')
    from experiments import quiet_tf  # Installs the handlers, as in every script.
    from experiments import stopping

    announced = False

    def slow_gc_callback(phase, info):  # Where JAX's _xla_gc_callback loses a signal.
      global announced
      if not announced:  # Announced from in here, so the test's signal lands in here too.
        announced = True
        print('ready', flush=True)
      time.sleep(0.01)

    gc.callbacks.append(slow_gc_callback)
    with stopping.protected():
      while True:
        try:
          gc.collect()
        except KeyboardInterrupt:  # Code that swallows the exception, too.
          pass
    ''')


def test_a_swallowed_interrupt_still_stops_the_process():
  proc = _popen(['-c', SWALLOWING])
  assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
  elapsed, stderr = _stop(proc, signal.SIGINT)
  assert (proc.returncode, stderr) == (130, '-c: interrupted (SIGINT)\n')  # No "Exception ignored".
  assert 1.0 < elapsed < 2.0  # The watchdog, not the swallowed exception, ended it.
