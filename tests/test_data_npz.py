"""ClientData from a directory of per-client .npz files."""

import numpy as np
import pytest

from fedtff import data


def _write(directory, name, **arrays):
  np.savez(directory / f'{name}.npz', **arrays)


def test_one_client_per_file_named_by_stem(tmp_path):
  _write(tmp_path, 'bob', x=np.ones((2, 3), np.float32), y=np.array([1, 0]))
  _write(tmp_path, 'alice', x=np.zeros((3, 3), np.float32), y=np.array([2, 2, 1]))
  (tmp_path / 'notes.txt').write_text('not a client')
  client_data = data.from_npz_dir(str(tmp_path))
  assert client_data.client_ids == ['alice', 'bob']
  rows = list(client_data.create_tf_dataset_for_client('bob').as_numpy_iterator())
  np.testing.assert_array_equal([r['x'] for r in rows], np.ones((2, 3)))
  assert [r['y'] for r in rows] == [1, 0]
  assert [int(e['y']) for e in client_data.dataset_computation('alice')] == [2, 2, 1]


def test_named_feature_arrays_become_a_dict(tmp_path):
  _write(tmp_path, 'c0', image=np.zeros((2, 4, 4)), age=np.array([30.0, 41.0]), y=np.array([0, 1]))
  arrays = data.load_npz_dir(str(tmp_path))
  assert sorted(arrays.features) == ['age', 'image'] and arrays.client_ids == ['c0']
  rows = list(arrays.to_client_data().create_tf_dataset_for_client('c0').as_numpy_iterator())
  assert rows[1]['x']['age'] == 41.0 and rows[1]['x']['image'].shape == (4, 4)


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not a directory'):
    data.from_npz_dir(str(tmp_path / 'absent'))
  with pytest.raises(ValueError, match='holds no .npz files'):
    data.from_npz_dir(str(tmp_path))
  _write(tmp_path, 'a', x=np.zeros((2, 3)), labels=np.zeros(2))
  with pytest.raises(ValueError, match=r"a.npz has no label array 'y'; it holds \['labels', 'x'\]"):
    data.from_npz_dir(str(tmp_path))
  _write(tmp_path, 'a', x=np.zeros((2, 3)), y=np.zeros(3))
  with pytest.raises(ValueError, match='a.npz holds arrays of different lengths'):
    data.from_npz_dir(str(tmp_path))
  _write(tmp_path, 'a', x=np.zeros((2, 3)), y=np.zeros(2, int))
  _write(tmp_path, 'b', x=np.zeros((2, 4)), y=np.zeros(2, int))
  with pytest.raises(ValueError, match="Array 'x' of .*b.npz has dtype float64 and row shape"):
    data.from_npz_dir(str(tmp_path))
  _write(tmp_path, 'b', x=np.zeros((0, 3)), y=np.zeros(0, int))
  with pytest.raises(ValueError, match='Client b has no examples'):
    data.from_npz_dir(str(tmp_path))
  assert data.from_npz_dir(str(tmp_path), allow_empty_clients=True).client_ids == ['a', 'b']
