"""Secure aggregation across sites: key agreement, masks, and masked TFF rounds on 3 workers.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017). Three sites (alice, bob, carol) each have a run directory
and a `fedtff.execution.runtime.WorkerProcess` working in it; their
`fedtff.execution.secagg.SiteMasker`s write the masks there, and the rounds run
through `fedtff.execution.distributed.remote_runtime`.
"""

import base64
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
  signature = bytearray(base64.b64decode(announcement['signature']))
  signature[-1] ^= 1
  return dict(announcement, signature=base64.b64encode(bytes(signature)).decode())


def _swapped_key(announcement, ca, tmp_path):
  del ca, tmp_path
  return dict(announcement, public_key=base64.b64encode(bytes(32)).decode())


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
  assert 'without other sites' in alice(dict(fresh, sites=['alice']))['error']
  assert 'has no key for dave' in alice(dict(fresh, sites=list(SITES) + ['dave']))['error']
  replay = {'alice': lambda r: alice(dict(r, nonce=nonce)), 'bob': json_control(maskers['bob'])}
  with pytest.raises(secagg.SecAggError, match="Site 'alice' refused secagg_round: .*nonce"):
    secagg.SecureRounds(replay).prepare_round({'weight': 1})


def test_the_trainer_relays_only_announcements_in_each_sites_own_name(maskers):
  controls = {site: json_control(m) for site, m in maskers.items()}
  announcements = {site: m.announcement() for site, m in maskers.items()}
  assert secagg.SecureRounds(controls).setup(announcements) == announcements  # As in manifests.
  announcements['carol'] = announcements['bob']
  with pytest.raises(secagg.SecAggError, match="Site 'carol' has no announcement in its own name"):
    secagg.SecureRounds(controls).setup(announcements)
  with pytest.raises(ValueError, match='at least two sites'):
    secagg.SecureRounds({'alice': controls['alice']})


# Masked TFF rounds on three workers, one per site.

@pytest.fixture(scope='module')
def workers(run_dirs):
  for run_dir in run_dirs.values():
    os.makedirs(run_dir, exist_ok=True)
  started = [runtime.WorkerProcess(cwd=run_dirs[site]).start() for site in SITES]
  started.append(runtime.WorkerProcess(cwd=run_dirs['carol']).start())  # carol's stand-in, killed.
  yield started
  for worker in started:
    worker.kill()
  assert not any(worker.is_running() for worker in started)


@pytest.fixture(scope='module')
def addresses(workers):
  return [worker.address for worker in workers[:3]]


def test_a_masked_sum_is_the_sum_and_an_out_of_range_value_fails_the_round(rounds, addresses):
  factory = masked_sum.MaskedSumFactory('value')
  process = factory.create(tff.TensorType(np.float32, [4]))
  values = np.random.default_rng(0).normal(scale=1000.0, size=(6, 4)).astype(np.float32)
  length = factory.stream_length(tff.TensorType(np.float32, [4]))
  assert length == 5  # The values, and the check lane.
  rounds.prepare_round({'value': length})
  state = process.initialize()
  with distributed.remote_runtime(addresses):
    summed = process.next(state, list(values)).result
    exact = values.astype(np.float64).sum(axis=0)  # Off by float32 rounding, 6 · 2^-25 at most.
    float32_ulp = np.abs(np.spacing(exact.astype(np.float32)))
    assert np.all(np.abs(summed - exact) <= float32_ulp + 6 * 2.0**-25)
    values[4, 1] = 2.0 ** 21
    rounds.prepare_round({'value': length})
    with pytest.raises(distributed.WorkerError, match='stream=value: a client value is NaN, '
                       'infinite or not below 2.09715e[+]06 in magnitude'):
      process.next(state, list(values))


# FedAvg with the masked weighted mean (McMahan et al. 2017) on the three sites.

