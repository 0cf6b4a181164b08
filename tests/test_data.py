"""Client data from arrays, and partitions of centralized data."""

import numpy as np
import pytest
import tensorflow as tf

from fedtff import data


def _rows(client_data, client_id):
  return list(client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())


def test_from_arrays_gives_each_client_its_rows(tiny_arrays):
  features, labels = tiny_arrays
  client_data = data.from_arrays(features, labels, [[0, 5], [7], [1, 2, 3]],
                                 client_ids=['a', 'b', 'c'])
  assert client_data.client_ids == ['a', 'b', 'c']
  rows = _rows(client_data, 'c')
  np.testing.assert_array_equal([r['x'] for r in rows], features[[1, 2, 3]])
  np.testing.assert_array_equal([r['y'] for r in rows], labels[[1, 2, 3]])
  assert [r['y'] for r in _rows(client_data, 'b')] == [labels[7]]


def test_dataset_computation_builds_the_same_rows(tiny_arrays):
  features, labels = tiny_arrays
  client_data = data.from_arrays(features, labels, [[4, 9], [3]])
  built = client_data.dataset_computation('0')
  np.testing.assert_array_equal([r['x'] for r in built], features[[4, 9]])


def test_from_arrays_casts_float64_and_int64():
  client_data = data.from_arrays(np.zeros((4, 2)), np.arange(4), [[0, 1], [2, 3]])
  spec = client_data.element_type_structure
  assert spec['x'].dtype == tf.float32 and spec['y'].dtype == tf.int32


def test_from_arrays_takes_a_dict_of_features():
  features = {'a': np.zeros((3, 2), np.float32), 'b': np.ones((3,), np.float32)}
  client_data = data.from_arrays(features, np.arange(3), [[0], [1, 2]])
  rows = _rows(client_data, '1')
  assert sorted(rows[0]['x']) == ['a', 'b'] and rows[1]['x']['b'] == 1.0


@pytest.mark.parametrize(
    'features, labels, indices, message',
    [
        (np.zeros((3, 2)), np.zeros(4), [[0]], 'same length'),
        (np.zeros((3, 2)), np.zeros(3), [[0], []], 'Client 1 has no examples'),
        (np.zeros((3, 2)), np.zeros(3), [[0, 3]], r'outside \[0, 3\)'),
    ],
    ids=['length_mismatch', 'empty_client', 'index_out_of_range'])
def test_from_arrays_rejects_bad_input(features, labels, indices, message):
  with pytest.raises(ValueError, match=message):
    data.from_arrays(features, labels, indices)


def test_iid_partition_is_seeded_and_covers_every_example():
  first = data.iid(100, 7, seed=3)
  assert [a.tolist() for a in first] == [a.tolist() for a in data.iid(100, 7, seed=3)]
  assert [a.tolist() for a in first] != [a.tolist() for a in data.iid(100, 7, seed=4)]
  assert sorted(np.concatenate(first).tolist()) == list(range(100))
  assert sorted(len(a) for a in first) == [14, 14, 14, 14, 14, 15, 15]


def test_iid_partition_with_given_sizes():
  sizes = [len(a) for a in data.iid(50, 3, seed=0, sizes=[10, 0, 30])]
  assert sizes == [10, 0, 30]
  with pytest.raises(ValueError, match='summing to at most 50'):
    data.iid(50, 2, seed=0, sizes=[30, 30])


def test_dirichlet_per_class_skews_labels_and_is_seeded():
  labels = np.repeat(np.arange(10), 100)
  skewed = data.dirichlet_per_class(labels, 20, alpha=0.1, seed=0)
  again = data.dirichlet_per_class(labels, 20, alpha=0.1, seed=0)
  assert [a.tolist() for a in skewed] == [a.tolist() for a in again]
  assert sorted(np.concatenate(skewed).tolist()) == list(range(1000))
  histograms = data.label_histograms(labels, skewed)
  assert histograms.shape == (20, 10) and histograms.sum() == 1000
  dominant_share = (histograms.max(axis=1) / histograms.sum(axis=1)).mean()
  near_iid = data.label_histograms(labels, data.dirichlet_per_class(labels, 20, alpha=1000, seed=0))
  assert dominant_share > 0.5 > (near_iid.max(axis=1) / near_iid.sum(axis=1)).mean()


def test_dirichlet_per_class_rejects_impossible_requests():
  with pytest.raises(ValueError, match='alpha must be positive'):
    data.dirichlet_per_class(np.zeros(10, int), 2, alpha=0, seed=0)
  with pytest.raises(ValueError, match='at least 5 examples'):
    data.dirichlet_per_class(np.zeros(10, int), 5, alpha=0.01, seed=0, min_examples=5)


def test_load_digits_is_offline_and_scaled():
  features, labels = data.load_digits()
  assert features.shape == (1797, 64) and features.dtype == np.float32
  assert 0.0 == features.min() and features.max() == 1.0
  assert sorted(set(labels.tolist())) == list(range(10))
