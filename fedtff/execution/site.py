"""`fedtff-worker --site=NAME`: a site that serves computations on its own data, over mutual TLS.

  python -m fedtff.execution.site --site=alice --data=DIR --port=8000 --credentials=CERTS/alice

(also `fedtff-worker --site=alice ...`). The site server (docs/cross_silo.md,
"The site server"):

* makes a private run directory RUN (mode 0700) with `RUN/data -> DIR` and
  `RUN/secagg/`, and starts TFF's `worker_binary` with `cwd=RUN` inside a
  network namespace of its own that has only loopback, so the binary's
  insecure gRPC port exists nowhere else;
* listens on `--host:--port` with TLS 1.3, requiring a client certificate that
  chains to `ca.pem` and whose SHA-256 is one of `allow/*.pem`;
* relays connections that negotiate ALPN `h2` (gRPC) to the private binary,
  creating the upstream socket inside the binary's namespace (setns on a
  short-lived thread), and answers ALPN `fedtff-control/1` connections with
  one JSON request/answer (`{"op": "manifest"}`, `{"op": "hello"}`, and the
  ops of `control_handlers`; the command line adds secure aggregation's,
  `add_secure_aggregation`);
* refuses anything else (plain text, no or unknown client certificate, a
  certificate not on the allow-list, another ALPN) with one log line,
  `fedtff-site alice: refused <peer>: <reason>`, and closes the connection;
* on SIGINT/SIGTERM stops the binary (its namespace goes with it), closes
  every connection, deletes RUN and exits 0.

Needs CAP_SYS_ADMIN (root, or the capability granted to the process) for
unshare(CLONE_NEWNET) and setns.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import select
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from fedtff.execution import runtime
from fedtff.execution import secagg
from fedtff.execution import tls

PROGRAM = 'fedtff-site'
H2_ALPN = 'h2'
DEFAULT_WORKER_PORT = 8001
CLONE_NEWNET = 0x40000000
RELAY_BUFFER_BYTES = 256 * 1024
_HANDSHAKE_TIMEOUT_S = 10.0
_CONTROL_TIMEOUT_S = 30.0
_POLL_S = 0.2
_LIBC = ctypes.CDLL(None, use_errno=True)
_logger = logging.getLogger(PROGRAM)

# Run by the worker's own Python before it becomes worker_binary (same pid):
# a new network namespace, its loopback up (SIOCGIFFLAGS/SIOCSIFFLAGS), exec.
_NETNS_EXEC = r'''
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:
  sys.stderr.write('fedtff-site: unshare(CLONE_NEWNET) failed: %s\n'
                   % os.strerror(ctypes.get_errno()))
  os._exit(126)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
  flags = struct.unpack('16sH14x', fcntl.ioctl(s, 0x8913, struct.pack('16sH14x', b'lo', 0)))[1]
  fcntl.ioctl(s, 0x8914, struct.pack('16sH14x', b'lo', flags | 1))
os.execv(sys.argv[1], sys.argv[1:])
'''

Manifest = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]
Handler = Callable[[Dict[str, Any]], Dict[str, Any]]


class SiteStartError(RuntimeError):
  """The site could not start (bad credentials, port taken, binary failed, ...)."""


def run_in_netns(netns: Union[str, int], fn: Callable[[], Any]) -> Any:
  """Runs `fn()` on a fresh thread inside network namespace `netns` (path or fd).

  Sockets created by `fn` keep that namespace; the caller's threads are
  untouched. Raises what `fn` raises, or OSError if setns fails.
  """
  result = {}

  def target():
    try:
      fd = os.open(netns, os.O_RDONLY) if isinstance(netns, str) else netns
      try:
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
          errno = ctypes.get_errno()
          raise OSError(errno, f'setns into {netns}: {os.strerror(errno)}')
      finally:
        if isinstance(netns, str):
          os.close(fd)
      result['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      result['error'] = e

  thread = threading.Thread(target=target, name='fedtff-netns')
  thread.start()
  thread.join()
  if 'error' in result:
    raise result['error']
  return result['value']


class _NamespacedWorker(runtime.WorkerProcess):
  """`runtime.WorkerProcess` whose binary runs in a new network namespace with only loopback."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._args = [sys.executable, '-I', '-S', '-c', _NETNS_EXEC] + self._args

  def netns_path(self) -> str:
    return f'/proc/{self.pid}/ns/net'


