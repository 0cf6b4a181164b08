"""An execution context whose TFF worker processes fedtff owns and always stops.

TFF 0.87's default context starts a C++ `worker_binary` on first use and often
leaves it running after Python exits, still holding the parent's stdout open
(see docs/install.md). fedtff starts the worker itself:

* the worker's output goes to /dev/null (or a log file), never to our stdout;
* the worker is stopped when the context exits, on an exception, on SIGINT and,
  through `install_signal_handlers()` (or experiments/stopping.py in fedtff's
  scripts), on SIGTERM;
* on Linux the kernel kills the worker if Python dies without cleaning up
  (`PR_SET_PDEATHSIG`), so even `kill -9` of the trainer leaves none behind.

`import fedtff` installs such a context as TFF's default, starting its worker
on first use; `local_runtime()` scopes a worker to a `with` block:

  with fedtff.local_runtime():
    state = process.initialize()

`restore_tff_context()` puts back the default context TFF had before
`import fedtff` (for code that mixes `tff.backends` contexts) and stops
fedtff's default worker; `install_default_context()` installs fedtff's again.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import grpc
import portpicker
import tensorflow_federated as tff

_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
# A worker just started is not listening yet, and gRPC waits 1 s by default before
# its second connection attempt: 0.1 s instead makes a local worker ready in
# 0.17 s rather than 0.97 s (scripts/bench_worker_start.py). Later attempts still
# back off exponentially.
_GRPC_FIRST_RECONNECT_MS = 100
GRPC_CHANNEL_OPTIONS = (
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.initial_reconnect_backoff_ms', _GRPC_FIRST_RECONNECT_MS),
)  # Not grpc.min_reconnect_backoff_ms: it is also each connection attempt's timeout.
_PR_SET_PDEATHSIG = 1
_live_workers: set['WorkerProcess'] = set()
_live_workers_lock = threading.Lock()


def worker_binary_path() -> str:
  """Returns the path of the `worker_binary` shipped inside the TFF wheel."""
  tff_root = os.path.dirname(tff.__file__)
  return os.path.join(tff_root, 'data', 'worker_binary')


# Loaded here, not in the forked child: loading a library after fork in a
# process with threads can deadlock.
_LIBC = ctypes.CDLL('libc.so.6', use_errno=True) if sys.platform.startswith('linux') else None


def _die_with_parent() -> None:
  """Runs in the forked child: asks Linux to SIGKILL it when its parent dies."""
  if _LIBC is not None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerProcess:
  """One TFF `worker_binary` subprocess serving on a localhost port."""

  def __init__(self, *, port: Optional[int] = None,
               max_concurrent_computation_calls: int = -1,
               log_path: Optional[str] = None, cwd: Optional[str] = None):
    self.port = port or portpicker.pick_unused_port()
    # Relative paths in the graphs the worker runs (a site's data and masks,
    # docs/cross_silo.md) resolve against `cwd`.
    self._cwd = cwd
    self._args = [
        worker_binary_path(), f'--port={self.port}',
        f'--max_concurrent_computation_calls={max_concurrent_computation_calls}',
    ]
    self._log_path = log_path
    self._popen: Optional[subprocess.Popen] = None

  @property
  def address(self) -> str:
    return f'localhost:{self.port}'

  @property
  def pid(self) -> Optional[int]:
    return self._popen.pid if self._popen else None

  def start(self) -> 'WorkerProcess':
    """Starts the worker with its output detached from ours."""
    with open(self._log_path or os.devnull, 'ab') as log:
      self._popen = subprocess.Popen(
          self._args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
          preexec_fn=_die_with_parent, close_fds=True, cwd=self._cwd)
    with _live_workers_lock:
      _live_workers.add(self)
    return self

  def is_running(self) -> bool:
    return self._popen is not None and self._popen.poll() is None

  def stop(self, timeout_s: float = 5.0) -> None:
    """Stops the worker: SIGINT, then SIGKILL if it has not exited in time."""
    with _live_workers_lock:
      _live_workers.discard(self)
    if not self.is_running():
      return
    self._popen.send_signal(signal.SIGINT)
    try:
      self._popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
      self._popen.kill()
      self._popen.wait()


  def kill(self) -> None:
    """SIGKILLs the worker and reaps it; does not wait for a graceful exit."""
    if self.is_running():
      self._popen.kill()
      try:
        self._popen.wait(1.0)
      except subprocess.TimeoutExpired:
        pass


def stop_all_workers() -> None:
  """Stops every worker this process started and has not stopped yet."""
  with _live_workers_lock:
    workers = list(_live_workers)
  for worker in workers:
    worker.stop()


atexit.register(stop_all_workers)


def kill_all_workers() -> None:
  """SIGKILLs every worker this process started; safe in a signal handler or a thread.

  For a process about to `os._exit` (experiments/stopping.py): it neither
  waits for the workers to exit gracefully nor blocks on a lock the
  interrupted main thread may hold.
  """
  locked = _live_workers_lock.acquire(timeout=0.2)
  try:
    workers = list(_live_workers)
  except RuntimeError:  # Changed size while we copied it, without the lock.
    workers = []
  finally:
    if locked:
      _live_workers_lock.release()
  for worker in workers:
    worker.kill()


def _raise_system_exit(signum, frame):
  del frame
  raise SystemExit(128 + signum)


def install_stop_handlers(stop: threading.Event, logger: logging.Logger) -> None:
  """SIGINT and SIGTERM set `stop` (logged on `logger`), for a server's main loop;
  installed before a worker binary starts, so that it does not inherit an
  ignored SIGINT from a shell's `&`."""

  def handler(signum, frame):
    del frame
    logger.info('received %s, stopping', signal.Signals(signum).name)
    stop.set()

  signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGTERM, handler)


