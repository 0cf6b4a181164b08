"""SIGINT and SIGTERM stop a fedtff script within 2 s, with one line and 130 or 143.

`experiments/quiet_tf.py` calls `install()` before TensorFlow, TFF or JAX load,
so a signal is handled the same way at any moment of a script's life:

* While `cli.run` runs the script's `main` (`protected()` is active), the
  handler raises `Stopped`, a `KeyboardInterrupt`: `finally` blocks stop the
  TFF workers and close the run directory's files, then `cli.run` prints the
  one line, runs the atexit handlers and exits with 128 + the signal number
  (`exit_after_unwinding`).
* Outside it (while modules are imported, or after `main` returned), nothing
  can be unwound cleanly, so the handler prints the line, kills the workers
  and ends the process at once.
* Either way the first signal arms a watchdog, from the C-level handler
  (`signal.set_wakeup_fd`) so a main thread busy in C++ does not delay it: if
  the process is still alive `WATCHDOG_S` seconds later, because the exception was swallowed (Python
  ignores exceptions raised in gc callbacks such as JAX's `_xla_gc_callback`)
  or a C++ call does not return, the watchdog prints the line if it has not
  been printed, kills the workers and calls `os._exit`. Run-directory files
  are written atomically or as fsynced appends (fedtff.runner.outputs,
  fedtff.runner.checkpoints), so a hard exit never leaves a torn file.
* A second signal while stopping ends the process at once.

Exceptions that Python cannot propagate (its "Exception ignored in ..."
report) are not printed when they are the `Stopped` of a signal: the
watchdog takes over, and stderr keeps its single line.
"""

import atexit
import os
import signal
import sys
import threading
import time
from typing import Optional

# Seconds from the first signal until the watchdog ends the process: within
# 2 s on a loaded machine, with time for `os._exit` and killing the workers.
WATCHDOG_S = 1.2
_MESSAGES = {signal.SIGINT: 'interrupted (SIGINT)', signal.SIGTERM: 'terminated (SIGTERM)'}

_lock = threading.RLock()  # Reentrant: the handler may interrupt a holder.
_state = {'signum': None, 'handled': False, 'printed': False, 'protected': False}


class Stopped(KeyboardInterrupt):
  """Raised in the main thread by SIGINT or SIGTERM; `signum` says which."""

  def __init__(self, signum: int):
    super().__init__(_MESSAGES[signum])
    self.signum = signum


def exit_code(signum: int) -> int:
  """The shell's convention: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
  return 128 + signum


def _program() -> str:
  return (sys.argv[0] if sys.argv else 'python').rpartition('/')[2] or 'python'


def report(signum: int) -> None:
  """Prints `<program>: interrupted (SIGINT)` (or SIGTERM) once per process."""
  with _lock:
    if _state['printed']:
      return
    _state['printed'] = True
  _flush_streams(timeout_s=0.2)
  os.write(2, f'{_program()}: {_MESSAGES[signum]}\n'.encode())


def _flush(stream) -> None:
  try:
    stream.flush()
  except Exception:  # pylint: disable=broad-except  # A closed stream cannot be flushed.
    pass


def _flush_streams(*, timeout_s: Optional[float]) -> None:
  """Flushes stdout and stderr, giving up after `timeout_s` (None: never).

  A flush blocks while a reader leaves our stdout pipe full, or while the
  interrupted main thread holds the stream's lock; the stop must not wait.
  """
  flusher = threading.Thread(target=lambda: [_flush(s) for s in (sys.stdout, sys.stderr)],
                             daemon=True)
  flusher.start()
  flusher.join(timeout_s)


def kill_workers() -> None:
  """SIGKILLs the TFF workers that fedtff.execution.runtime started, if it was imported."""
  runtime = sys.modules.get('fedtff.execution.runtime')
  if runtime is not None:
    runtime.kill_all_workers()


def hard_exit(signum: int) -> None:
  """Prints the line, kills the workers and ends the process without unwinding."""
  report(signum)
  kill_workers()
  os._exit(exit_code(signum))  # pylint: disable=protected-access


def exit_after_unwinding(signum: int) -> None:
  """Ends the process once `Stopped` has unwound `main`: line, atexit handlers, exit code."""
  report(signum)
  exit_now(exit_code(signum))


def exit_now(code) -> None:
  """Runs the atexit handlers, flushes, and ends the process with `code` (a `SystemExit.code`).

  Skips the interpreter's finalization, which tears TensorFlow down for
  seconds during which daemon threads, the watchdog among them, are frozen and
  a signal would go unanswered; the atexit handlers (which stop any worker
  still running) run first, with the handlers and the watchdog still armed.
  """
  if code is None:
    code = 0
  elif not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  # A normal exit waits for a slow reader of stdout; a signal still ends the wait.
  _flush_streams(timeout_s=None if _state['signum'] is None else 1.0)
  os._exit(code)  # pylint: disable=protected-access


def _watch(read_fd: int) -> None:
  """Starts the watchdog clock when a signal arrives, even if the main thread is busy in C++.

  Python runs signal handlers in the main thread only between bytecodes, which
  a long TensorFlow call can delay by seconds; `signal.set_wakeup_fd` writes
  the signal number to our pipe from the C-level handler, at once.
  """
  while True:
    data = os.read(read_fd, 1)
    if not data:
      return
    if data[0] in _MESSAGES:
      with _lock:
        if _state['signum'] is None:
          _state['signum'] = data[0]
      break
  time.sleep(WATCHDOG_S)
  hard_exit(_state['signum'])


def _handle(signum, frame) -> None:
  del frame
  with _lock:
    first = not _state['handled']
    _state['handled'] = True
    if _state['signum'] is None:
      _state['signum'] = signum
    protected = _state['protected']
  if not first or not protected:
    hard_exit(signum if first else _state['signum'])
  raise Stopped(signum)


def _unraisable_hook(unraisable) -> None:
  if isinstance(unraisable.exc_value, Stopped):
    return  # Swallowed by e.g. a gc callback; the watchdog stops the process.
  _default_unraisable_hook(unraisable)


_default_unraisable_hook = sys.unraisablehook


def install() -> None:
  """Handles SIGINT and SIGTERM as described above; call from the main thread."""
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(read_fd,), name='fedtff-stop-watchdog',
                   daemon=True).start()
  for signum in _MESSAGES:
    signal.signal(signum, _handle)
  sys.unraisablehook = _unraisable_hook


class protected:  # pylint: disable=invalid-name  # Used as a context manager.
  """While active, a signal raises `Stopped` instead of ending the process at once."""

  def __enter__(self):
    with _lock:
      _state['protected'] = True
    return self

  def __exit__(self, *exc_info):
    with _lock:
      _state['protected'] = False
    return False

