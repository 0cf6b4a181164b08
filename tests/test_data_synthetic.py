"""FedProx's Synthetic(alpha, beta) and Synthetic-IID, checked against the recipe."""

import numpy as np
import pytest

from fedtff import data


def _sizes(seed):
  return np.random.RandomState(seed).lognormal(4, 2, 30).astype(int) + 50


def _check_recipe(synthetic, seed):
  sizes = _sizes(seed)
  assert synthetic.train.client_ids == [f'f_{k:05d}' for k in range(30)]
  for k, client_id in enumerate(synthetic.train.client_ids):
    x_train, y_train = synthetic.train.client(client_id)
    x_test, y_test = synthetic.test.client(client_id)
    assert len(y_train) == int(0.9 * sizes[k]) and len(y_train) + len(y_test) == sizes[k]
    assert x_train.shape[1:] == (60,) and x_test.shape[1:] == (60,)
    for x, y in ((x_train, y_train), (x_test, y_test)):
      np.testing.assert_array_equal(
          y, np.argmax(x @ synthetic.weights[k] + synthetic.biases[k], axis=1))
  assert synthetic.weights.shape == (30, 60, 10) and synthetic.biases.shape == (30, 10)


def test_synthetic_follows_the_recipe():
  synthetic = data.synthetic_fedprox(1.0, 1.0, seed=3)
  _check_recipe(synthetic, 3)
  assert not np.allclose(synthetic.weights[0], synthetic.weights[1])
  means = [synthetic.train.client(c)[0].mean() for c in synthetic.train.client_ids]
  assert np.std(means) > 0.3  # beta = 1: users' inputs have different means.


def test_synthetic_iid_shares_one_model_and_zero_mean_inputs():
  synthetic = data.synthetic_fedprox_iid(seed=4)
  _check_recipe(synthetic, 4)
  np.testing.assert_array_equal(synthetic.weights, np.stack([synthetic.weights[0]] * 30))
  np.testing.assert_array_equal(synthetic.biases, np.stack([synthetic.biases[0]] * 30))
  inputs = synthetic.train.features
  np.testing.assert_allclose(inputs.mean(axis=0), 0.0, atol=0.05)
  np.testing.assert_allclose(inputs.var(axis=0)[[0, 59]], [1.0, 60 ** -1.2], rtol=0.15)


def test_synthetic_is_seeded():
  first, again = data.synthetic_fedprox(0.5, 0.5, seed=1), data.synthetic_fedprox(0.5, 0.5, seed=1)
  np.testing.assert_array_equal(first.train.features, again.train.features)
  np.testing.assert_array_equal(first.test.labels, again.test.labels)
  other = data.synthetic_fedprox(0.5, 0.5, seed=2)
  assert first.train.features.shape != other.train.features.shape
  with pytest.raises(TypeError):
    data.synthetic_fedprox(0.5, 0.5)  # pylint: disable=missing-kwoa


def test_synthetic_alpha_zero_gives_standard_normal_model_means():
  synthetic = data.synthetic_fedprox(0.0, 0.0, seed=0, num_users=5)
  assert len(synthetic.train.client_ids) == 5
  assert abs(synthetic.weights.mean()) < 0.1
  with pytest.raises(ValueError, match='alpha and beta must be non-negative'):
    data.synthetic_fedprox(-1.0, 0.0, seed=0)


def test_synthetic_to_client_data():
  synthetic = data.synthetic_fedprox(0.0, 0.0, seed=0, num_users=3)
  client_data = synthetic.test.to_client_data()
  rows = list(client_data.create_tf_dataset_for_client('f_00002').as_numpy_iterator())
  x, y = synthetic.test.client('f_00002')
  np.testing.assert_allclose([r['x'] for r in rows], x.astype(np.float32))
  assert [r['y'] for r in rows] == y.tolist()