def install_signal_handlers() -> None:
  """Turns SIGTERM into `SystemExit` so `finally` blocks stop the workers.

  Python's default SIGTERM action ends the process without unwinding; after
  this call SIGTERM behaves like SIGINT does by default. Only callable from the
  main thread. Libraries should not call this. fedtff's own scripts do not
  either: experiments/stopping.py handles both signals there, from before
  TensorFlow loads, and stops within 2 s even if an exception is swallowed.
  """
  signal.signal(signal.SIGTERM, _raise_system_exit)


def wait_until_ready(stub: tff.framework.RemoteExecutorGrpcStub, address: str,
                     timeout_s: float) -> None:
  """Blocks until `stub` answers, or raises `TimeoutError` naming `address`."""
  deadline = time.monotonic() + timeout_s
  while not stub.is_ready:
    if time.monotonic() > deadline:
      raise TimeoutError(
          f'TFF worker at {address} did not become ready within {timeout_s:g} s.')
    time.sleep(0.05)


class LocalWorkerConnection:
  """A gRPC stub to a local worker that is started on first use."""

  def __init__(self, *, startup_timeout_s: float = 60.0, **worker_kwargs):
    self._worker_kwargs = worker_kwargs
    self._startup_timeout_s = startup_timeout_s
    self._lock = threading.Lock()
    self.worker: Optional[WorkerProcess] = None
    self._channel = None
    self._stub = None

  def stub(self) -> tff.framework.RemoteExecutorGrpcStub:
    """Starts the worker if needed; raises if a started worker has died."""
    with self._lock:
      if self.worker is None:
        self.worker = WorkerProcess(**self._worker_kwargs).start()
        self._channel = grpc.insecure_channel(self.worker.address, GRPC_CHANNEL_OPTIONS)
        self._stub = tff.framework.RemoteExecutorGrpcStub(self._channel)
        wait_until_ready(self._stub, self.worker.address, self._startup_timeout_s)
      elif not self.worker.is_running():
        raise RuntimeError(f'The TFF worker at {self.worker.address} '
                           f'(pid {self.worker.pid}) has exited.')
      return self._stub

  def close(self) -> None:
    """Closes the channel and stops the worker, if one was started."""
    with self._lock:
      if self._channel is not None:
        self._channel.close()
      if self.worker is not None:
        self.worker.stop()


def _executor_factory(connection: LocalWorkerConnection, default_num_clients: int):
  """An executor factory that sends every computation to one worker."""

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    executor = tff.framework.RemoteExecutor(connection.stub())
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.ResourceManagingExecutorFactory(stack_fn)


def compile_for_worker(computation):
  """TFF's native compilation, after lowering secure sums to plain sums.

  TFF 0.87's C++ worker cannot execute `federated_secure_sum_bitwidth` and
  friends; like TFF's own test engine, fedtff replaces them by their insecure
  TensorFlow bodies. The local runtime therefore computes secure sums in the
  clear: it simulates the protocol's interface, not its cryptography.
  """
  computation = tff.backends.test.replace_secure_intrinsics_with_bodies(computation)
  return tff.backends.native.desugar_and_transform_to_native(computation)


def sync_context(connection: LocalWorkerConnection, *, default_num_clients: int = 0):
  """A synchronous TFF execution context over one worker connection."""
  return tff.framework.SyncExecutionContext(
      executor_fn=_executor_factory(connection, default_num_clients),
      compiler_fn=compile_for_worker,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )


