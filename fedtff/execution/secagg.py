"""Pairwise masks for secure aggregation across sites, from authenticated key agreement.

The masking of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), without its dropout recovery:

1. Every site makes a fresh X25519 key pair (`SiteMasker`) and announces the
   public key, signed with its TLS private key (ECDSA P-256) over a protocol
   label, its name and the key, together with its certificate.
2. The trainer relays the announcements (`SecureRounds.setup`). Every site
   checks each peer's certificate (issued by the federation's `ca.pem`, valid
   now, naming the peer) and signature, then derives one key per peer:
   k_ij = HKDF-SHA256(X25519(a_i, A_j), info="fedtff-secagg/1|" + both names
   sorted). The trainer never holds a private key, so it cannot derive k_ij.
3. Each round the trainer sends a fresh random nonce, the streams (one per
   aggregation, e.g. 'value' and 'weight' of a weighted mean) and their
   lengths, and the round's sites. Site i writes `secagg/<stream>.bin` in its
   run directory: m_i = Σ_j ±PRG(k_ij, nonce, stream) mod 2^62 (+ when i's
   name sorts before j's), int64 little-endian. The PRG is the ChaCha20
   keystream under HKDF-SHA256(k_ij, info=nonce|stream). The masks of all the
   round's sites sum to 0 mod 2^62, so the trainer, adding the sites' masked
   partial sums (`fedtff.algorithms.masked_sum`), learns the sum and nothing
   about one site's part beyond it.

A site refuses a nonce it has seen, so no mask is used twice. A site that drops
out leaves its mask in no partial sum: the round fails (see docs/cross_silo.md);
there is no recovery of its mask (the paper's secret sharing of a_i).
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import secrets
import tempfile
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf import hkdf
from cryptography.x509 import oid

PROTOCOL = 'fedtff-secagg/1'
MODULUS_BITS = 62
MASK_DIR = 'secagg'
_MODULUS_MASK = np.uint64((1 << MODULUS_BITS) - 1)
_STREAM_NAME = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
_NONCE = re.compile(r'^[0-9a-f]{32,128}$')

ControlFn = Callable[[Dict[str, Any]], Dict[str, Any]]


def mask_path(run_dir: str, stream: str) -> str:
  """Where a site's mask for `stream` lives: `run_dir/secagg/<stream>.bin`."""
  return os.path.join(run_dir, MASK_DIR, f'{stream}.bin')


def _signed_message(site: str, public_key: bytes) -> bytes:
  return b'\0'.join([PROTOCOL.encode(), b'announce', site.encode(), public_key])


def _b64(data: bytes) -> str:
  return base64.b64encode(data).decode('ascii')


def _unb64(text: Any, what: str) -> bytes:
  try:
    return base64.b64decode(str(text), validate=True)
  except ValueError:
    raise ValueError(f'{what} is not base64.') from None


def _read(path: str, what: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise ValueError(f'Cannot read the {what} {path}: {e.strerror}.') from None


def _cert_names(cert: x509.Certificate) -> set:
  names = {a.value for a in cert.subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)}
  try:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names |= set(san.get_values_for_type(x509.DNSName))
  except x509.ExtensionNotFound:
    pass
  return names


def check_certificate(cert: x509.Certificate, ca: x509.Certificate, name: str) -> None:
  """Raises a one-line ValueError unless `cert` is issued by `ca`, valid now, and names `name`.

  The certificate must be issued directly by `ca` (the federation's CA of
  docs/cross_silo.md), carry `name` as CN or DNS SAN, and hold an ECDSA P-256 key.
  """
  try:
    cert.verify_directly_issued_by(ca)
  except (ValueError, TypeError, crypto_exceptions.InvalidSignature):
    raise ValueError('its certificate is not issued by the federation CA (ca.pem)') from None
  now = datetime.datetime.now(datetime.timezone.utc)
  if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
    raise ValueError(f'its certificate is not valid now (valid {cert.not_valid_before_utc} to '
                     f'{cert.not_valid_after_utc})')
  names = _cert_names(cert)
  if name not in names:
    raise ValueError(f'its certificate names {sorted(names)}, not {name!r}')
  key = cert.public_key()
  if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
    raise ValueError('its certificate key is not ECDSA P-256')


