"""The trainer's side of cross-silo connections: credentials, pinned mTLS, control requests.

A trainer holds the directory `python -m fedtff.execution.certs` writes for it
(docs/cross_silo.md, "Credentials"):

  creds = tls.TrainerCredentials.load('CERTS/trainer')
  manifest = tls.control_request(creds, 'alice', '10.0.0.2:8000', {'op': 'manifest'})
  channel = tls.secure_channel(creds, 'alice', '10.0.0.2:8000')   # gRPC to alice's worker

Every connection is mutual TLS 1.3: the site's chain must lead to `ca.pem` and
name the site; before gRPC is given a channel, a control handshake checks that
the site's certificate is exactly the pinned `sites/<site>.pem`. Refusals
raise `SiteConnectionError` with one line naming the site and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import socket
import ssl
from typing import Any, Dict, Iterator, Mapping

import grpc

from fedtff.execution import distributed
from fedtff.execution import runtime
from fedtff.execution import site_data

CONTROL_ALPN = 'fedtff-control/1'
MAX_CONTROL_BYTES = 64 * 1024 * 1024


class SiteConnectionError(ConnectionError):
  """A site could not be reached, or refused us, or failed its pin."""


def pem_sha256(pem: bytes) -> str:
  """SHA-256 (hex) of the DER form of the first certificate in `pem`."""
  return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode('ascii'))).hexdigest()


def _read(directory: str, name: str) -> bytes:
  path = os.path.join(directory, name)
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f'cannot read {path}: {e.strerror}.') from None
  if b'-----BEGIN' not in data:
    raise ValueError(f'{path} is not a PEM file.')
  return data


@dataclasses.dataclass(frozen=True)
class TrainerCredentials:
  """A trainer's CA, certificate and key, and the pinned site certificates.

  Attributes:
    directory: Where they were loaded from.
    ca_pem, cert_pem, key_pem: `ca.pem`, `trainer.pem`, `trainer.key`.
    site_pins: SHA-256 (hex, of the DER) of `sites/<site>.pem`, by site name.
  """
  directory: str
  ca_pem: bytes
  cert_pem: bytes
  key_pem: bytes
  site_pins: Dict[str, str]

  @classmethod
  def load(cls, directory: str) -> 'TrainerCredentials':
    """Reads a trainer credentials directory; one-line ValueError naming a missing/bad file."""
    pins = {}
    for path in sorted(glob.glob(os.path.join(directory, 'sites', '*.pem'))):
      site = os.path.basename(path)[:-len('.pem')]
      pins[site] = _pem_pin(path, _read(os.path.dirname(path), os.path.basename(path)))
    if not pins:
      raise ValueError(f'{os.path.join(directory, "sites")} holds no pinned site '
                       'certificates (<site>.pem).')
    creds = cls(directory, _read(directory, 'ca.pem'), _read(directory, 'trainer.pem'),
                _read(directory, 'trainer.key'), pins)
    creds.ssl_context()  # Checks that key and certificate match.
    return creds

  def pin(self, site: str) -> str:
    if site not in self.site_pins:
      raise ValueError(f'no pinned certificate for site {site!r} in '
                       f'{os.path.join(self.directory, "sites")} (have: '
                       f'{", ".join(sorted(self.site_pins))}).')
    return self.site_pins[site]

  def ssl_context(self) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting the trainer certificate, trusting `ca.pem` only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=self.ca_pem.decode('ascii'))
    try:
      context.load_cert_chain(os.path.join(self.directory, 'trainer.pem'),
                              os.path.join(self.directory, 'trainer.key'))
    except ssl.SSLError as e:
      raise ValueError(f'{self.directory}: trainer.key does not match trainer.pem, or is not '
                       f'a key ({e.reason}).') from None
    context.set_alpn_protocols([CONTROL_ALPN])
    return context


def _pem_pin(path: str, pem: bytes) -> str:
  try:
    return pem_sha256(pem)
  except ValueError:
    raise ValueError(f'{path} is not a PEM certificate.') from None


def _describe_ssl_error(e: ssl.SSLError) -> str:
  reason = (e.reason or str(e)).lower().replace('_', ' ')
  if 'certificate verify failed' in reason:
    return f'its certificate does not verify against our ca.pem ({e.verify_message})'
  return f'TLS: {reason}'


def _connect(credentials: TrainerCredentials, site: str, address: str,
             timeout_s: float) -> ssl.SSLSocket:
  """A control TLS connection to `site` with its certificate checked against the pin."""
  host, port = runtime.parse_address(address)
  expected = credentials.pin(site)
  where = f'site {site} at {address}'
  try:
    raw = socket.create_connection((host, port), timeout=timeout_s)
  except OSError as e:
    raise SiteConnectionError(f'{where} is unreachable: {e.strerror or e}.') from None
  try:
    conn = credentials.ssl_context().wrap_socket(raw, server_hostname=site)
  except ssl.SSLCertVerificationError as e:
    raw.close()
    raise SiteConnectionError(f'{where} refused: {_describe_ssl_error(e)}.') from None
  except (ssl.SSLError, OSError) as e:
    raw.close()
    reason = _describe_ssl_error(e) if isinstance(e, ssl.SSLError) else str(e)
    raise SiteConnectionError(f'{where}: TLS handshake failed ({reason}).') from None
  got = hashlib.sha256(conn.getpeercert(binary_form=True)).hexdigest()
  if got != expected:
    conn.close()
    raise SiteConnectionError(
        f'{where} presented certificate sha256:{got[:16]}..., not the pinned '
        f'{os.path.join(credentials.directory, "sites", site + ".pem")} '
        f'(sha256:{expected[:16]}...); refusing to connect.')
  return conn


def _read_line(conn: ssl.SSLSocket) -> bytes:
  chunks, size = [], 0
  while True:
    chunk = conn.recv(65536)
    if not chunk:
      break
    chunks.append(chunk)
    size += len(chunk)
    if chunk.endswith(b'\n') or size > MAX_CONTROL_BYTES:
      break
  return b''.join(chunks)


def control_request(credentials: TrainerCredentials, site: str, address: str,
                    request: Dict[str, Any], timeout_s: float = 30.0) -> Dict[str, Any]:
  """Sends one JSON request on the site's control channel and returns its JSON answer.

  Raises:
    SiteConnectionError: If the site cannot be reached, refuses us (e.g. our
      certificate is not on its allow-list), fails its pin, or answers with an
      error; one line naming the site.
  """
  where = f'site {site} at {address}'
  conn = _connect(credentials, site, address, timeout_s)
  try:
    conn.sendall(json.dumps(request).encode() + b'\n')
    line = _read_line(conn)
  except ssl.SSLError as e:  # TLS 1.3: the site checks our certificate after our handshake.
    # Its alert names the reason; if it closed before we read the alert, we see only EOF.
    reason = ('it closed the connection' if isinstance(e, ssl.SSLEOFError)
              else (e.reason or str(e)).lower().replace('_', ' '))
    raise SiteConnectionError(f'{where} refused our certificate ({reason}).') from None
  except OSError as e:
    raise SiteConnectionError(f'{where} closed the connection: {e}.') from None
  finally:
    conn.close()
  if not line:
    raise SiteConnectionError(f'{where} closed the control connection without an answer.')
  try:
    answer = json.loads(line)
  except ValueError:
    raise SiteConnectionError(f'{where} sent a control answer that is not JSON.') from None
  if 'error' in answer:
    raise SiteConnectionError(f'{where}: {answer["error"]}')
  return answer


def secure_channel(credentials: TrainerCredentials, site: str, address: str, *,
                   timeout_s: float = 30.0) -> grpc.Channel:
  """A gRPC channel to the site's worker over mutual TLS, after checking the site's pin.

  The pin is checked by a control handshake (`{"op": "hello"}`) on a separate
  TLS connection; gRPC's own handshake then checks the chain to `ca.pem` and
  the name `site` (gRPC has no hook for the pin itself, docs/cross_silo.md).

  Raises:
    SiteConnectionError: As `control_request`.
  """
  control_request(credentials, site, address, {'op': 'hello'}, timeout_s)
  channel_credentials = grpc.ssl_channel_credentials(
      root_certificates=credentials.ca_pem, private_key=credentials.key_pem,
      certificate_chain=credentials.cert_pem)
  options = runtime.GRPC_CHANNEL_OPTIONS + (('grpc.ssl_target_name_override', site),)
  return grpc.secure_channel(address, channel_credentials, options)


def site_stub(credentials: TrainerCredentials, site: str, address: str, *,
              timeout_s: float = 30.0) -> distributed.WorkerStub:
  """fedtff's `WorkerStub` (probes, named errors) over `secure_channel`."""
  channel = secure_channel(credentials, site, address, timeout_s=timeout_s)
  return distributed.WorkerStub(address, timeout_s=timeout_s, channel=channel)


