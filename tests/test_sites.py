"""Sites that own their data (`fedtff.execution.site_data`, `fedtff.execution.sites`).

The quickstart config (3 rounds, evaluated at round 3) is exported to three
sites, alice, bob and carol, each a real `worker_binary` whose working
directory links `data` to its site directory (`sites.PlainSite`, on
localhost, no TLS). Its run with `runtime.sites` must give the rows (with each test client's
metrics, `per_client_eval`) and final weights of the same config run locally
on the TFF engine, within 1e-5.
"""

import os

import numpy as np
import pytest
import tensorflow_federated as tff

import fedtff
from fedtff.execution import site_data
from fedtff.execution import sites
from fedtff.runner import config as config_lib
from fedtff.runner import experiment

SITES = ('alice', 'bob', 'carol')
TIMING = ('round_time_s', 'examples_per_s')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart(site_specs=()):
  config = site_data.load_config(os.path.join(REPO, 'configs', 'quickstart.py'))
  config.total_rounds = 3
  config.rounds_per_eval = 3
  config.output.tensorboard = False
  config.per_client_eval = True  # Results at CLIENTS: `after_merge` at each site.
  config.engine = 'tff'
  config.runtime.sites = tuple(site_specs)
  config.runtime.secure_aggregation = False  # Plain-text sites: masks need TLS credentials.
  return config


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('sites'))
  assert site_data.main(['export', f'--config={REPO}/configs/quickstart.py', f'--out={out}',
                         '--sites', *SITES]) == 0
  return out


@pytest.fixture(scope='module')
def plain_sites(exported):
  started = [sites.PlainSite(os.path.join(exported, name)).start() for name in SITES]
  yield started
  for site in started:
    site.stop()
  assert not any(site.worker.is_running() for site in started)


def run(config, workdir):
  rows, weights = [], []
  record = lambda end: weights.append(end.model_weights)
  experiment.run_experiment(config, workdir, progress_fn=rows.append, callbacks=[record])
  return [{k: v for k, v in row.items() if k not in TIMING} for row in rows], weights[-1]


@pytest.fixture(scope='module')
def local_run(tmp_path_factory):
  return run(quickstart(), str(tmp_path_factory.mktemp('local')))


