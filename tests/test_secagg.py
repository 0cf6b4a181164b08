"""Secure aggregation across sites: key agreement, masks, and masked TFF rounds on 3 workers.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017). Three sites (alice, bob, carol) each have a run directory
and a `fedtff.execution.runtime.WorkerProcess` working in it; their
`fedtff.execution.secagg.SiteMasker`s write the masks there, and the rounds run
through `fedtff.execution.distributed.remote_runtime`.
"""

import datetime
import json
import os
import threading
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid

import fedtff
from fedtff.algorithms import masked_sum
from fedtff.algorithms import tff_model
from fedtff.execution import distributed
from fedtff.execution import runtime
from fedtff.execution import secagg
from tests import conftest

SITES = ('alice', 'bob', 'carol')
MODULUS = 1 << 62
NUM_FEATURES, NUM_CLASSES, LEARNING_RATE = 32, 10, 0.1
CLIENT_SIZES = (10, 20, 15, 5, 25, 15)  # Six clients: two per worker.
TIMEOUT_S = 3.0


# Certificates as fedtff.execution.certs writes them: ECDSA P-256, name as CN and DNS SAN.

def _name(common_name):
  return x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])


def _certificate(subject, key, issuer, issuer_key, *, dns=None, ca=False):
  now = datetime.datetime.now(datetime.timezone.utc)
  builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
  if dns:
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                    critical=False)
  return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert):
  return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
  """A test CA issuing site credentials into directories."""

  def __init__(self, name):
    self.name, self.key = name, ec.generate_private_key(ec.SECP256R1())
    self.cert = _certificate(name, self.key, name, self.key, ca=True)

  def issue(self, directory, name, *, cert_name=None):
    """Writes ca.pem, site.pem and site.key; returns SiteMasker's path arguments."""
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert_name = cert_name or name
    cert = _certificate(cert_name, key, self.name, self.key, dns=cert_name)
    paths = {f: os.path.join(directory, f) for f in ('site.key', 'site.pem', 'ca.pem')}
    with open(paths['site.key'], 'wb') as f:
      f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    with open(paths['site.pem'], 'wb') as f:
      f.write(_pem(cert))
    with open(paths['ca.pem'], 'wb') as f:
      f.write(_pem(self.cert))
    return paths['site.key'], paths['site.pem'], paths['ca.pem']


def json_control(masker):
  """A site's control channel as the site server runs it: JSON in, JSON out."""
  handlers = masker.control_handlers()
  return lambda request: json.loads(json.dumps(handlers[request['op']](json.loads(
      json.dumps(request)))))


@pytest.fixture(scope='module')
def ca():
  return Authority('fedtff-test-ca')


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('sites')
  return {site: str(root / site / 'run') for site in SITES}


@pytest.fixture(scope='module')
def maskers(ca, run_dirs, tmp_path_factory):
  creds = tmp_path_factory.mktemp('creds')
  return {site: secagg.SiteMasker(site, run_dirs[site], *ca.issue(str(creds / site), site))
          for site in SITES}


@pytest.fixture(scope='module')
def rounds(maskers):
  secure = secagg.SecureRounds({site: json_control(m) for site, m in maskers.items()})
  secure.setup()
  return secure


def read_mask(run_dir, stream):
  with open(secagg.mask_path(run_dir, stream), 'rb') as f:
    return np.frombuffer(f.read(), '<i8')


# Key agreement and masks.

def test_two_sites_derive_the_same_pairwise_key(rounds, maskers):
  keys = {site: m._pair_keys for site, m in maskers.items()}  # pylint: disable=protected-access
  assert keys['alice']['bob'] == keys['bob']['alice']
  assert keys['bob']['carol'] == keys['carol']['bob']
  assert len({keys['alice']['bob'], keys['alice']['carol'], keys['bob']['carol']}) == 3


def _tampered_signature(announcement, ca, tmp_path):
  del ca, tmp_path
  signature = bytearray(secagg._unb64(announcement['signature'], ''))  # pylint: disable=protected-access
  signature[-1] ^= 1
  return dict(announcement, signature=secagg._b64(bytes(signature)))  # pylint: disable=protected-access


def _swapped_key(announcement, ca, tmp_path):
  del ca, tmp_path
  return dict(announcement, public_key=secagg._b64(bytes(32)))  # pylint: disable=protected-access


def _wrong_name_cert(announcement, ca, tmp_path):
  """Mallory, holding a valid certificate for 'mallory', announces herself as bob."""
  mallory = secagg.SiteMasker('mallory', str(tmp_path), *ca.issue(str(tmp_path / 'm'), 'mallory'))
  return dict(mallory.announcement(), site=announcement['site'])


def _other_ca_cert(announcement, ca, tmp_path):
  del ca
  rogue = Authority('rogue-ca')
  impostor = secagg.SiteMasker('bob', str(tmp_path), *rogue.issue(str(tmp_path / 'b'), 'bob'))
  return impostor.announcement()


@pytest.mark.parametrize('tamper, reason', [
    (_tampered_signature, 'its signature does not verify'),
    (_swapped_key, 'its signature does not verify'),
    (_wrong_name_cert, "names ['mallory'], not 'bob'"),
    (_other_ca_cert, 'not issued by the federation CA'),
], ids=['tampered-signature', 'swapped-key', 'wrong-name-cert', 'other-ca-cert'])
def test_a_forged_announcement_is_refused_in_one_line(maskers, ca, tmp_path, tamper, reason):
  announcements = [maskers[site].announcement() for site in SITES]
  announcements[1] = tamper(announcements[1], ca, tmp_path)
  answer = json_control(maskers['alice'])({'op': 'secagg_setup',
                                           'announcements': announcements})
  assert answer['error'].startswith("secagg: announcement of site 'bob' refused: ")
  assert reason in answer['error'] and '\n' not in answer['error']


def test_the_masks_of_three_sites_sum_to_zero_mod_2_62(rounds, run_dirs):
  rounds.prepare_round({'value': 5000, 'weight': 1})
  for stream, length in (('value', 5000), ('weight', 1)):
    masks = [read_mask(run_dirs[site], stream).astype(np.uint64) for site in SITES]
    assert all(m.shape == (length,) and m.max() < MODULUS for m in masks)
    assert np.all(sum(masks) % np.uint64(MODULUS) == 0)
  value = read_mask(run_dirs['alice'], 'value') / MODULUS
  assert 0.45 < value.mean() < 0.55 and 0.95 < np.std(value) * np.sqrt(12) < 1.05  # Uniform.


def test_a_reused_nonce_and_bad_site_lists_are_refused(rounds, maskers):
  nonce = rounds.prepare_round({'weight': 1})
  alice = json_control(maskers['alice'])
  request = {'op': 'secagg_round', 'nonce': nonce, 'streams': {'weight': 1}, 'sites': list(SITES)}
  assert alice(request) == {
      'error': f"secagg: site 'alice' refuses nonce {nonce}: it was used before."}
  fresh = dict(request, nonce='ab' * 16)
  assert 'must list site' in alice(dict(fresh, sites=['bob', 'carol']))['error']
  assert 'has no key for dave' in alice(dict(fresh, sites=list(SITES) + ['dave']))['error']
  with pytest.raises(secagg.SecAggError, match="Site 'alice' refused secagg_round: .*nonce"):
    secagg.SecureRounds({'alice': lambda r: alice(dict(r, nonce=nonce))}).prepare_round(
        {'weight': 1})
