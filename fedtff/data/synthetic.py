"""FedProx's Synthetic(alpha, beta) and Synthetic-IID federated datasets.

Li et al. 2020, Federated Optimization in Heterogeneous Networks, MLSys 2020
(arXiv 1812.06127); generators in the public repository litian96/FedProx,
`data/synthetic_*/generate_synthetic.py` and `data/synthetic_iid/generate_iid.py`.

For user k (alpha and beta are standard deviations):

  u_k ~ N(0, alpha), B_k ~ N(0, beta)
  W_k ~ N(u_k, 1) of shape [60, 10], b_k ~ N(u_k, 1) of shape [10]
  v_k ~ N(B_k, 1) of shape [60]
  x ~ N(v_k, Sigma), Sigma diagonal with Sigma_jj = j^-1.2, j = 1..60
  y = argmax(softmax(x W_k + b_k))

with `int(lognormal(4, 2)) + 50` samples per user. The IID variant draws one
W, b ~ N(0, 1) shared by all users and sets every v_k = 0. Each user's samples
are shuffled and split 90% train / 10% test (`int(0.9 n)` train examples).

The original scripts set no seed; here a seed is required. The draws are made
with NumPy's legacy `RandomState(seed)`, in the order of the original scripts,
so their `X, y` after `np.random.seed(seed)` equal ours before the shuffle
(the shuffle itself used Python's `random`; ours uses the same `RandomState`).
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np

from fedtff.data import client_data

NUM_USERS = 30
NUM_FEATURES = 60
NUM_CLASSES = 10
TRAIN_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  """Train and test examples per user, and the model that labelled them.

  Attributes:
    train: Each user's first 90% of (shuffled) examples; ids 'f_00000', ...
    test: Each user's remaining examples, under the same ids.
    weights: `[num_users, num_features, num_classes]`, user k's W_k.
    biases: `[num_users, num_classes]`, user k's b_k.
  """
  train: client_data.FederatedArrays
  test: client_data.FederatedArrays
  weights: np.ndarray
  biases: np.ndarray


def samples_per_user(rng: np.random.RandomState, num_users: int) -> np.ndarray:
  """The first draw of both generators: `int(lognormal(4, 2)) + 50` per user."""
  return rng.lognormal(4, 2, num_users).astype(int) + 50


def _covariance(num_features: int) -> np.ndarray:
  return np.diag(np.power(np.arange(1, num_features + 1, dtype=np.float64), -1.2))


def _label(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
  return np.argmax(x @ weights + bias, axis=1)  # softmax keeps the argmax.


def _split_users(rng: np.random.RandomState, xs: List[np.ndarray],
                 ys: List[np.ndarray]) -> Tuple[client_data.FederatedArrays, ...]:
  """Shuffles each user's examples and splits them 90/10 into train and test."""
  parts = {'train': ([], [], []), 'test': ([], [], [])}
  offsets = {'train': 0, 'test': 0}
  for x, y in zip(xs, ys):
    order = rng.permutation(len(y))
    num_train = int(TRAIN_FRACTION * len(y))
    for name, rows in (('train', order[:num_train]), ('test', order[num_train:])):
      features, labels, partition = parts[name]
      features.append(x[rows])
      labels.append(y[rows])
      partition.append(np.arange(offsets[name], offsets[name] + len(rows)))
      offsets[name] += len(rows)
  ids = [f'f_{k:05d}' for k in range(len(xs))]
  return tuple(
      client_data.FederatedArrays(np.concatenate(f), np.concatenate(l), p, ids)
      for f, l, p in parts.values())


def _check_sizes(num_users: int, num_features: int, num_classes: int) -> None:
  for name, value in (('num_users', num_users), ('num_features', num_features),
                      ('num_classes', num_classes)):
    if value < 1:
      raise ValueError(f'{name} must be positive, got {value}.')


def synthetic_fedprox(alpha: float, beta: float, *, seed: int,
                      num_users: int = NUM_USERS, num_features: int = NUM_FEATURES,
                      num_classes: int = NUM_CLASSES) -> SyntheticData:
  """FedProx's Synthetic(alpha, beta): every user has its own model and inputs.

  alpha controls how much the users' models differ, beta how much their
  inputs do; the paper uses (0, 0), (0.5, 0.5) and (1, 1).

  Args:
    alpha: Standard deviation of the users' model means u_k.
    beta: Standard deviation of the users' input means B_k.
    seed: Seed of the generator (required: the original set none).
    num_users: Users (30 in the paper).
    num_features: Input dimension (60).
    num_classes: Classes (10).

  Raises:
    ValueError: If alpha or beta is negative, or a size is not positive.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f'alpha and beta must be non-negative, got {alpha} and {beta}.')
  _check_sizes(num_users, num_features, num_classes)
  rng = np.random.RandomState(seed)
  sizes = samples_per_user(rng, num_users)
  model_means = rng.normal(0, alpha, num_users)
  input_mean_means = rng.normal(0, beta, num_users)
  input_means = [rng.normal(m, 1, num_features) for m in input_mean_means]
  weights, biases, xs, ys = [], [], [], []
  for k in range(num_users):
    weights.append(rng.normal(model_means[k], 1, (num_features, num_classes)))
    biases.append(rng.normal(model_means[k], 1, num_classes))
    xs.append(rng.multivariate_normal(input_means[k], _covariance(num_features), sizes[k]))
    ys.append(_label(xs[-1], weights[-1], biases[-1]))
  train, test = _split_users(rng, xs, ys)
  return SyntheticData(train, test, np.stack(weights), np.stack(biases))


def synthetic_fedprox_iid(*, seed: int, num_users: int = NUM_USERS,
                          num_features: int = NUM_FEATURES,
                          num_classes: int = NUM_CLASSES) -> SyntheticData:
  """FedProx's Synthetic-IID: one W, b ~ N(0, 1) for all users, inputs ~ N(0, Sigma).

  Args:
    seed: Seed of the generator (required: the original set none).
    num_users: Users (30 in the paper).
    num_features: Input dimension (60).
    num_classes: Classes (10).
  """
  _check_sizes(num_users, num_features, num_classes)
  rng = np.random.RandomState(seed)
  sizes = samples_per_user(rng, num_users)
  weights = rng.normal(0, 1, (num_features, num_classes))
  bias = rng.normal(0, 1, num_classes)
  zeros, covariance = np.zeros(num_features), _covariance(num_features)
  xs = [rng.multivariate_normal(zeros, covariance, n) for n in sizes]
  ys = [_label(x, weights, bias) for x in xs]
  train, test = _split_users(rng, xs, ys)
  return SyntheticData(train, test, np.stack([weights] * num_users),
                       np.stack([bias] * num_users))