def verify_announcement(announcement: Mapping[str, Any], ca: x509.Certificate) -> bytes:
  """Checks a peer's announcement; returns its X25519 public key (32 raw bytes).

  Raises:
    ValueError: One line naming the peer and what is wrong.
  """
  site = str(announcement.get('site', '?'))
  try:
    if announcement.get('protocol') != PROTOCOL:
      raise ValueError(f'protocol {announcement.get("protocol")!r} is not {PROTOCOL!r}')
    cert = x509.load_pem_x509_certificate(str(announcement['certificate']).encode())
    check_certificate(cert, ca, site)
    public_key = _unb64(announcement['public_key'], 'the public key')
    if len(public_key) != 32:
      raise ValueError('the public key is not 32 bytes (X25519)')
    signature = _unb64(announcement['signature'], 'the signature')
    cert.public_key().verify(signature, _signed_message(site, public_key),
                             ec.ECDSA(hashes.SHA256()))
  except crypto_exceptions.InvalidSignature:
    raise ValueError(f'secagg: announcement of site {site!r} refused: its signature does not '
                     'verify with its certificate') from None
  except KeyError as e:
    raise ValueError(f'secagg: announcement of site {site!r} refused: it has no {e}') from None
  except ValueError as e:
    raise ValueError(f'secagg: announcement of site {site!r} refused: '
                     f'{str(e).splitlines()[0]}') from None
  return public_key


