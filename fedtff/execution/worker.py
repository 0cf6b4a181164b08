"""`python -m fedtff.execution.worker`: serves TFF computations to a remote trainer.

  python -m fedtff.execution.worker --port=8000
  python -m fedtff.execution.worker --port=8000 --max_concurrent_computation_calls=4

Starts TFF's C++ `worker_binary` (through `fedtff.execution.runtime.WorkerProcess`) on
the port, logs where it listens, and runs until SIGINT or SIGTERM, which stop
the binary before this process exits with status 0. If the binary exits on its
own, so does this process, with status 1; if this process is killed, the
kernel kills the binary (`PR_SET_PDEATHSIG`). A port that is taken, or a
binary that does not come up, gives a one-line error and status 1.

`worker_binary` has no flag for the listen address (`--helpfull` lists only
`--port`, `--max_concurrent_computation_calls` and
`--grpc_max_message_length_megabytes`): it always listens on every interface,
`[::]:PORT`, IPv4 included. `--host` therefore does not restrict where the
worker can be reached; it names the address this machine is reached at in the
log, and must be an address of this machine. Limit who can connect with a
firewall, a private network or a network namespace (docs/distributed.md).

Trainers connect with `fedtff.execution.distributed.remote_runtime(['host:8000', ...])`.

`fedtff-worker --site=NAME --data=DIR --port=... --credentials=DIR` runs a site
instead: its own data, the binary in a private network namespace behind
mutual TLS (`fedtff.execution.site`, docs/cross_silo.md).
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
import threading
import time
from typing import Optional, Sequence

import grpc
import tensorflow_federated as tff

from fedtff.execution import runtime

PROGRAM = 'fedtff-worker'
_WILDCARD_HOSTS = ('', '0.0.0.0', '::')
_POLL_S = 0.2
_logger = logging.getLogger(PROGRAM)


class WorkerStartError(RuntimeError):
  """The worker could not start serving (port taken, binary failed, ...)."""


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog=PROGRAM, description='Serves TFF computations (TFF worker_binary) on a port.')
  parser.add_argument('--port', type=int, required=True, help='TCP port to serve on.')
  parser.add_argument(
      '--host', default='0.0.0.0',
      help='Address of this machine that trainers use, checked and logged. worker_binary '
           'listens on all interfaces whatever this says.')
  parser.add_argument(
      '--max_concurrent_computation_calls', type=int, default=-1,
      help='Passed to worker_binary: at most this many clients computed at once; '
           'nonpositive means no limit.')
  parser.add_argument('--worker_log', default=None,
                      help="File for worker_binary's own output (default: discarded).")
  parser.add_argument('--startup_timeout_s', type=float, default=60.0,
                      help='How long to wait for worker_binary to accept requests.')
  args = parser.parse_args(argv)
  if not 1 <= args.port <= 65535:
    parser.error(f'--port must be in [1, 65535], got {args.port}')
  return args


def _try_bind(family: int, address: tuple) -> None:
  with socket.socket(family, socket.SOCK_STREAM) as sock:
    # Like gRPC, ignore connections in TIME_WAIT; unlike gRPC, no SO_REUSEPORT,
    # so a port another server listens on is reported as taken.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
      sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(address)


def check_port(port: int, host: str = '0.0.0.0') -> None:
  """Raises `WorkerStartError` unless `port` is free on every interface.

  `worker_binary` cannot report this itself: gRPC sets SO_REUSEPORT, so a
  second binary on a taken port starts "successfully" and shares the port.

  Raises:
    WorkerStartError: If the port is taken, or `host` is not an address of
      this machine.
  """
  try:
    if socket.has_ipv6:
      _try_bind(socket.AF_INET6, ('::', port))
    else:
      _try_bind(socket.AF_INET, ('0.0.0.0', port))
  except OSError as e:
    reason = 'it is already in use' if e.errno == errno.EADDRINUSE else e.strerror
    raise WorkerStartError(f'cannot serve on port {port}: {reason}.') from None
  if host not in _WILDCARD_HOSTS:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    try:
      _try_bind(family, (host, port))
    except OSError as e:
      raise WorkerStartError(
          f'--host {host} is not usable on this machine: {e.strerror}.') from None


def _wait_until_serving(worker: runtime.WorkerProcess, timeout_s: float,
                        stop: threading.Event) -> None:
  """Waits for the binary to accept gRPC connections, or for `stop`.

  Raises:
    WorkerStartError: If the binary exits or is not serving within `timeout_s`.
  """
  channel = grpc.insecure_channel(f'127.0.0.1:{worker.port}', runtime.GRPC_CHANNEL_OPTIONS)
  try:
    stub = tff.framework.RemoteExecutorGrpcStub(channel)
    deadline = time.monotonic() + timeout_s
    while not stub.is_ready and not stop.is_set():
      if not worker.is_running():
        raise WorkerStartError('worker_binary exited during startup (see --worker_log).')
      if time.monotonic() > deadline:
        raise WorkerStartError(f'worker_binary did not accept connections within {timeout_s:g} s.')
      time.sleep(0.05)
  finally:
    channel.close()


def _advertised(host: str, port: int) -> str:
  name = socket.gethostname() if host in _WILDCARD_HOSTS else host
  return f'[{name}]:{port}' if ':' in name else f'{name}:{port}'


def serve(port: int, *, host: str = '0.0.0.0', max_concurrent_computation_calls: int = -1,
          worker_log: Optional[str] = None, startup_timeout_s: float = 60.0,
          stop: Optional[threading.Event] = None) -> int:
  """Serves until `stop` is set (by SIGINT/SIGTERM when called from `main`).

  Returns:
    0 after a requested stop, 1 if the binary exited on its own.

  Raises:
    WorkerStartError: If the port is taken or the binary does not come up.
  """
  stop = stop or threading.Event()
  check_port(port, host)
  worker = runtime.WorkerProcess(
      port=port, max_concurrent_computation_calls=max_concurrent_computation_calls,
      log_path=worker_log)
  try:
    worker.start()
    _wait_until_serving(worker, startup_timeout_s, stop)
    if stop.is_set():
      return 0
    _logger.info('TFF worker_binary (pid %d) listening on [::]:%d (all interfaces); '
                 'trainers connect to %s', worker.pid, port, _advertised(host, port))
    while not stop.wait(_POLL_S):
      if not worker.is_running():
        _logger.error('worker_binary (pid %d) exited unexpectedly', worker.pid)
        return 1
    return 0
  finally:
    worker.stop()
    _logger.info('stopped')


def _configure_logging() -> None:
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter(f'%(asctime)s {PROGRAM}: %(message)s'))
  _logger.addHandler(handler)
  _logger.setLevel(logging.INFO)
  _logger.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The `fedtff-worker` console script and `python -m fedtff.execution.worker`.

  With `--site=NAME`, runs the mutual-TLS site server instead (`fedtff.execution.site`).
  """
  arguments = sys.argv[1:] if argv is None else list(argv)
  if any(a == '--site' or a.startswith('--site=') for a in arguments):
    from fedtff.execution import site  # pylint: disable=g-import-not-at-top
    return site.main(arguments)
  args = _parse_args(argv)
  _configure_logging()
  stop = threading.Event()
  runtime.install_stop_handlers(stop, _logger)
  try:
    return serve(args.port, host=args.host,
                 max_concurrent_computation_calls=args.max_concurrent_computation_calls,
                 worker_log=args.worker_log, startup_timeout_s=args.startup_timeout_s, stop=stop)
  except WorkerStartError as e:
    print(f'{PROGRAM}: error: {e}', file=sys.stderr, flush=True)
    return 1


if __name__ == '__main__':
  sys.exit(main())
