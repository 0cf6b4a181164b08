"""Thousands of clients: building ClientData and sampling a cohort create only the cohort's datasets."""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import data

NUM_CLIENTS = 3400


@pytest.fixture
def dataset_counter(monkeypatch):
  """Counts `tf.data.Dataset.from_tensor_slices` calls and the rows they get."""
  created = []
  original = tf.data.Dataset.from_tensor_slices

  def counting(tensors, name=None):
    created.append(len(tf.nest.flatten(tensors)[0]))
    return original(tensors, name=name)

  monkeypatch.setattr(tf.data.Dataset, 'from_tensor_slices', staticmethod(counting))
  return created


def _emnist_like_arrays(examples_per_client=4):
  rng = np.random.default_rng(0)
  num_examples = NUM_CLIENTS * examples_per_client
  pixels = rng.uniform(size=(num_examples, 28, 28)).astype(np.float32)
  labels = rng.integers(0, 10, num_examples)
  partition = np.split(np.arange(num_examples), NUM_CLIENTS)
  return {'pixels': pixels, 'label': labels}, labels, partition


def test_building_and_sampling_creates_only_the_cohorts_datasets(dataset_counter):
  features, labels, partition = _emnist_like_arrays()
  client_data = data.from_arrays(features, labels, partition)
  assert dataset_counter == [4]  # TFF reads the element spec off one client.
  preprocessed = client_data.preprocess(data.ClientPreprocessing(batch_size=2).build())
  assert len(dataset_counter) == 2
  for round_num in range(3):
    cohort = fedtff.sample_clients(preprocessed.client_ids, 50, round_num=round_num, seed=0)
    datasets = [preprocessed.create_tf_dataset_for_client(c) for c in cohort]
    assert [d.cardinality().numpy() for d in datasets] == [2] * 50
  assert len(dataset_counter) == 2 + 3 * 50
  assert set(dataset_counter) == {4}  # Each dataset sliced one client's rows, not all.


def test_splitting_thousands_of_clients_creates_one_dataset_each(dataset_counter):
  features, labels, partition = _emnist_like_arrays(examples_per_client=2)
  client_data = data.from_arrays(features, labels, partition)
  kept, heldout = data.split_client_data(client_data, 400, seed=0)
  assert (len(kept.client_ids), len(heldout.client_ids)) == (3000, 400)
  assert len(dataset_counter) == 3


def test_sql_client_data_with_thousands_of_clients_builds_in_constant_datasets(tmp_path, monkeypatch):
  rows = [('all_train', f'w{k:04d}', {'label': k % 62, 'pixels': np.zeros((28, 28), np.float32)})
          for k in range(NUM_CLIENTS)]
  rows += [('all_test', 'w0000', rows[0][2])]
  data.write_sql_client_data(str(tmp_path / 'emnist_all.sqlite'), rows)
  created = []
  sql_dataset = tf.data.experimental.SqlDataset
  monkeypatch.setattr(tf.data.experimental, 'SqlDataset',
                      lambda *args, **kwargs: created.append(1) or sql_dataset(*args, **kwargs))
  train, _ = data.load_tff_dataset('emnist_full', cache_dir=str(tmp_path))
  assert len(train.client_ids) == NUM_CLIENTS and len(created) <= 4
  before = len(created)
  cohort = fedtff.sample_clients(train.client_ids, 50, round_num=0, seed=0)
  labels = [next(iter(train.create_tf_dataset_for_client(c)))['label'].numpy() for c in cohort]
  assert len(created) - before == 50 and labels == [int(c[1:]) % 62 for c in cohort]


def test_client_dataset_fn_traces_once_and_does_not_copy_rows_into_the_graph():
  features, labels, partition = _emnist_like_arrays()
  client_data = data.from_arrays(features, labels, partition).preprocess(
      data.ClientPreprocessing(batch_size=3).build())
  dataset_fn = data.client_dataset_fn(client_data)
  for round_num in range(3):
    for client_id in fedtff.sample_clients(client_data.client_ids, 50, round_num=round_num, seed=0):
      assert [len(b['y']) for b in dataset_fn(client_id)] == [3, 1]
  assert dataset_fn.experimental_get_tracing_count() == 1
  graph = dataset_fn.get_concrete_function().graph.as_graph_def()
  assert graph.ByteSize() < 100_000 < features['pixels'].nbytes
  traced = list(dataset_fn('17').as_numpy_iterator())
  eager = list(client_data.create_tf_dataset_for_client('17').as_numpy_iterator())
  np.testing.assert_array_equal(traced[0]['x']['pixels'], eager[0]['x']['pixels'])
  np.testing.assert_array_equal(traced[1]['y'], labels[[17 * 4 + 3]])


def test_tff_builds_thousands_of_clients_from_files_not_from_graph_constants(tmp_path):
  features, labels, partition = _emnist_like_arrays()
  client_data = data.from_arrays(features, labels, partition, feed_dir=str(tmp_path)).preprocess(
      data.ClientPreprocessing(batch_size=3).build())
  computation = client_data.dataset_computation
  assert computation.to_building_block().proto.ByteSize() < 200_000 < features['pixels'].nbytes
  (files,) = tmp_path.iterdir()
  sizes = [path.stat().st_size for path in files.iterdir()]
  # One file per client: its pixels, then x['label'] and y as int32.
  assert len(sizes) == NUM_CLIENTS and sum(sizes) == features['pixels'].nbytes + 8 * len(labels)
  for client_id in ['0', '1717', '3399']:
    built = [b['y'].numpy().tolist() for b in computation(client_id)]
    assert built == [b['y'].numpy().tolist()
                     for b in client_data.create_tf_dataset_for_client(client_id)]