def _fingerprint(der: bytes) -> str:
  return hashlib.sha256(der).hexdigest()


def _load_allow_list(credentials: str) -> Dict[str, str]:
  allow_dir = os.path.join(credentials, 'allow')
  names = sorted(n for n in os.listdir(allow_dir) if n.endswith('.pem')) \
      if os.path.isdir(allow_dir) else []
  if not names:
    raise SiteStartError(f'{allow_dir} holds no allowed trainer certificates (<trainer>.pem).')
  allowed = {}
  for name in names:
    with open(os.path.join(allow_dir, name), 'rb') as f:
      try:
        allowed[tls.pem_sha256(f.read())] = name[:-len('.pem')]
      except ValueError:
        raise SiteStartError(f'{os.path.join(allow_dir, name)} is not a PEM certificate.') from None
  return allowed


def server_context(credentials: str) -> ssl.SSLContext:
  """The site's TLS 1.3 server context: its certificate, client certificates required."""
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = ssl.TLSVersion.TLSv1_3
  context.verify_mode = ssl.CERT_REQUIRED
  paths = [os.path.join(credentials, name) for name in ('ca.pem', 'site.pem', 'site.key')]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise SiteStartError(f'missing credentials file {missing[0]}.')
  try:
    context.load_verify_locations(paths[0])
    context.load_cert_chain(paths[1], paths[2])
  except ssl.SSLError as e:
    raise SiteStartError(f'bad credentials in {credentials}: {e.reason or e}.') from None
  context.set_alpn_protocols([H2_ALPN, tls.CONTROL_ALPN])
  return context


def _refusal_reason(error: Exception) -> str:
  """Why a TLS handshake failed, in a few words."""
  reason = getattr(error, 'reason', None) or str(error) or type(error).__name__
  text = reason.lower().replace('_', ' ')
  if 'peer did not return a certificate' in text or 'certificate required' in text:
    return 'no client certificate'
  if 'certificate verify failed' in text:
    return 'client certificate does not verify against ca.pem'
  if 'alert' in text:
    return f"the client rejected the site's certificate ({text})"
  if any(s in text for s in ('http request', 'wrong version', 'unexpected message',
                             'record layer failure', 'unsupported protocol', 'packet length')):
    return f'not a TLS 1.3 connection ({text})'
  if isinstance(error, (socket.timeout, TimeoutError)):
    return f'no TLS handshake within {_HANDSHAKE_TIMEOUT_S:g} s'
  return f'TLS handshake failed ({text})'


