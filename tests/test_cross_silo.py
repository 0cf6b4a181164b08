"""A three-site federation (alice, bob, carol): mutual TLS, secure aggregation, a canary.

The sites run as `python -m fedtff.execution.site` subprocesses (the TLS front
end here, each site's TFF worker in a network namespace of its own), with
credentials from `fedtff.execution.certs` and data exported from one npz
dataset by `fedtff.execution.site_data`. One of alice's training examples is a
canary: 64 random pixels. The same config then runs three ways:

* locally on the TFF engine, from the npz files (the reference);
* over the sites through `fedtff.run_experiment` with `runtime.sites`,
  `runtime.credentials` and `runtime.secure_aggregation`, while every link is
  captured: this namespace's loopback (the trainer's TLS traffic) and each
  site's private loopback (the same traffic decrypted, between the site's TLS
  front end and its worker);
* over the sites again, with carol killed during round 2, then resumed with
  carol back.

Needs root (network namespaces, packet capture), as CI has.
"""

import contextlib
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.execution import capture
from fedtff.execution import certs
from fedtff.execution import distributed
from fedtff.execution import site_data
from fedtff.execution import tls
from fedtff.runner import experiment
from tests import test_cross_silo_tls
from tests import test_distributed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='needs root for network namespaces')

SITES = ('alice', 'bob', 'carol')
NUM_CLIENTS, EXAMPLES = 15, 40
TIMING = {'round_time_s', 'examples_per_s'}
CANARY = np.random.default_rng(20261203).uniform(0.0, 1.0, 64).astype(np.float32)
NEEDLE = CANARY.tobytes()[:64]  # 16 of its pixels, as float32 bytes: as a tensor carries them.


def config_for(npz_dir, sites=(), credentials=''):
  config = site_data.load_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                              'quickstart.py'))
  config.data.dataset = 'npz_dir'
  config.data.path = npz_dir
  config.data.partition = 'natural_id'
  config.data.num_clients = NUM_CLIENTS
  config.data.num_test_clients = 3
  config.clients_per_round = NUM_CLIENTS - 3  # Every training client, the canary's included.
  config.total_rounds = 3
  config.rounds_per_eval = 3
  config.rounds_per_checkpoint = 1
  config.output.tensorboard = False
  config.engine = 'tff'
  config.runtime.sites = tuple(sites)
  config.runtime.credentials = credentials
  config.runtime.secure_aggregation = bool(sites)
  return config


def write_clients(npz_dir, canary_client=None):
  x, y = fedtff.data.load_digits()
  for k in range(NUM_CLIENTS):
    features = x[k * EXAMPLES:(k + 1) * EXAMPLES].copy()
    if f'c{k:02d}' == canary_client:
      features[0] = CANARY
    np.savez(os.path.join(npz_dir, f'c{k:02d}.npz'), x=features,
             y=y[k * EXAMPLES:(k + 1) * EXAMPLES])


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """(config of the local run, {site: Site}, credentials dirs, the canary's client)."""
  root = tmp_path_factory.mktemp('federation')
  npz_dir = str(root / 'npz')
  os.mkdir(npz_dir)
  write_clients(npz_dir)
  train, _, _ = site_data.raw_client_data(config_for(npz_dir))
  blocks = site_data.site_blocks(
      [f'c{k:02d}' for k in range(NUM_CLIENTS)], SITES)
  canary_client = min(set(blocks['alice']) & set(train.client_ids))
  write_clients(npz_dir, canary_client)  # The split depends on the ids only.
  site_data.export_sites(config_for(npz_dir), str(root / 'data'), SITES)
  creds = certs.create_federation(str(root / 'certs'), list(SITES), ['trainer'])
  sites = {name: test_cross_silo_tls.Site(name, creds[name], str(root / 'data' / name),
                                          str(root / f'{name}.log')) for name in SITES}
  try:
    for site in sites.values():
      site.wait_serving()
    yield config_for(npz_dir), sites, creds, canary_client
  finally:
    for site in sites.values():
      if site.proc.poll() is None:
        site.proc.terminate()
    test_distributed.assert_gone([p for s in sites.values() for p in (s.wrapper, s.binary) if p])