@pytest.fixture(scope='module')
def site_run(plain_sites, tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:  # The trainer must not load the dataset.
    def refuse(*args, **kwargs):
      raise AssertionError('the trainer loaded the raw dataset')
    patch.setattr(fedtff.tasks, 'arrays', refuse)
    return run(quickstart([s.spec for s in plain_sites]), str(tmp_path_factory.mktemp('sites')))


def test_export_assigns_contiguous_blocks_of_sorted_ids(exported):
  manifests = [site_data.read_manifest(os.path.join(exported, name)) for name in SITES]
  ids = [sorted(m['train_client_ids'] + m['test_client_ids']) for m in manifests]
  assert [len(i) for i in ids] == [20, 20, 20]
  assert sum(ids, []) == sorted(sum(ids, []))  # alice's block first, then bob's, carol's.
  assert manifests[0]['element_spec'] == {'x': {'dtype': 'float32', 'shape': [64]},
                                          'y': {'dtype': 'int32', 'shape': []}}


def test_site_rows_equal_the_local_rows(local_run, site_run):
  (site_rows, site_weights), (local_rows, local_weights) = site_run, local_run
  assert [r['round'] for r in site_rows] == [1, 2, 3]
  assert {'eval/accuracy', 'eval/accuracy/p50'} <= site_rows[-1].keys()
  for row, expected in zip(site_rows, local_rows):
    assert row.keys() == expected.keys()
    assert row == pytest.approx(expected, rel=1e-5, abs=1e-6)
  for got, want in zip(site_weights.trainable, local_weights.trainable):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def routed(plain_sites):
  """The quickstart's composed process over the sites, and the same process run locally."""
  config = quickstart()
  federation = sites.federation([s.spec for s in plain_sites])
  site_task = site_data.site_task(config, federation)
  local_task = fedtff.tasks.build_task(config)
  processes = [tff.simulation.compose_dataset_computation_with_learning_process(
      task.train_data.dataset_computation, experiment.build_process(config, task))
               for task in (site_task, local_task)]
  weights = fedtff.algorithms.tff_model.initial_weights(local_task.model_fn, 0)
  with fedtff.local_runtime():
    state = processes[1].set_model_weights(processes[1].initialize(), weights)
  return federation, processes, state


def test_dp_accounting_over_sites_is_the_local_runs(plain_sites, tmp_path):
  """DP-FedAvg over the sites (secure aggregation off: it masks the plain mean only) reports
  the privacy/epsilon of the same run on one machine, round by round."""
  def dp(config):
    config.total_rounds, config.rounds_per_eval, config.per_client_eval = 2, 2, False
    config.algorithm.weighted = False
    config.aggregator.kind = 'dp'
    config.aggregator.clip_norm = 1.0
    config.aggregator.noise_multiplier = 0.5
    return config

  local, _ = run(dp(quickstart()), str(tmp_path / 'local'))
  federated, _ = run(dp(quickstart([s.spec for s in plain_sites])), str(tmp_path / 'sites'))
  assert [r['round'] for r in federated] == [1, 2]
  assert [r['privacy/epsilon'] for r in federated] == pytest.approx(
      [r['privacy/epsilon'] for r in local], rel=1e-12)
  assert federated[-1]['privacy/epsilon'] > 0


def test_a_site_without_clients_in_the_round_still_runs(plain_sites, routed):
  federation, (site_process, local_process), state = routed
  held = lambda site: [i for i in federation['train_client_ids']
                       if federation['site_of'][i] == site]
  ids = fedtff.data.round_client_ids(1, held('alice')[:3] + held('bob')[-2:])  # None of carol's.
  with sites.site_runtime([s.spec for s in plain_sites]):
    output = site_process.next(state, ids)
    with pytest.raises(sites.UnknownClientError, match=r"^Client '1/nobody' is held by none of "
                       r'the sites alice, bob, carol\.$'):
      site_process.next(state, ids + ['1/nobody'])
  with fedtff.local_runtime():
    expected = local_process.next(state, ids)
  assert output.metrics['client_work']['train']['num_examples'] == (
      expected.metrics['client_work']['train']['num_examples'])
  for got, want in zip(site_process.get_model_weights(output.state).trainable,
                       local_process.get_model_weights(expected.state).trainable):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_computations_carry_no_example(routed):
  """The serialized round holds the reader of `data/clients.sqlite`, not the rows; the same
  check finds the rows in a process whose clients are graph constants."""
  _, (site_process, _), _ = routed
  train, _, _ = site_data.raw_client_data(quickstart())
  rows = [next(iter(train.create_tf_dataset_for_client(c)))['x'].numpy().tobytes()
          for c in train.client_ids[:10]]
  sent = tff.framework.ConcreteComputation.get_proto(site_process.next).SerializeToString()
  assert b'data/clients.sqlite' in sent
  assert not any(row in sent for row in rows)
  config = quickstart()
  config.data.feed = 'constants'
  task = fedtff.tasks.build_task(config)
  constants = tff.simulation.compose_dataset_computation_with_learning_process(
      task.train_data.dataset_computation, experiment.build_process(config, task))
  assert all(row in tff.framework.ConcreteComputation.get_proto(
      constants.next).SerializeToString() for row in rows)


@pytest.mark.parametrize('make, message', [
    (lambda d: None, r'^\S+ is not a fedtff site data directory: no such directory\.$'),
    (lambda d: os.mkdir(d), r'^\S+ is not a fedtff site data directory: it has no '
                            r'manifest\.json\.$'),
])
def test_a_bad_site_directory_gives_one_line(tmp_path, make, message):
  directory = str(tmp_path / 'site')
  make(directory)
  with pytest.raises(site_data.SiteDataError, match=message):
    site_data.read_manifest(directory)
  with pytest.raises(site_data.SiteDataError, match=message):
    sites.PlainSite(directory)


def test_a_damaged_manifest_gives_one_line(exported, tmp_path):
  directory = tmp_path / 'copy'
  directory.mkdir()
  (directory / site_data.EXAMPLES).write_bytes(b'')
  (directory / site_data.MANIFEST).write_text('{"format": "fedtff-site/1", "site": "x"}')
  with pytest.raises(site_data.SiteDataError, match=r'^\S+ is not a fedtff site data directory: '
                     r'manifest\.json lacks train_client_ids, test_client_ids, element_spec, '
                     r'counts, num_classes\.$'):
    site_data.read_manifest(str(directory))


@pytest.mark.parametrize('value, message', [
    (('alice',), r"^Config key runtime\.sites: A site is 'name=host:port' .*, got 'alice'\.$"),
    (('alice=localhost',), r"^Config key runtime\.sites: A site is 'name=host:port' with a "
                           r"port in \[1, 65535\], got 'alice=localhost'\.$"),
    (('alice=h:1', 'alice=h:2'), r'^Config key runtime\.sites: Each site name must be listed '
                                 r'once; repeated: alice\.$'),
])
def test_bad_runtime_sites_give_one_line(value, message):
  config = quickstart(value)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_secure_aggregation_options_are_checked_in_one_line(tmp_path):
  config = quickstart(['alice=localhost:1'])
  config.runtime.secure_aggregation = True
  with pytest.raises(config_lib.ConfigError, match=r'^Config key runtime\.secure_aggregation '
                     r'needs runtime\.credentials \(the sites sign'):
    config_lib.validate(config)
  config.runtime.credentials = str(tmp_path / 'missing')
  with pytest.raises(config_lib.ConfigError, match=r"^Config key runtime\.credentials: '.*missing' "
                     r"is not a directory; expected the trainer's credentials directory"):
    config_lib.validate(config)
  config.runtime.credentials = str(tmp_path)
  config_lib.validate(config)
  config.aggregator.kind = 'robust'
  with pytest.raises(config_lib.ConfigError, match=r'^Config key runtime\.secure_aggregation '
                     r"masks the weighted mean only, got aggregator\.kind='robust'"):
    config_lib.validate(config)
  config.aggregator.kind = 'mean'
  config.algorithm.name = 'mimelite'
  with pytest.raises(config_lib.ConfigError, match=r"^Config key runtime\.secure_aggregation "
                     r"masks the model update, .*algorithm\.name='mimelite' aggregates more"):
    config_lib.validate(config)


def test_sites_exclude_workers_and_the_compiled_engine():
  config = quickstart(['alice=localhost:1'])
  config.runtime.workers = ('localhost:2',)
  with pytest.raises(config_lib.ConfigError, match=r'^Config keys runtime\.sites and '
                     r'runtime\.workers are both set;'):
    config_lib.validate(config)
  config = quickstart(['alice=localhost:1'])
  config.engine = 'compiled'
  with pytest.raises(config_lib.ConfigError, match=r"^runtime\.sites needs engine='tff'"):
    config_lib.validate(config)
  config.engine = 'auto'
  assert config_lib.engine_choice(config).name == 'tff'


def test_a_site_without_data_gives_one_line(tmp_path):
  worker = fedtff.execution.runtime.WorkerProcess(cwd=str(tmp_path)).start()
  try:
    with pytest.raises(fedtff.execution.distributed.WorkerError,
                       match=r'^Site dana \(localhost:\d+\) has no readable site data '
                             r'\(data/manifest\.json\): [^\n]*$'):
      sites.fetch_manifests([f'dana={worker.address}'], timeout_s=10.0)
  finally:
    worker.stop()


def test_a_lost_site_fails_the_round_naming_it(exported, plain_sites, routed):
  federation, (site_process, _), state = routed
  victim = sites.PlainSite(os.path.join(exported, 'carol')).start()
  ids = fedtff.data.round_client_ids(1, federation['train_client_ids'][::10])
  try:
    with sites.site_runtime([s.spec for s in plain_sites[:2]] + [victim.spec],
                            connect_timeout_s=3.0):
      victim.worker.kill()
      with pytest.raises(fedtff.execution.distributed.WorkerUnavailableError,
                         match=r'^Site carol: TFF worker localhost:\d+ is unavailable: [^\n]*$'):
        site_process.next(state, ids)
  finally:
    victim.stop()


def test_masked_fedavg_over_sites_equals_the_plain_round(plain_sites, routed, tmp_path):
  """Secure aggregation (fedtff.execution.secagg) through the routing: every site adds its
  mask also in a round where carol holds no client, so the masks cancel."""
  from fedtff.algorithms import masked_sum  # pylint: disable=g-import-not-at-top
  from fedtff.execution import secagg  # pylint: disable=g-import-not-at-top
  from tests import test_secagg  # pylint: disable=g-import-not-at-top
  federation, _, _ = routed
  authority = test_secagg.Authority('sites-test-ca')
  maskers = {s.manifest['site']: secagg.SiteMasker(
      s.manifest['site'], s.run_dir, *authority.issue(str(tmp_path / s.manifest['site']),
                                                      s.manifest['site'])) for s in plain_sites}
  secure = secagg.SecureRounds({site: test_secagg.json_control(m) for site, m in maskers.items()})
  secure.setup()
  config = quickstart()
  tasks = [site_data.site_task(config, federation), fedtff.tasks.build_task(config)]
  model_fn = fedtff.algorithms.tff_model.tff_model_fn(tasks[0].model_fn, tasks[0].element_spec)
  factory = masked_sum.masked_mean_factory()

  def composed(task, aggregator):
    return tff.simulation.compose_dataset_computation_with_learning_process(
        task.train_data.dataset_computation, tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, tff.learning.optimizers.build_sgdm(0.1),
            tff.learning.optimizers.build_sgdm(1.0), model_aggregator=aggregator))

  masked, plain = composed(tasks[0], factory), composed(tasks[1], None)
  weights = fedtff.algorithms.tff_model.initial_weights(tasks[1].model_fn, 0)
  ids = fedtff.data.round_client_ids(1, [i for i in federation['train_client_ids']
                                         if federation['site_of'][i] != 'carol'][::6])
  value_type = tff.learning.models.weights_type_from_model(model_fn).trainable
  with sites.site_runtime([s.spec for s in plain_sites]):
    state = masked.set_model_weights(masked.initialize(), weights)
    secure.prepare_round(masked_sum.mean_stream_lengths(factory, value_type))
    ours = masked.get_model_weights(masked.next(state, ids).state).trainable
  with fedtff.local_runtime():
    expected = plain.get_model_weights(plain.next(
        plain.set_model_weights(plain.initialize(), weights), ids).state).trainable
  for got, want in zip(ours, expected):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