def _relay(a: socket.socket, b: socket.socket, stopping: threading.Event) -> None:
  """Copies bytes both ways between `a` (may be TLS) and `b` until either side closes."""
  for sock in (a, b):
    sock.setblocking(False)
  pending = {a: bytearray(), b: bytearray()}  # Bytes waiting to be written to the key.
  other = {a: b, b: a}
  poller = select.poll()
  while not stopping.is_set():
    for sock in (a, b):
      mask = (select.POLLIN if len(pending[other[sock]]) < RELAY_BUFFER_BYTES else 0) | (
          select.POLLOUT if pending[sock] else 0)
      poller.register(sock, mask)
    # Decrypted bytes OpenSSL holds do not wake poll(): take them first, room permitting.
    ready = [a] if (len(pending[b]) < RELAY_BUFFER_BYTES
                    and getattr(a, 'pending', lambda: 0)()) else []
    events = dict(poller.poll(_POLL_S * 1000)) if not ready else {}
    for sock in (a, b):
      if events.get(sock.fileno(), 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
        ready.append(sock)
    for sock in ready:
      if not _read_into(sock, pending[other[sock]]):
        _flush(other[sock], pending[other[sock]])
        return
    for sock in (a, b):
      if pending[sock] and not _write_from(sock, pending[sock]):
        return


def _read_into(sock: socket.socket, buffer: bytearray) -> bool:
  """Reads what `sock` has (draining TLS records); False at EOF or error."""
  while len(buffer) < RELAY_BUFFER_BYTES:
    try:
      data = sock.recv(RELAY_BUFFER_BYTES)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
      return True
    except OSError:
      return False
    if not data:
      return False
    buffer += data
  return True


def _write_from(sock: socket.socket, buffer: bytearray) -> bool:
  """Writes what `sock` accepts from `buffer`; False on error."""
  try:
    sent = sock.send(buffer)
  except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
    return True
  except OSError:
    return False
  del buffer[:sent]
  return True


def _flush(sock: socket.socket, buffer: bytearray) -> None:
  """Best effort: the last bytes a closing peer sent still reach the other side."""
  deadline = time.monotonic() + 1.0
  while buffer and time.monotonic() < deadline:
    if not _write_from(sock, buffer):
      return
    if buffer:
      select.select([], [sock], [], 0.05)


class SiteServer:
  """A site: a private `worker_binary` behind a mutual-TLS front end (module docstring).

  Args:
    site: The site's name, as in its certificate.
    data_dir: The site's data directory; graphs read it as `data/...`.
    credentials: The site's credentials directory (`ca.pem`, `site.pem`,
      `site.key`, `allow/*.pem`).
    port: The TLS port.
    host: The address to listen on ('' or '0.0.0.0' for all IPv4 ones).
    manifest: The answer to `{"op": "manifest"}`, or a no-argument callable
      returning it (called on each request).
    control_handlers: `{op: fn}`, fn(request dict) -> answer dict, for other
      ops. `server.control_handlers` may be extended after `start()` (e.g.
      with handlers bound to `server.secagg_dir`).
    worker_port: The binary's port inside its private namespace.
    worker_log: File for the binary's output (default: discarded).
  """

  def __init__(self, site: str, data_dir: str, credentials: str, *, port: int,
               host: str = '0.0.0.0', manifest: Optional[Manifest] = None,
               control_handlers: Optional[Mapping[str, Handler]] = None,
               worker_port: int = DEFAULT_WORKER_PORT, worker_log: Optional[str] = None):
    if not os.path.isdir(data_dir):
      raise SiteStartError(f'--data {data_dir} is not a directory.')
    self.site = site
    self.data_dir = os.path.abspath(data_dir)
    self.port = port
    self.host = host
    self.manifest = manifest
    self.control_handlers = dict(control_handlers or {})
    self._context = server_context(credentials)
    self._allowed = _load_allow_list(credentials)
    self._worker_port = worker_port
    self._worker_log = worker_log
    self._stopping = threading.Event()
    self._connections = set()
    self._lock = threading.Lock()
    self._listener: Optional[socket.socket] = None
    self._netns_fd: Optional[int] = None
    self.worker: Optional[_NamespacedWorker] = None
    self.run_dir: Optional[str] = None

  @property
  def secagg_dir(self) -> str:
    return os.path.join(self.run_dir, 'secagg')

  def start(self, startup_timeout_s: float = 60.0,
            stop: Optional[threading.Event] = None) -> 'SiteServer':
    """Binds the port, starts the private binary and waits until it accepts connections.

    Returns early if `stop` is set meanwhile.
    """
    try:
      self._listener = socket.create_server((self.host, self.port))
    except OSError as e:
      raise SiteStartError(f'cannot listen on {self.host}:{self.port}: {e.strerror}.') from None
    self._listener.settimeout(_POLL_S)
    self.run_dir = tempfile.mkdtemp(prefix=f'fedtff-site-{self.site}-')
    os.symlink(self.data_dir, os.path.join(self.run_dir, 'data'))
    os.mkdir(self.secagg_dir, 0o700)
    self.worker = _NamespacedWorker(port=self._worker_port, log_path=self._worker_log,
                                    cwd=self.run_dir).start()
    self._wait_for_worker(startup_timeout_s, stop or threading.Event())
    return self

  def _wait_for_worker(self, timeout_s: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    own = os.stat('/proc/self/ns/net').st_ino
    while not stop.is_set():
      if not self.worker.is_running():
        raise SiteStartError('worker_binary exited during startup (see --worker_log).')
      if time.monotonic() > deadline:
        raise SiteStartError(f'worker_binary did not accept connections within {timeout_s:g} s.')
      try:
        if self._netns_fd is None and os.stat(self.worker.netns_path()).st_ino != own:
          self._netns_fd = os.open(self.worker.netns_path(), os.O_RDONLY)
        if self._netns_fd is not None:
          self._connect_upstream().close()
          return
      except OSError:
        pass
      time.sleep(0.05)

  def _connect_upstream(self) -> socket.socket:
    return run_in_netns(self._netns_fd, lambda: socket.create_connection(
        ('127.0.0.1', self._worker_port), timeout=5.0))

  def serve(self, stop: Optional[threading.Event] = None) -> int:
    """Accepts connections until `stop` is set (0) or the binary exits (1)."""
    stop = stop or threading.Event()
    if stop.is_set():
      return 0
    _logger.info('worker_binary (pid %d) serves only inside its own network namespace; '
                 'TLS front end listening on %s:%d', self.worker.pid, self.host or '*', self.port)
    while not stop.is_set():
      if not self.worker.is_running():
        _logger.error('worker_binary (pid %d) exited unexpectedly', self.worker.pid)
        return 1
      try:
        conn, peer = self._listener.accept()
      except socket.timeout:
        continue
      except OSError:
        if stop.is_set():
          break
        raise
      threading.Thread(target=self._handle, args=(conn, peer), daemon=True,
                       name=f'fedtff-site-{peer[0]}:{peer[1]}').start()
    return 0

  def stop(self) -> None:
    """Closes the port and every connection, stops the binary, deletes the run directory."""
    self._stopping.set()
    if self._listener is not None:
      self._listener.close()
    with self._lock:
      connections = list(self._connections)
    for conn in connections:
      _close(conn)
    if self.worker is not None:
      self.worker.stop()
    if self._netns_fd is not None:
      os.close(self._netns_fd)
      self._netns_fd = None
    if self.run_dir is not None:
      shutil.rmtree(self.run_dir, ignore_errors=True)
    _logger.info('stopped')

  def _refuse(self, peer, reason: str) -> None:
    _logger.warning('refused %s:%d: %s', peer[0], peer[1], reason)

  def _handle(self, raw: socket.socket, peer) -> None:
    self._track(raw, True)
    try:
      raw.settimeout(_HANDSHAKE_TIMEOUT_S)
      try:
        conn = self._context.wrap_socket(raw, server_side=True)
      except (ssl.SSLError, OSError) as e:
        self._refuse(peer, _refusal_reason(e))
        return
      self._track(conn, True)
      try:
        self._serve_tls(conn, peer)
      finally:
        self._track(conn, False)
        _close(conn)
    finally:
      self._track(raw, False)
      _close(raw)

  def _serve_tls(self, conn: ssl.SSLSocket, peer) -> None:
    der = conn.getpeercert(binary_form=True)
    fingerprint = _fingerprint(der)
    alpn = conn.selected_alpn_protocol()
    if fingerprint not in self._allowed:
      name = dict(x[0] for x in conn.getpeercert()['subject']).get('commonName', '?')
      reason = (f'trainer certificate {name} (sha256:{fingerprint[:16]}...) is not on '
                f"{self.site}'s allow-list")
      self._refuse(peer, reason)
      if alpn == tls.CONTROL_ALPN:
        _send_json(conn, {'error': f'refused: {reason}'})
    elif alpn == H2_ALPN:
      self._relay(conn, peer)
    elif alpn == tls.CONTROL_ALPN:
      self._control(conn, peer)
    else:
      self._refuse(peer, f'ALPN {alpn or "none"}: the site serves only h2 and '
                         f'{tls.CONTROL_ALPN}')

  def _relay(self, conn: ssl.SSLSocket, peer) -> None:
    try:
      upstream = self._connect_upstream()
    except OSError as e:
      _logger.error('cannot reach worker_binary for %s:%d: %s', peer[0], peer[1], e)
      return
    self._track(upstream, True)
    try:
      _relay(conn, upstream, self._stopping)
    except (OSError, ValueError):  # A socket closed by stop().
      pass
    finally:
      self._track(upstream, False)
      _close(upstream)

  def _control(self, conn: ssl.SSLSocket, peer) -> None:
    conn.settimeout(_CONTROL_TIMEOUT_S)
    try:
      line = conn.makefile('rb').readline(tls.MAX_CONTROL_BYTES)
    except OSError:
      line = b''
    if not line.strip():  # E.g. the trainer's pin check failed after the handshake.
      self._refuse(peer, 'the connection closed without a control request')
      return
    try:
      request = json.loads(line)
    except ValueError:
      request = None
    if not isinstance(request, dict):
      _send_json(conn, {'error': 'a control request is one JSON object and a newline.'})
      return
    _send_json(conn, self._answer(request))

  def _answer(self, request: Dict[str, Any]) -> Dict[str, Any]:
    op = request.get('op')
    try:
      if op == 'hello':
        return {'site': self.site, 'format': tls.CONTROL_ALPN}
      if op == 'manifest' and self.manifest is not None:
        return dict(self.manifest() if callable(self.manifest) else self.manifest)
      if op in self.control_handlers:
        return self.control_handlers[op](request)
    except Exception as e:  # pylint: disable=broad-except
      _logger.warning('control op %s failed: %s', op, e)
      return {'error': f'{op} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}'}
    known = ['hello'] + (['manifest'] if self.manifest is not None else []) + sorted(
        self.control_handlers)
    return {'error': f'unknown op {op!r}; this site serves {", ".join(known)}.'}

  def _track(self, sock: socket.socket, add: bool) -> None:
    with self._lock:
      (self._connections.add if add else self._connections.discard)(sock)


def _send_json(conn: ssl.SSLSocket, answer: Dict[str, Any]) -> None:
  try:
    conn.sendall(json.dumps(answer).encode() + b'\n')
  except OSError:
    pass


def _close(sock: socket.socket) -> None:
  try:
    sock.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass
  sock.close()


def _manifest_provider(site: str, data_dir: str) -> Callable[[], Dict[str, Any]]:
  """`fedtff.execution.site_data.read_manifest(DIR)`, imported when first asked for."""

  def manifest():
    try:
      from fedtff.execution import site_data  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise RuntimeError('this fedtff has no fedtff.execution.site_data to read a '
                         'manifest with') from None
    answer = dict(site_data.read_manifest(data_dir))
    answer.setdefault('site', site)
    return answer

  return manifest


def add_secure_aggregation(server: SiteServer, credentials: str) -> secagg.SiteMasker:
  """Serves secure aggregation's control ops (docs/cross_silo.md) on a started `server`.

  Its masks go to `server.secagg_dir`; the manifest gains `"secagg"`, the
  site's signed key announcement.

  Raises:
    SiteStartError: If the site's certificate cannot sign announcements.
  """
  path = lambda name: os.path.join(credentials, name)
  try:
    masker = secagg.SiteMasker(server.site, server.run_dir, path('site.key'), path('site.pem'),
                               path('ca.pem'))
  except ValueError as e:
    raise SiteStartError(str(e)) from None
  server.control_handlers.update(masker.control_handlers())
  manifest = server.manifest
  if manifest is not None:
    server.manifest = lambda: dict(manifest() if callable(manifest) else manifest,
                                   secagg=masker.announcement())
  return masker


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog=PROGRAM, description="Serves TFF computations on a site's own data over mutual TLS.")
  parser.add_argument('--site', required=True, help='The site name, as in its certificate.')
  parser.add_argument('--data', required=True, help="The site's data directory.")
  parser.add_argument('--port', type=int, required=True, help='The TLS port.')
  parser.add_argument('--credentials', required=True,
                      help='Credentials directory (ca.pem, site.pem, site.key, allow/).')
  parser.add_argument('--host', default='0.0.0.0', help='Address to listen on.')
  parser.add_argument('--worker_port', type=int, default=DEFAULT_WORKER_PORT,
                      help="worker_binary's port inside its private network namespace.")
  parser.add_argument('--worker_log', default=None,
                      help="File for worker_binary's own output (default: discarded).")
  parser.add_argument('--startup_timeout_s', type=float, default=60.0)
  args = parser.parse_args(argv)
  for flag in ('port', 'worker_port'):
    if not 1 <= getattr(args, flag) <= 65535:
      parser.error(f'--{flag} must be in [1, 65535], got {getattr(args, flag)}')
  return args


def _configure_logging(site: str) -> None:
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter(f'%(asctime)s {PROGRAM} {site}: %(message)s'))
  _logger.handlers[:] = [handler]
  _logger.setLevel(logging.INFO)
  _logger.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m fedtff.execution.site` and `fedtff-worker --site=...`."""
  args = _parse_args(argv)
  _configure_logging(args.site)
  stop = threading.Event()
  runtime.install_stop_handlers(stop, _logger)
  server = None
  try:
    server = SiteServer(args.site, args.data, args.credentials, port=args.port, host=args.host,
                        manifest=_manifest_provider(args.site, args.data),
                        worker_port=args.worker_port, worker_log=args.worker_log)
    server.start(args.startup_timeout_s, stop)
    add_secure_aggregation(server, args.credentials)
    return server.serve(stop)
  except SiteStartError as e:
    print(f'{PROGRAM} {args.site}: error: {e}', file=sys.stderr, flush=True)
    return 1
  finally:
    if server is not None:
      server.stop()


if __name__ == '__main__':
  sys.exit(main())