def _wait_until_answering(stub: distributed.WorkerStub, site: str, timeout_s: float) -> None:
  try:
    stub.probe_future(timeout_s, wait_for_ready=True).result()
  except grpc.RpcError as e:
    raise distributed.WorkerUnavailableError(
        f'site {site} at {stub.address} accepted our TLS connection but its worker did not '
        f'answer within {timeout_s:g} s ({e.code().name}).', [stub.address]) from None


@contextlib.contextmanager
def secure_runtime(credentials: TrainerCredentials, sites: Mapping[str, str], *,
                   connect_timeout_s: float = 30.0) -> Iterator[distributed.SplittingContext]:
  """`distributed.remote_runtime` over mutual TLS to named sites (`{site: 'host:port'}`).

  Raises:
    SiteConnectionError: If a site cannot be reached, refuses us or fails its pin.
    WorkerUnavailableError: If a site's worker does not answer within
      `connect_timeout_s`, at the start or later (as `remote_runtime`).
  """
  stubs = []
  try:
    for site, address in sites.items():
      stubs.append(site_stub(credentials, site, address, timeout_s=connect_timeout_s))
      _wait_until_answering(stubs[-1], site, connect_timeout_s)
  except Exception:
    for stub in stubs:
      stub.close()
    raise
  for stub in stubs:
    stub.start_monitor()
  with distributed.splitting_runtime(stubs) as context:
    yield context


class TlsConnector:
  """`fedtff.execution.sites.Connector` over mutual TLS: pinned channels, manifests by control.

  `sites.site_runtime(specs, connect=TlsConnector(credentials))` reaches sites
  served by `fedtff.execution.site` (docs/cross_silo.md).
  """

  def __init__(self, credentials: TrainerCredentials):
    self.credentials = credentials

  def channel(self, site: str, address: str) -> grpc.Channel:
    return secure_channel(self.credentials, site, address)

  def manifest(self, site: str, address: str, *, timeout_s: float) -> Dict[str, Any]:
    answer = control_request(self.credentials, site, address, {'op': 'manifest'}, timeout_s)
    return site_data.check_manifest(answer, f'site {site} ({address})')

  def control(self, site: str, address: str, request: Dict[str, Any], *,
              timeout_s: float = 30.0) -> Dict[str, Any]:
    """One request on the site's control channel (`control_request`), e.g. secure
    aggregation's (`fedtff.execution.secagg.SecureRounds`)."""
    return control_request(self.credentials, site, address, request, timeout_s)
