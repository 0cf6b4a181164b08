"""fedtff.execution.site and .tls: real processes, real TLS, real network namespaces.

Two sites run as `python -m fedtff.execution.site` subprocesses (started at
once, their TensorFlow imports overlapping): alice serves every test, bob is
killed mid-call. Credentials come from `fedtff.execution.certs`; `mallory`
holds a certificate from the same CA that alice does not allow-list. Needs
root (unshare, setns, ip netns), as CI has.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from cryptography import x509

import fedtff
from fedtff.execution import certs
from fedtff.execution import distributed
from fedtff.execution import secagg
from fedtff.execution import site_data
from fedtff.execution import sites
from fedtff.execution import site
from fedtff.execution import tls
from tests import conftest
from tests import test_distributed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='needs root for network namespaces')
TIMEOUT_S = 3.0


class Site:
  """A `python -m fedtff.execution.site` subprocess on a free port."""

  def __init__(self, name, creds_dir, data_dir, log_path, port=None):
    self.name, self.port = name, port or portpicker.pick_unused_port()
    self.data_dir = data_dir
    self.worker_port = portpicker.pick_unused_port()  # Free here, so a refusal here means a lot.
    self.address = f'127.0.0.1:{self.port}'
    self.log_path = log_path
    with open(log_path, 'w') as log:
      self.proc = subprocess.Popen(
          [sys.executable, '-m', 'fedtff.execution.site', f'--site={name}', f'--data={data_dir}',
           f'--port={self.port}', f'--worker_port={self.worker_port}',
           f'--credentials={creds_dir}'],
          cwd=conftest.REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
          stderr=log, env=conftest.script_env(TF_CPP_MIN_LOG_LEVEL='3'))
    self.wrapper, self.binary, self.run_dir = psutil.Process(self.proc.pid), None, None

  def log(self):
    with open(self.log_path) as f:
      return f.read()

  def wait_serving(self, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while 'listening on' not in self.log():
      assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
      time.sleep(0.1)
    [self.binary] = [p for p in self.wrapper.children() if p.name() == 'worker_binary']
    self.run_dir = self.binary.cwd()
    return self

  def new_lines(self, mark, settle_s=0.5):
    """The log lines written after `mark` (a length of the log), once they stop coming."""
    deadline = time.monotonic() + 5
    while len(self.log()) == mark and time.monotonic() < deadline:
      time.sleep(0.05)
    time.sleep(settle_s)
    return self.log()[mark:].splitlines()


@pytest.fixture(scope='module')
def federation(tmp_path_factory):
  root = tmp_path_factory.mktemp('xsilo')
  creds = certs.create_federation(str(root / 'certs'), ['alice', 'bob'], ['trainer', 'mallory'])
  os.remove(os.path.join(creds['alice'], 'allow', 'mallory.pem'))
  features, labels = conftest.tiny_classification_arrays(num_examples=40)
  clients = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(40), 4))
  site_data.write_site(str(root / 'data'), 'alice', clients, clients, clients.client_ids,
                       num_classes=3)
  servers = {n: Site(n, creds[n], str(root / 'data'), str(root / f'{n}.log'))
           for n in ('alice', 'bob')}
  try:
    yield creds, servers
  finally:
    for s in servers.values():
      if s.proc.poll() is None:
        s.proc.terminate()
    test_distributed.assert_gone([p for s in servers.values() for p in (s.wrapper, s.binary) if p])
  alice = servers['alice']
  if alice.run_dir:  # SIGTERM stopped the binary and removed the run directory.
    assert alice.proc.wait(timeout=15) == 0
    assert not os.path.exists(alice.run_dir)
    assert alice.log().rstrip().endswith('fedtff-site alice: stopped')


@pytest.fixture(scope='module')
def alice(federation):
  return federation[1]['alice'].wait_serving()


@pytest.fixture(scope='module')
def trainer(federation):
  return tls.TrainerCredentials.load(federation[0]['trainer'])


def tls_runtime(credentials, sites, timeout_s=30.0):
  return tls.secure_runtime(credentials, {s.name: s.address for s in sites},
                            connect_timeout_s=timeout_s)


def test_a_round_through_the_tls_front_end_equals_the_local_runtime(alice, trainer):
  composed, client_ids = test_distributed.composed_process()
  select = lambda: fedtff.sample_clients(client_ids, 7, round_num=1, seed=3)
  round_fn = lambda: composed.next(test_distributed.initial_state(composed), select())
  with fedtff.local_runtime():
    local = round_fn()
  before = conftest.cpu_seconds(alice.binary)
  with tls_runtime(trainer, [alice]):
    remote = round_fn()
  assert conftest.cpu_seconds(alice.binary) > before  # The private binary did the work.
  assert remote.metrics['client_work']['train']['loss'] > 0
  for got, want in zip(tf.nest.flatten(remote), tf.nest.flatten(local), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_control_channel_answers_hello_secagg_and_names_unknown_ops(alice, trainer):
  assert tls.control_request(trainer, 'alice', alice.address, {'op': 'hello'}) == {
      'site': 'alice', 'format': 'fedtff-control/1'}
  with pytest.raises(tls.SiteConnectionError) as raised:
    tls.control_request(trainer, 'alice', alice.address, {'op': 'nope'})
  assert str(raised.value).startswith(f"site alice at {alice.address}: unknown op 'nope'; ")
  announcement = tls.control_request(trainer, 'alice', alice.address, {'op': 'secagg_announce'})
  ca = x509.load_pem_x509_certificate(trainer.ca_pem)
  assert len(secagg.verify_announcement(announcement, ca)) == 32  # alice's signed X25519 key.


def test_the_tls_connector_reads_the_manifest_with_the_secagg_announcement(alice, trainer):
  manifest = tls.TlsConnector(trainer).manifest('alice', alice.address, timeout_s=10)
  assert manifest['train_client_ids'] == ['0', '1', '2', '3']
  assert manifest['secagg']['site'] == 'alice'


def test_site_runtime_routes_clients_to_a_site_over_tls(alice, trainer):
  @tff.tensorflow.computation(np.str_)
  def busy_length(s):  # A loop long enough to show in the binary's CPU time (10 ms ticks).
    spins = tf.while_loop(lambda i: i < 30_000, lambda i: i + 1, [tf.constant(0)])[0]
    return tf.strings.length(s) + spins - 30_000

  @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
  def total_length(client_ids):
    return tff.federated_sum(tff.federated_map(busy_length, client_ids))

  before = conftest.cpu_seconds(alice.binary)
  with sites.site_runtime([f'alice={alice.address}'], connect=tls.TlsConnector(trainer)):
    assert total_length(['0', '1', '3']) == 3
  assert conftest.cpu_seconds(alice.binary) - before > 0.05  # The binary ran the three loops.


def _one_site_line(alice, mark, reason_pattern):
  [line] = alice.new_lines(mark)
  pattern = r' fedtff-site alice: refused 127\.0\.0\.1:\d+: ' + reason_pattern + '$'
  assert re.search(pattern, line), line


def test_a_trainer_not_on_the_allow_list_is_refused_with_one_line_each_side(federation, alice):
  mallory = tls.TrainerCredentials.load(federation[0]['mallory'])
  mark = len(alice.log())
  with pytest.raises(tls.SiteConnectionError) as raised:
    tls.secure_channel(mallory, 'alice', alice.address)
  assert re.fullmatch(
      rf"site alice at {alice.address}: refused: trainer certificate mallory "
      r"\(sha256:[0-9a-f]{16}\.\.\.\) is not on alice's allow-list", str(raised.value))
  _one_site_line(alice, mark, r"trainer certificate mallory \(sha256:[0-9a-f]{16}\.\.\.\) is not "
                              "on alice's allow-list")


def test_a_wrong_pin_is_refused_by_the_trainer(federation, alice, tmp_path):
  wrong = shutil.copytree(federation[0]['trainer'], tmp_path / 'trainer')
  shutil.copy(wrong / 'sites' / 'bob.pem', wrong / 'sites' / 'alice.pem')
  mark = len(alice.log())
  with pytest.raises(tls.SiteConnectionError) as raised:
    tls.secure_channel(tls.TrainerCredentials.load(str(wrong)), 'alice', alice.address)
  assert re.fullmatch(
      rf'site alice at {alice.address} presented certificate sha256:[0-9a-f]{{16}}\.\.\., not '
      rf'the pinned {wrong}/sites/alice.pem \(sha256:[0-9a-f]{{16}}\.\.\.\); refusing to connect\.',
      str(raised.value))
  _one_site_line(alice, mark, 'the connection closed without a control request')


def test_an_outsider_certificate_is_refused(alice, federation, tmp_path):
  other = certs.create_federation(str(tmp_path / 'other'), ['alice'], ['trainer'])['trainer']
  shutil.copy(os.path.join(federation[0]['trainer'], 'ca.pem'), os.path.join(other, 'ca.pem'))
  shutil.copy(os.path.join(federation[0]['trainer'], 'sites', 'alice.pem'),
              os.path.join(other, 'sites', 'alice.pem'))
  mark = len(alice.log())
  with pytest.raises(tls.SiteConnectionError) as raised:
    tls.control_request(tls.TrainerCredentials.load(other), 'alice', alice.address, {'op': 'hello'})
  assert str(raised.value) in [  # The alert, or EOF if the site closed before it was read.
      f'site alice at {alice.address} refused our certificate ({reason}).'
      for reason in ('tlsv1 alert unknown ca', 'it closed the connection')]
  _one_site_line(alice, mark, 'client certificate does not verify against ca.pem')


@pytest.mark.parametrize('client', ['plain_grpc_preface', 'tls_without_certificate'])
def test_a_connection_without_a_certificate_gets_nothing(alice, trainer, client):
  mark = len(alice.log())
  with socket.create_connection(('127.0.0.1', alice.port), timeout=5) as raw:
    if client == 'plain_grpc_preface':
      raw.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00')
      sock = raw
    else:
      context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
      context.load_verify_locations(cadata=trainer.ca_pem.decode())
      context.set_alpn_protocols(['h2'])
      sock = context.wrap_socket(raw, server_hostname='alice')
    try:
      if sock is not raw:
        sock.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
      answer = sock.recv(1024)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):  # The site closed first.
      answer = b''
  assert answer == b''
  reason = (r'not a TLS 1\.3 connection \(wrong version number\)' if client == 'plain_grpc_preface'
            else 'no client certificate')
  _one_site_line(alice, mark, reason)


@pytest.fixture
def peer_namespace():
  """A network namespace joined to this one by a veth pair: 10.233.<n>.1 here, .2 there."""
  n = os.getpid() % 200 + 20
  ns, here = f'fxtls-{os.getpid()}', f'fxtls{os.getpid()}'
  try:
    for command in (f'ip netns add {ns}', f'ip link add {here} type veth peer name eth0 netns {ns}',
                    f'ip addr add 10.233.{n}.1/30 dev {here}', f'ip link set {here} up',
                    f'ip -n {ns} addr add 10.233.{n}.2/30 dev eth0', f'ip -n {ns} link set eth0 up',
                    f'ip -n {ns} link set lo up'):
      subprocess.run(command.split(), check=True, capture_output=True)
    yield f'/var/run/netns/{ns}', f'10.233.{n}.1'
  finally:
    subprocess.run(['ip', 'netns', 'del', ns], capture_output=True)
    subprocess.run(['ip', 'link', 'del', here], capture_output=True)


def _connect(host, port):
  with socket.create_connection((host, port), timeout=5):
    return 'connected'


def test_the_worker_port_is_unreachable_from_another_namespace(alice, trainer, peer_namespace):
  netns, site_host = peer_namespace
  with pytest.raises(ConnectionRefusedError):
    site.run_in_netns(netns, lambda: _connect(site_host, alice.worker_port))
  with pytest.raises(ConnectionRefusedError):  # Nor from the site's own namespace.
    _connect('127.0.0.1', alice.worker_port)
  answer = site.run_in_netns(netns, lambda: tls.control_request(
      trainer, 'alice', f'{site_host}:{alice.port}', {'op': 'hello'}))
  assert answer['site'] == 'alice'  # The TLS port is reachable from there.
  # The binary listens in a namespace that has only loopback.
  in_binary_ns = ['nsenter', f'--net=/proc/{alice.binary.pid}/ns/net']
  links = subprocess.run(in_binary_ns + ['ip', '-br', 'link'], capture_output=True, text=True,
                         check=True).stdout.splitlines()
  assert len(links) == 1 and links[0].split()[:2] == ['lo', 'UNKNOWN'], links
  listening = subprocess.run(in_binary_ns + ['ss', '-Hltn'], capture_output=True, text=True,
                             check=True).stdout
  assert f':{alice.worker_port} ' in listening


def test_killing_the_site_mid_call_raises_worker_unavailable(federation, trainer):
  bob = federation[1]['bob'].wait_serving()

  @tff.tensorflow.computation(np.int64)
  def spin(n):
    return tf.while_loop(lambda i, x: i < n, lambda i, x: (i + 1, x * 0.5 + 1.0),
                         (tf.constant(0, tf.int64), tf.constant(0.0)))[1]

  def kill_when_busy():  # Once the binary has computed for a second, i.e. mid-call.
    deadline = time.monotonic() + 30
    while bob.binary.cpu_times().user < 1.0 and time.monotonic() < deadline:
      time.sleep(0.1)
    bob.proc.kill()

  with tls_runtime(trainer, [bob], timeout_s=TIMEOUT_S):
    threading.Thread(target=kill_when_busy).start()
    start = time.monotonic()
    with pytest.raises(distributed.WorkerUnavailableError) as raised:
      spin(10**10)
  assert time.monotonic() - start < 30 + 4 * TIMEOUT_S
  assert str(raised.value).startswith(
      f'TFF worker {bob.address} is unavailable: it has not answered for {TIMEOUT_S:g} s')
  test_distributed.assert_gone([bob.binary])
  shutil.rmtree(bob.run_dir, ignore_errors=True)  # SIGKILL left it; the kernel took the rest.



def test_the_test_ca_writes_the_layout_and_refuses_bad_input(tmp_path):
  out = str(tmp_path / 'certs')
  parties = certs.create_federation(out, ['alice'], ['trainer'])
  files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
  assert files == ['alice/allow/trainer.pem', 'alice/ca.pem', 'alice/site.key', 'alice/site.pem',
                   'ca/ca.key', 'ca/ca.pem', 'trainer/ca.pem', 'trainer/sites/alice.pem',
                   'trainer/trainer.key', 'trainer/trainer.pem']
  assert all(os.stat(os.path.join(out, f)).st_mode & 0o777 == 0o600
             for f in files if f.endswith('.key'))
  creds = tls.TrainerCredentials.load(parties['trainer'])
  with open(os.path.join(parties['alice'], 'site.pem'), 'rb') as f:
    assert creds.site_pins == {'alice': tls.pem_sha256(f.read())}
  with pytest.raises(ValueError, match=f'^{out} already exists; choose a new --out directory.$'):
    certs.create_federation(out, ['alice'], ['trainer'])
  with pytest.raises(ValueError, match=r"must be a lowercase DNS label .* got 'Alice!'\.$"):
    certs.create_federation(str(tmp_path / 'other'), ['Alice!'], ['trainer'])
  os.remove(os.path.join(parties['trainer'], 'trainer.key'))
  with pytest.raises(ValueError, match=r'^cannot read .*/trainer/trainer.key: No such file'):
    tls.TrainerCredentials.load(parties['trainer'])
