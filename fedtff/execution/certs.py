"""`python -m fedtff.execution.certs`: a test CA and certificates for a demo federation.

  python -m fedtff.execution.certs --out=CERTS --sites alice bob carol --trainers trainer

writes ECDSA P-256 keys and certificates signed by a fresh CA, in the layout
the site server (`fedtff.execution.site`) and the trainer
(`fedtff.execution.tls`) read (docs/cross_silo.md, "Credentials"):

  CERTS/ca/ca.pem, ca.key                 the CA (keep ca.key offline, or delete it)
  CERTS/<site>/ca.pem, site.pem, site.key, allow/<trainer>.pem
  CERTS/<trainer>/ca.pem, trainer.pem, trainer.key, sites/<site>.pem

Each certificate names its party as CN and as DNS SAN. Private keys are 0600.
Real deployments fill the same layout with files from their own CA.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from typing import Dict, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

PROGRAM = 'fedtff-certs'
_NAME = re.compile(r'^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$')
_VALIDITY = datetime.timedelta(days=365)


def check_name(name: str) -> str:
  """Returns `name` if it is a valid party name (a DNS label), else raises ValueError."""
  if not _NAME.match(name or '') or name == 'ca':
    raise ValueError(f'a site or trainer name must be a lowercase DNS label (a-z, 0-9, -) '
                     f"other than 'ca', got {name!r}.")
  return name


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
  return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
  return cert.public_bytes(serialization.Encoding.PEM)


def _certificate(subject: str, key, issuer: Optional[x509.Certificate], issuer_key,
                 *, server: bool = False) -> x509.Certificate:
  """A certificate for `subject` (CN and DNS SAN), signed by `issuer_key` (self if no issuer)."""
  now = datetime.datetime.now(datetime.timezone.utc)
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
  builder = (x509.CertificateBuilder()
             .subject_name(name)
             .issuer_name(issuer.subject if issuer else name)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + _VALIDITY)
             .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                            critical=True))
  if issuer is None:
    builder = builder.add_extension(
        x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
  else:
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (builder
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]),
                              critical=False)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
  return builder.sign(issuer_key, hashes.SHA256())


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
  os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
  with os.fdopen(fd, 'wb') as f:
    f.write(data)


def _issue(name: str, ca: Tuple[x509.Certificate, object], *, server: bool) -> Tuple[bytes, bytes]:
  key = ec.generate_private_key(ec.SECP256R1())
  return _cert_pem(_certificate(name, key, ca[0], ca[1], server=server)), _key_pem(key)


def create_federation(out: str, sites: Sequence[str], trainers: Sequence[str]) -> Dict[str, str]:
  """Writes a fresh CA and the credentials of `sites` and `trainers` under `out`.

  Args:
    out: A directory that must not exist yet.
    sites: Site names (DNS labels).
    trainers: Trainer names (DNS labels); every site allow-lists all of them.

  Returns:
    The directory of each party, by name.

  Raises:
    ValueError: If `out` exists, or a name is invalid or repeated.
  """
  names = [check_name(n) for n in list(sites) + list(trainers)]
  if not sites or not trainers:
    raise ValueError('at least one site and one trainer are needed.')
  if len(set(names)) != len(names):
    raise ValueError(f'each name must be given once, got {" ".join(names)}.')
  if os.path.lexists(out):
    raise ValueError(f'{out} already exists; choose a new --out directory.')
  ca_key = ec.generate_private_key(ec.SECP256R1())
  # A name of its own: TLS peers then tell this CA from another federation's.
  ca_cert = _certificate(f'fedtff test ca {os.urandom(4).hex()}', ca_key, None, ca_key)
  ca_pem = _cert_pem(ca_cert)
  os.makedirs(out, mode=0o755)
  _write(os.path.join(out, 'ca', 'ca.pem'), ca_pem)
  _write(os.path.join(out, 'ca', 'ca.key'), _key_pem(ca_key), 0o600)
  issued = {(n, role): _issue(n, (ca_cert, ca_key), server=role == 'site')
            for role, group in (('site', sites), ('trainer', trainers)) for n in group}
  for (name, role), (cert_pem, key_pem) in issued.items():
    peers, peer_dir = (trainers, 'allow') if role == 'site' else (sites, 'sites')
    directory = os.path.join(out, name)
    _write(os.path.join(directory, 'ca.pem'), ca_pem)
    _write(os.path.join(directory, f'{role}.pem'), cert_pem)
    _write(os.path.join(directory, f'{role}.key'), key_pem, 0o600)
    peer_role = 'trainer' if role == 'site' else 'site'
    for peer in peers:
      _write(os.path.join(directory, peer_dir, f'{peer}.pem'), issued[(peer, peer_role)][0])
  return {name: os.path.join(out, name) for name in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; prints one line per party, or one error line."""
  parser = argparse.ArgumentParser(
      prog=PROGRAM, description='Creates a test CA and mTLS credentials for sites and trainers.')
  parser.add_argument('--out', required=True, help='New directory to write (must not exist).')
  parser.add_argument('--sites', nargs='+', required=True, help='Site names.')
  parser.add_argument('--trainers', nargs='+', default=['trainer'], help='Trainer names.')
  args = parser.parse_args(argv)
  try:
    parties = create_federation(args.out, args.sites, args.trainers)
  except (ValueError, OSError) as e:
    print(f'{PROGRAM}: error: {e}', file=sys.stderr)
    return 1
  for name, directory in parties.items():
    print(f'{name}: {directory}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
