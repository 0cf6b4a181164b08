"""Tasks from the config's data group: every source, partition and split."""

import numpy as np
import pytest

import fedtff
from fedtff import tasks


def data_config(**fields):
  config = fedtff.runner.config.base_config()
  config.data.update(dict(num_clients=20, num_test_clients=4))
  config.data.update(fields)
  fedtff.runner.config.validate(config)
  return config


def num_examples(client_data):
  return sum(int(x['y'].shape[0]) for cid in client_data.client_ids
             for x in client_data.create_tf_dataset_for_client(cid))


@pytest.mark.parametrize('partition', ['iid', 'dirichlet', 'dirichlet_prior', 'shards', 'linear',
                                       'quantity_skew'])
def test_every_partition_of_digits_builds_train_and_heldout_clients(partition):
  task = tasks.build_task(data_config(partition=partition, shuffle_buffer=0))
  assert len(task.train_data.client_ids) == 16 and len(task.test_data.client_ids) == 4
  assert not set(task.train_data.client_ids) & set(task.test_data.client_ids)
  # Hsu et al.'s split gives every client len // num_clients examples; the rest go unused.
  expected = 20 * (1797 // 20) if partition == 'dirichlet_prior' else 1797
  assert num_examples(task.train_data) + num_examples(task.test_data) == expected
  assert task.num_classes == 10


def test_per_client_holdout_keeps_every_client():
  task = tasks.build_task(data_config(num_test_clients=0, test_fraction=0.25, partition='iid'))
  assert task.train_data.client_ids == task.test_data.client_ids
  assert len(task.train_data.client_ids) == 20
  assert num_examples(task.test_data) == pytest.approx(1797 * 0.25, abs=25)


def test_synthetic_fedprox_uses_its_own_user_split():
  task = tasks.build_task(data_config(dataset='synthetic_fedprox', synthetic_alpha=0.5,
                                      synthetic_beta=0.5, batch_size=10))
  assert len(task.train_data.client_ids) == 30 == len(task.test_data.client_ids)
  assert task.element_spec['x'].shape.as_list() == [None, 60]
  assert task.num_classes == 10


def test_npz_directory_source(tmp_path):
  rng = np.random.default_rng(0)
  for name in ('alice', 'bob', 'carol', 'dave'):
    np.savez(tmp_path / f'{name}.npz', x=rng.normal(size=(12, 5)).astype(np.float32),
             y=rng.integers(0, 3, 12))
  task = tasks.build_task(data_config(dataset='npz_dir', path=str(tmp_path), num_test_clients=1,
                                      num_classes=3))
  assert sorted(task.train_data.client_ids + task.test_data.client_ids) == [
      'alice', 'bob', 'carol', 'dave']
  assert task.num_classes == 3


@pytest.mark.parametrize(
    'fields, message',
    [
        (dict(num_test_clients=0, test_fraction=0.0), 'needs evaluation data'),
        (dict(dataset='npz_dir'), 'needs data.path'),
        (dict(partition='shards', shards_per_client=200), 'shards'),
        (dict(num_classes=5), 'label'),
    ],
    ids=['no_eval_data', 'npz_without_path', 'too_many_shards', 'labels_out_of_range'])
def test_bad_data_configs_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    tasks.build_task(data_config(**fields))


def test_synthetic_run_trains(tmp_path):
  config = data_config(dataset='synthetic_iid', batch_size=10)
  config.model.name = 'logistic_regression'
  config.total_rounds = 2
  summary = fedtff.run_experiment(config, str(tmp_path))
  assert summary['final']['eval/num_examples'] > 0


@pytest.mark.parametrize('workers, feed, feed_dir, expected', [
    ((), 'auto', '', 'file'),
    (('127.0.0.1:8000', 'localhost:8001', '[::1]:8002'), 'auto', '', 'file'),
    (('127.0.0.1:8000', 'host2:8000'), 'auto', '', 'constants'),
    (('host2:8000',), 'auto', '/shared/feed', 'file'),
    ((), 'constants', '', 'constants'),
], ids=['local', 'loopback_workers', 'remote_worker', 'remote_with_shared_dir', 'explicit'])
def test_in_memory_clients_are_fed_by_files_unless_a_worker_is_remote(
    workers, feed, feed_dir, expected):
  config = fedtff.runner.config.base_config()
  config.runtime.workers, config.data.feed, config.data.feed_dir = workers, feed, feed_dir
  assert tasks.feed(config) == expected


def test_file_feed_to_a_remote_worker_needs_a_shared_directory():
  config = fedtff.runner.config.base_config()
  config.runtime.workers, config.data.feed = ('host2:8000',), 'file'
  with pytest.raises(ValueError, match=r"data.feed='file' with a worker on another host \(host2\)"):
    tasks.feed(config)


def _all_clients(config):
  """Every client's labels (train and held-out) of an array task, and its id."""
  parts = tasks.arrays(config.data, config.seed)
  return [(cid, arrays.client(cid)[1]) for arrays in parts for cid in arrays.client_ids]


@pytest.mark.parametrize('fields, check', [
    (dict(partition='pathological', classes_per_client=1, class_assignment='first-deterministic'),
     lambda clients: all(len(set(y)) == 1 for _, y in clients)),
    (dict(partition='pathological', classes_per_client=2, class_assignment='first-deterministic'),
     lambda clients: all(len(set(y)) == 2 for _, y in clients)),
    (dict(partition='size', client_sizes=tuple(range(1, 21))),
     lambda clients: sorted(len(y) for _, y in clients) == list(range(1, 21))),
    (dict(partition='linear'),
     lambda clients: sum(len(y) for _, y in clients) == 1797),
    (dict(partition='inner_dirichlet', client_sizes=(50,) * 20),
     lambda clients: [len(y) for _, y in clients] == [50] * 20),
    (dict(partition='distribution', class_distribution=tuple(
        tuple(float(c == k % 10) for c in range(10)) for k in range(20))),
     lambda clients: all(len(set(y)) == 1 for _, y in clients)),
    (dict(partition='continuous', strictness=1.0),
     lambda clients: sum(len(y) for _, y in clients) == 1797),
], ids=['label_skew_1', 'label_skew_2', 'size', 'linear', 'inner_dirichlet', 'distribution',
        'continuous'])
def test_flower_parity_partitions_of_digits_from_the_config(fields, check):
  assert check(_all_clients(data_config(**fields)))


def test_grouped_natural_id_groups_a_sources_own_clients():
  config = data_config(dataset='synthetic_fedprox', partition='grouped_natural_id', group_size=4,
                       group_mode='allow-bigger')
  train, test = tasks.arrays(config.data, config.seed)
  assert train.client_ids == test.client_ids and len(train.client_ids) == 7  # 30 users by 4.
  users = tasks.arrays(data_config(dataset='synthetic_fedprox', partition='natural_id').data, 0)[0]
  assert sorted(u for cid in train.client_ids for u in cid.split('+')) == sorted(users.client_ids)
  assert sum(map(len, train.partition)) == sum(map(len, users.partition))


@pytest.mark.parametrize('fields, message', [
    (dict(partition='natural_id'), "data.partition='natural_id' needs a source with its own"),
    (dict(partition='size', client_sizes=(10, 10)),
     'data.client_sizes must hold data.num_clients=20'),
    (dict(partition='distribution'),
     "data.partition='distribution' needs data.class_distribution"),
    (dict(partition='pathological', classes_per_client=11),
     r'classes_per_client must be in \[1, 10\]'),
], ids=['natural_id_of_digits', 'sizes_count', 'no_distribution', 'too_many_classes'])
def test_bad_partition_configs_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    tasks.arrays(data_config(**fields).data, 0)


def test_unknown_class_assignment_is_a_config_error():
  with pytest.raises(fedtff.runner.config.ConfigError, match='data.class_assignment'):
    data_config(class_assignment='first')


@pytest.mark.parametrize('name', list(tasks.NIID_BENCH_PARTITIONS))
def test_niid_bench_partitions_of_digits(name):
  clients = _all_clients(data_config(**tasks.NIID_BENCH_PARTITIONS[name]))
  assert len(clients) == 20 and sum(len(y) for _, y in clients) == 1797
  if name.startswith('label_'):  # #C = k; client i's first label is i mod 10, as NIID-Bench's.
    k = int(name[-1])
    assert all(len(set(y)) == k and int(cid) % 10 in set(y) for cid, y in clients)
  if name == 'dirichlet_0.5':
    assert min(len(y) for _, y in clients) >= 10