@contextlib.contextmanager
def local_runtime(*, max_concurrent_computation_calls: int = -1,
                  log_path: Optional[str] = None,
                  startup_timeout_s: float = 60.0) -> Iterator[WorkerProcess]:
  """Runs TFF computations on a worker that is stopped when the block exits.

  Args:
    max_concurrent_computation_calls: Passed to the worker; nonpositive means
      no limit.
    log_path: Where the worker's stdout and stderr go; /dev/null by default.
    startup_timeout_s: How long to wait for the worker to accept requests.

  Yields:
    The running `WorkerProcess` (its `pid` and `address` are public).
  """
  connection = LocalWorkerConnection(
      max_concurrent_computation_calls=max_concurrent_computation_calls,
      log_path=log_path, startup_timeout_s=startup_timeout_s)
  try:
    connection.stub()
    with tff.framework.get_context_stack().install(sync_context(connection)):
      yield connection.worker
  finally:
    connection.close()


# The default context TFF had before fedtff replaced it, and fedtff's connection.
_tff_default_context = None
_default_connection: Optional[LocalWorkerConnection] = None


def _context_stack():
  # TFF's thread-local stack of contexts; its bottom entry is the default one.
  from tensorflow_federated.python.core.impl.context_stack import context_stack_impl  # pylint: disable=g-import-not-at-top
  return context_stack_impl.context_stack


def install_default_context() -> LocalWorkerConnection:
  """Makes a fedtff-owned, lazily started worker TFF's default runtime.

  `import fedtff` calls this, so computations run outside `local_runtime()`
  also use a worker whose output is detached and that is stopped at exit.
  Calling it again replaces the previous fedtff default (stopping its worker).
  """
  global _tff_default_context, _default_connection
  if _default_connection is None:
    _tff_default_context = _context_stack()._stack[0]  # pylint: disable=protected-access
  else:
    _default_connection.close()
  connection = LocalWorkerConnection()
  tff.framework.set_default_context(sync_context(connection))
  atexit.register(connection.close)
  _default_connection = connection
  return connection


def restore_tff_context() -> None:
  """Restores the default execution context TFF had before `import fedtff`.

  For code that mixes `tff.backends` contexts (e.g. calls
  `tff.backends.native.set_sync_local_cpp_execution_context(...)` itself, or
  expects TFF's own default): fedtff's default worker, if it was started, is
  stopped now, and later computations outside `local_runtime()` run on TFF's
  context, whose worker TFF itself starts and may leave running after Python
  exits (docs/install.md). `local_runtime()` blocks and fedtff's runner
  (`run_experiment`) still use workers fedtff owns.
  `install_default_context()` undoes this. Calling it twice is harmless.
  """
  global _default_connection
  if _default_connection is None:
    return
  _default_connection.close()
  _default_connection = None
  tff.framework.set_default_context(_tff_default_context)


def parse_address(address: str) -> Tuple[str, int]:
  """Splits `'host:port'` (or `'[v6-address]:port'`) into host and port.

  Raises:
    ValueError: If `address` is not of that form or the port is out of range.
  """
  host, _, port = str(address).rpartition(':')
  host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
  if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise ValueError(f"A worker address must be 'host:port' with a port in [1, 65535], "
                     f'got {address!r}.')
  return host, int(port)


def check_workers(workers: Sequence[str]) -> List[str]:
  """Returns `workers` as a list if they are distinct 'host:port' strings.

  Raises:
    ValueError: Naming the first bad or repeated address.
  """
  if isinstance(workers, str) or not workers:
    raise ValueError(f"workers must be a non-empty list of 'host:port' strings, got {workers!r}.")
  for address in workers:
    parse_address(address)
  repeated = sorted({a for a in workers if list(workers).count(a) > 1})
  if repeated:
    raise ValueError(f'Each worker must be listed once; listed more than once: '
                     f'{", ".join(repeated)}.')
  return list(workers)


def parse_sites(sites: Sequence[str]) -> List[Tuple[str, str]]:
  """`[(name, 'host:port')]` of `sites`, 'name=host:port' strings.

  Raises:
    ValueError: One line naming the first malformed or repeated entry.
  """
  if isinstance(sites, str) or not sites:
    raise ValueError(f"sites must be a non-empty list of 'name=host:port' strings, "
                     f'got {sites!r}.')
  parsed = []
  for entry in sites:
    name, equals, address = str(entry).partition('=')
    if not equals or not name or not all(c.isalnum() or c in '-_' for c in name):
      raise ValueError(f"A site is 'name=host:port' with a name of letters, digits, '-' and "
                       f"'_', got {entry!r}.")
    try:
      parse_address(address)
    except ValueError:
      raise ValueError(f"A site is 'name=host:port' with a port in [1, 65535], got "
                       f'{entry!r}.') from None
    parsed.append((name, address))
  for k, what in ((0, 'name'), (1, 'address')):
    values = [p[k] for p in parsed]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
      raise ValueError(f'Each site {what} must be listed once; repeated: {", ".join(repeated)}.')
  return parsed