def site_config(world):
  local, sites, creds, _ = world
  return config_for(local.data.path, [f'{n}={s.address}' for n, s in sites.items()],
                    creds['trainer'])


def run(config, workdir, callbacks=()):
  rows = []
  experiment.run_experiment(config, workdir, progress_fn=rows.append, callbacks=list(callbacks))
  return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_rows_equal(rows, expected):
  assert [r['round'] for r in rows] == [r['round'] for r in expected]
  for row, want in zip(rows, expected):
    assert row.keys() == want.keys()
    assert row == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.fixture(scope='module')
def local_rows(world, tmp_path_factory):
  return run(world[0], str(tmp_path_factory.mktemp('local')))


def captures(sites):
  """A capture of this namespace's loopback, and one of each site's private loopback."""
  return ([capture.TrafficCapture('lo')]
          + [capture.TrafficCapture('lo', netns=f'/proc/{s.binary.pid}/ns/net')
             for s in sites.values()])


@pytest.fixture(scope='module')
def federated(world, tmp_path_factory):
  """(rows, the captures) of the run over the sites."""
  seen = captures(world[1])
  with contextlib.ExitStack() as stack:
    for c in seen:
      stack.enter_context(c)
    rows = run(site_config(world), str(tmp_path_factory.mktemp('sites')))
  return rows, seen


def test_the_federation_rows_equal_the_local_rows(local_rows, federated):
  rows, _ = federated
  assert len(rows) == 3 and 'eval/accuracy' in rows[-1]
  assert_rows_equal(rows, local_rows)


def test_the_canary_crosses_no_link(federated):
  _, seen = federated
  for c in seen:
    assert c.gaps() == 0, f'{c.netns or "trainer"}: the capture missed bytes'
    assert c.total_bytes() > 100_000  # Every round's model and partial sums went through.
    assert not c.contains(NEEDLE)


def test_the_captures_would_see_the_canary_if_an_example_left_alice(world, federated):
  """The positive control: a computation that returns alice's raw example."""
  _, sites, creds, canary_client = world
  alice = sites['alice']
  manifest = site_data.read_manifest(alice.data_dir)
  dataset_fn = site_data.dataset_fn(manifest['element_spec'], 'train')

  @tff.tensorflow.computation(tf.string)
  def first_example(client_id):
    return dataset_fn(client_id).take(1).get_single_element()['x']

  trainer_link, alice_link = captures({'alice': alice})
  credentials = tls.TrainerCredentials.load(creds['trainer'])
  with trainer_link, alice_link:
    with tls.secure_runtime(credentials, {'alice': alice.address}):
      pixels = first_example(canary_client)
  np.testing.assert_array_equal(pixels, CANARY)
  assert alice_link.contains(NEEDLE)  # In the clear behind alice's TLS front end ...
  assert trainer_link.gaps() == 0 and not trainer_link.contains(NEEDLE)  # ... never on the wire.


def test_a_site_killed_mid_round_fails_the_run_in_one_line_and_resume_repeats_it(
    world, federated, tmp_path):
  _, sites, creds, _ = world
  carol = sites['carol']
  workdir = str(tmp_path / 'run')

  def kill_carol_during_round_2(end):
    if end.round_num == 1:  # Round 2 starts as this returns; carol dies 0.05 s into it
      threading.Timer(0.05, carol.proc.kill).start()  # (a round takes well under 1 s here).

  config = site_config(world)
  config.runtime.connect_timeout_s = 5.0  # How long a silent site is waited for.
  with pytest.raises(distributed.WorkerError) as raised:
    run(config, workdir, callbacks=[kill_carol_during_round_2])
  message = str(raised.value)
  assert '\n' not in message and 'carol' in message, message
  test_distributed.assert_gone([carol.wrapper, carol.binary])
  restarted = test_cross_silo_tls.Site('carol', creds['carol'], carol.data_dir, carol.log_path,
                                       port=carol.port)
  sites['carol'] = restarted.wait_serving()
  rows = run(config, workdir)
  assert_rows_equal(rows, federated[0][1:])  # Rounds 2 and 3, as the uninterrupted run's.
