"""`fedtff.restore_tff_context()`: TFF's own default context back, fedtff's worker stopped."""

import psutil

from tests import conftest

SCRIPT = r'''
import psutil
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

tffs_own = context_stack_impl.context_stack.current
import fedtff
assert context_stack_impl.context_stack.current is not tffs_own

def workers():
  return [p.pid for p in psutil.Process().children(recursive=True) if p.name() == 'worker_binary']

@tff.tensorflow.computation
def one():
  return tf.constant(1)

assert one() == 1  # Starts fedtff's default worker.
started = workers()
assert len(started) == 1, started
fedtff.restore_tff_context()
assert context_stack_impl.context_stack.current is tffs_own
assert workers() == [] and not psutil.pid_exists(started[0]), 'the worker outlived the restore'
fedtff.restore_tff_context()  # A second call changes nothing.
assert context_stack_impl.context_stack.current is tffs_own
fedtff.execution.runtime.install_default_context()  # And fedtff's context can come back.
assert one() == 1
again = workers()
assert len(again) == 1 and again != started, again
print('pids', started[0], again[0])
'''


def test_restore_gives_tffs_context_back_and_leaks_no_worker(tmp_path):
  script = tmp_path / 'restore.py'
  # This checkout's fedtff, whatever the interpreter has installed.
  script.write_text(f'import sys\nsys.path.insert(0, {conftest.REPO_ROOT!r})\n' + SCRIPT)
  result = conftest.run_script([str(script)], timeout=120, fresh=True)
  assert result.returncode == 0, result.stderr[-3000:]
  pids = [int(p) for p in result.stdout.split('pids')[1].split()]
  _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)],
                               timeout=10)
  assert alive == []  # Neither the restored-away worker nor the reinstalled one survives exit.