def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def task():
  """(model_fn, client datasets, seeded initial weights); clients of unequal size."""
  features, labels = conftest.tiny_classification_arrays(
      num_examples=sum(CLIENT_SIZES), num_features=NUM_FEATURES)
  bounds = np.cumsum((0,) + CLIENT_SIZES)
  datasets = [tf.data.Dataset.from_tensor_slices({'x': features[a:b], 'y': labels[a:b]}).batch(5)
              for a, b in zip(bounds[:-1], bounds[1:])]
  model_fn = tff_model.tff_model_fn(keras_model, datasets[0].element_spec)
  return model_fn, datasets, tff_model.initial_weights(keras_model, seed=1)


def fed_avg(model_fn, model_aggregator=None):
  return tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, tff.learning.optimizers.build_sgdm(LEARNING_RATE),
      tff.learning.optimizers.build_sgdm(1.0), model_aggregator=model_aggregator)


@pytest.fixture(scope='module')
def masked(task):
  """(masked FedAvg process, its initial state, {stream: mask length})."""
  model_fn, _, weights = task
  factory = masked_sum.masked_mean_factory()
  process = fed_avg(model_fn, factory)
  value_type = tff.learning.models.weights_type_from_model(model_fn).trainable
  state = process.set_model_weights(process.initialize(), weights)
  return process, state, masked_sum.mean_stream_lengths(factory, value_type)


def numpy_client_updates(weights, datasets):
  """Each client's (example count, weighted delta n·(w_i − w)) of one local epoch of
  SGD on the batch-mean cross-entropy of softmax regression, in float64."""
  updates = []
  for dataset in datasets:
    kernel, bias = (np.asarray(w, np.float64).copy() for w in weights)
    count = 0
    for batch in dataset.as_numpy_iterator():
      x, y = batch['x'].astype(np.float64), batch['y']
      probs = np.exp(x @ kernel + bias - (x @ kernel + bias).max(axis=1, keepdims=True))
      probs /= probs.sum(axis=1, keepdims=True)
      probs[np.arange(len(y)), y] -= 1.0
      kernel -= LEARNING_RATE * x.T @ probs / len(y)
      bias -= LEARNING_RATE * probs.sum(axis=0) / len(y)
      count += len(y)
    delta = np.concatenate([(kernel - weights[0]).ravel(), (bias - weights[1]).ravel()])
    updates.append((count, count * delta))
  return updates


def test_a_masked_fed_avg_round_equals_the_plain_round_and_numpy(rounds, addresses, task, masked):
  model_fn, datasets, weights = task
  process, state, lengths = masked
  assert lengths == {'value': NUM_FEATURES * NUM_CLASSES + NUM_CLASSES + 1, 'weight': 2}
  rounds.prepare_round(lengths)
  with distributed.remote_runtime(addresses):
    ours = process.get_model_weights(process.next(state, datasets).state).trainable
  plain = fed_avg(model_fn)
  expected = plain.get_model_weights(plain.next(
      plain.set_model_weights(plain.initialize(), weights), datasets).state).trainable
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  updates = numpy_client_updates(weights.trainable, datasets)
  mean = sum(u for _, u in updates) / sum(n for n, _ in updates)
  numpy_weights = np.concatenate([w.ravel() for w in weights.trainable]) + mean
  np.testing.assert_allclose(np.concatenate([w.ravel() for w in ours]), numpy_weights, atol=1e-5)


def _int64_vectors(value, length):
  leaves = tff.structure.flatten(value) if isinstance(value, tff.structure.Struct) else (
      tf.nest.flatten(value))
  return [np.asarray(v) for v in leaves
          if np.asarray(v).dtype == np.int64 and np.asarray(v).shape == (length,)]