def pair_key(own_key: x25519.X25519PrivateKey, peer_public: bytes, names: Iterable[str]) -> bytes:
  """k_ij = HKDF-SHA256(X25519(own, peer), info="fedtff-secagg/1|" + sorted names)."""
  shared = own_key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
  info = '|'.join([PROTOCOL] + sorted(names)).encode()
  return hkdf.HKDF(hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def prg(key: bytes, nonce: str, stream: str, length: int) -> np.ndarray:
  """`length` uint64 in [0, 2^62): ChaCha20 keystream under HKDF(key, info=nonce|stream)."""
  info = '|'.join([PROTOCOL, 'prg', nonce, stream]).encode()
  stream_key = hkdf.HKDF(hashes.SHA256(), length=32, salt=None, info=info).derive(key)
  # The stream key is used for this one keystream only, so a zero counter/nonce is safe.
  encryptor = Cipher(algorithms.ChaCha20(stream_key, bytes(16)), mode=None).encryptor()
  words = np.frombuffer(encryptor.update(bytes(8 * length)), dtype='<u8')
  return words & _MODULUS_MASK


def _write_atomically(path: str, data: bytes) -> None:
  directory = os.path.dirname(path)
  os.makedirs(directory, mode=0o700, exist_ok=True)
  fd, temp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(temp, path)
  except BaseException:
    os.unlink(temp)
    raise


def check_streams(streams: Any) -> Dict[str, int]:
  """`streams` as {name: length}; raises a one-line ValueError if malformed."""
  if not isinstance(streams, Mapping) or not streams:
    raise ValueError(f'secagg: streams must be a non-empty {{name: length}} map, got {streams!r}.')
  for name, length in streams.items():
    if not isinstance(name, str) or not _STREAM_NAME.match(name):
      raise ValueError(f'secagg: stream name {name!r} must be 1-64 of [A-Za-z0-9_.-].')
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 1 << 30:
      raise ValueError(f'secagg: stream {name!r} length must be an int in [1, 2^30], '
                       f'got {length!r}.')
  return dict(streams)


class SiteMasker:
  """A site's part of the protocol: its X25519 key, peers' keys, and mask files.

  The X25519 key pair lives in memory only: a restarted site has new keys, so
  the trainer runs `SecureRounds.setup` again, and no mask of an earlier run
  can repeat even if a nonce did.

  Args:
    site: This site's name, as its certificate names it.
    run_dir: The site's run directory (its worker's working directory); masks
      go to `run_dir/secagg/<stream>.bin`.
    tls_key_path: The site's TLS private key (PEM, ECDSA P-256), which signs
      the announcement.
    tls_cert_path: The site's TLS certificate (PEM), sent with the announcement.
    ca_path: The federation CA (PEM) that must have issued every peer's certificate.

  Raises:
    ValueError: One line, if a file cannot be read or the site's own
      certificate does not pass the checks its peers will make.
  """

  def __init__(self, site: str, run_dir: str, tls_key_path: str, tls_cert_path: str,
               ca_path: str):
    self.site = site
    self.run_dir = run_dir
    self._tls_key = serialization.load_pem_private_key(
        _read(tls_key_path, 'TLS key'), password=None)
    self._cert_pem = _read(tls_cert_path, 'TLS certificate').decode()
    self._ca = x509.load_pem_x509_certificate(_read(ca_path, 'CA certificate'))
    try:
      check_certificate(x509.load_pem_x509_certificate(self._cert_pem.encode()), self._ca, site)
    except ValueError as e:
      raise ValueError(f'secagg: site {site!r} cannot announce itself: {e}.') from None
    self._key = x25519.X25519PrivateKey.generate()
    self._public = self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
    self._pair_keys: Dict[str, bytes] = {}
    self._nonces: set = set()

  def announcement(self) -> Dict[str, str]:
    """The signed public key the trainer relays to the other sites (JSON)."""
    signature = self._tls_key.sign(_signed_message(self.site, self._public),
                                   ec.ECDSA(hashes.SHA256()))
    return {'protocol': PROTOCOL, 'site': self.site, 'public_key': _b64(self._public),
            'signature': _b64(signature), 'certificate': self._cert_pem}

  def setup(self, announcements: Sequence[Mapping[str, Any]]) -> list:
    """Verifies every peer's announcement and derives the pairwise keys.

    Args:
      announcements: Every site's `announcement()`; this site's own is checked
        to be the one it made.

    Returns:
      The peers' names, sorted.

    Raises:
      ValueError: One line naming the first peer refused and why.
    """
    keys = {}
    for announcement in announcements:
      site = str(announcement.get('site'))
      if site == self.site:
        if announcement.get('public_key') != _b64(self._public):
          raise ValueError(f'secagg: site {site!r} refused an announcement in its own name '
                           'that carries another key.')
        continue
      if site in keys:
        raise ValueError(f'secagg: site {site!r} is announced twice.')
      keys[site] = verify_announcement(announcement, self._ca)
    self._pair_keys = {site: pair_key(self._key, public, (self.site, site))
                       for site, public in keys.items()}
    return sorted(self._pair_keys)

  def _check_round(self, nonce: Any, sites: Any) -> list:
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
      raise ValueError(f'secagg: the nonce must be 32-128 lowercase hex digits, got {nonce!r}.')
    if nonce in self._nonces:
      raise ValueError(f'secagg: site {self.site!r} refuses nonce {nonce}: it was used before.')
    if isinstance(sites, str) or not isinstance(sites, Sequence) or self.site not in sites:
      raise ValueError(f'secagg: the round\'s sites {sites!r} must list site {self.site!r}.')
    if len(set(sites)) < 2:
      raise ValueError(f'secagg: site {self.site!r} refuses a round without other sites: its '
                       'mask would be 0 and its sum in the clear.')
    unknown = sorted(set(sites) - set(self._pair_keys) - {self.site})
    if unknown:
      raise ValueError(f'secagg: site {self.site!r} has no key for {", ".join(unknown)} '
                       '(run secagg_setup with their announcements first).')
    return sorted(set(sites) - {self.site})

  def mask(self, nonce: str, stream: str, length: int, peers: Iterable[str]) -> np.ndarray:
    """Σ_j ±PRG(k_ij, nonce, stream) mod 2^62 over `peers`, as uint64."""
    total = np.zeros(length, np.uint64)
    for peer in peers:
      pad = prg(self._pair_keys[peer], nonce, stream, length)
      total = (total + pad) if self.site < peer else (total - pad)
    return total & _MODULUS_MASK

  def prepare_round(self, nonce: str, streams: Mapping[str, int], sites: Sequence[str]) -> list:
    """Writes this round's mask of each stream to `run_dir/secagg/<stream>.bin`.

    Args:
      nonce: The round's fresh random nonce (hex); a nonce seen before is refused.
      streams: {stream name: number of int64 elements}.
      sites: Every site taking part in the round, this one included.

    Returns:
      The paths written.

    Raises:
      ValueError: One line, for a reused nonce, a malformed stream, or sites
        that omit this one or name one without a key.
    """
    streams = check_streams(streams)
    peers = self._check_round(nonce, sites)
    self._nonces.add(nonce)
    paths = []
    for stream, length in streams.items():
      mask = self.mask(nonce, stream, length, peers).astype('<i8')
      paths.append(mask_path(self.run_dir, stream))
      _write_atomically(paths[-1], mask.tobytes())
    return paths

  def control_handlers(self) -> Dict[str, ControlFn]:
    """The site server's control ops: JSON dict in, JSON dict out (errors as {"error": ...})."""
    return {'secagg_announce': _handler(lambda request: self.announcement()),
            'secagg_setup': _handler(lambda request: {
                'peers': self.setup(request['announcements'])}),
            'secagg_round': _handler(lambda request: {'files': [
                os.path.relpath(p, self.run_dir) for p in self.prepare_round(
                    request['nonce'], request['streams'], request['sites'])]})}


def _handler(fn: ControlFn) -> ControlFn:
  def handle(request: Dict[str, Any]) -> Dict[str, Any]:
    try:
      return fn(request)
    except KeyError as e:
      return {'error': f'secagg: the request {request.get("op")!r} has no {e}.'}
    except ValueError as e:
      return {'error': str(e).splitlines()[0]}
  return handle


class SecAggError(RuntimeError):
  """A site refused a secure-aggregation step; the message names it."""


class SecureRounds:
  """The trainer's side: relays announcements, then sends each round a fresh nonce.

  The trainer holds no secret: it forwards what the sites sign and learns only
  the sum their masked partial aggregates add up to.

  Args:
    controls: {site name: control fn}, each sending one JSON request to that
      site's control channel and returning its JSON answer (e.g.
      `functools.partial(fedtff.execution.tls.control_request, creds, site, address)`).
  """

  def __init__(self, controls: Mapping[str, ControlFn]):
    if len(controls) < 2:
      raise ValueError(f'SecureRounds needs at least two sites, got {sorted(controls)}.')
    self._controls = dict(controls)
    self.sites = sorted(self._controls)

  def _ask(self, site: str, request: Dict[str, Any]) -> Dict[str, Any]:
    answer = self._controls[site](request)
    if 'error' in answer:
      raise SecAggError(f'Site {site!r} refused {request["op"]}: {answer["error"]}')
    return answer

  def setup(self, announcements: Optional[Mapping[str, Mapping[str, Any]]] = None
            ) -> Dict[str, Dict[str, Any]]:
    """Gives every site all sites' signed keys; returns the announcements.

    Args:
      announcements: {site: announcement}, e.g. the `secagg` entries of the
        sites' manifests; by default each site is asked (`secagg_announce`).

    Raises:
      SecAggError: Naming a site that refused, or that announced another name.
    """
    if announcements is None:
      announcements = {site: self._ask(site, {'op': 'secagg_announce'}) for site in self.sites}
    for site in self.sites:
      if site not in announcements or announcements[site].get('site') != site:
        raise SecAggError(f'Site {site!r} has no announcement in its own name.')
    relayed = [dict(announcements[site]) for site in self.sites]
    for site in self.sites:
      self._ask(site, {'op': 'secagg_setup', 'announcements': relayed})
    return {site: dict(announcements[site]) for site in self.sites}

  def prepare_round(self, streams: Mapping[str, int]) -> str:
    """Has every site write its masks for a fresh random nonce; returns the nonce."""
    nonce = secrets.token_hex(16)
    request = {'op': 'secagg_round', 'nonce': nonce, 'streams': check_streams(streams),
               'sites': self.sites}
    for site in self.sites:
      self._ask(site, request)
    return nonce