def _lift(values):
  """Residues mod 2^62 as signed fixed point (scale 2^24) in float64."""
  values = np.asarray(values, np.int64) & (MODULUS - 1)
  return np.where(values >= MODULUS // 2, values - MODULUS, values) / 2.0**24


def test_what_one_site_returns_is_masked(rounds, addresses, run_dirs, task, masked):
  _, datasets, weights = task
  process, state, lengths = masked
  form = distributed.compile_to_mergeable_form(process.next)
  [stub] = distributed.connect(addresses[:1])
  context = distributed.WorkerContext(stub, distributed.SharedCompiler())
  partials, masks = [], []
  try:
    for _ in range(2):  # A new round's mask is read anew, never cached by the worker.
      rounds.prepare_round(lengths)
      result = context.invoke_sync(form.up_to_merge, tff.structure.Struct.unnamed(
          state, datasets[:2]))
      [partial] = _int64_vectors(result, lengths['value'] - 1)
      partials.append(partial)
      masks.append(read_mask(run_dirs['alice'], 'value')[:-1])  # Without the check lane.
  finally:
    stub.close()
    context.close()
  # TFF's FedAvg clients send w − w_i (the server optimizer steps against it).
  true_sum = -sum(u for _, u in numpy_client_updates(weights.trainable, datasets[:2]))
  for partial, mask in zip(partials, masks):
    unmasked = (partial.astype(np.uint64) - mask.astype(np.uint64)) & np.uint64(MODULUS - 1)
    np.testing.assert_allclose(_lift(unmasked), true_sum, atol=1e-5)  # Only the mask hides it.
    assert np.mean(partial != unmasked.astype(np.int64)) > 0.99
    assert 0.4 < np.mean(partial / MODULUS) < 0.6  # Uniform in [0, 2^62), not near 0.
  assert np.all(partials[0] != partials[1])


def test_a_site_without_its_mask_fails_the_round(rounds, addresses, run_dirs, task, masked):
  _, datasets, _ = task
  process, state, lengths = masked
  rounds.prepare_round(lengths)
  os.remove(secagg.mask_path(run_dirs['bob'], 'value'))
  with distributed.remote_runtime(addresses):
    with pytest.raises(distributed.WorkerError,
                       match=f'{addresses[1]} failed a call: .*stream=value: this worker has no '
                       'mask secagg/value.bin in its working directory'):
      process.next(state, datasets)


def test_a_site_left_out_of_the_round_fails_it(rounds, addresses, task, masked):
  _, datasets, _ = task
  process, state, lengths = masked
  rounds.prepare_round(lengths)
  with distributed.remote_runtime(addresses):  # Two clients: the third worker gets none.
    with pytest.raises(distributed.WorkerError,
                       match='stream=(value|weight): the masks do not cancel'):
      process.next(state, datasets[:2])


def _kill_once_busy(worker, killed, cpu_s=0.3, timeout_s=60):
  """Kills `worker` once it has used `cpu_s` more CPU: mid-round."""
  process = psutil.Process(worker.pid)
  start, deadline = sum(process.cpu_times()[:2]), time.monotonic() + timeout_s
  while sum(process.cpu_times()[:2]) < start + cpu_s and time.monotonic() < deadline:
    time.sleep(0.01)
  worker.kill()
  killed.set()


def test_a_site_that_drops_out_mid_round_fails_it(rounds, workers, addresses, task, masked):
  _, datasets, _ = task
  process, state, lengths = masked
  victim = workers[3]
  # The victim's two clients train long enough to be killed while they do.
  slow = datasets[:4] + [dataset.repeat(400) for dataset in datasets[4:]]
  rounds.prepare_round(lengths)
  killed = threading.Event()
  killer = threading.Thread(target=_kill_once_busy, args=(victim, killed))
  with distributed.remote_runtime(addresses[:2] + [victim.address], connect_timeout_s=TIMEOUT_S):
    killer.start()
    with pytest.raises(distributed.WorkerUnavailableError,
                       match=f'TFF worker {victim.address} is unavailable'):
      process.next(state, slow)
  killer.join()
  assert killed.is_set() and not victim.is_running()
