"""Seeded partitions of a centralized labelled dataset across clients.

Every partitioner returns one array of example indices per client and is
deterministic for a given seed. `label_histograms` reports the class counts
of every client.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

Partition = List[np.ndarray]


def label_histograms(labels: np.ndarray, partition: Sequence[np.ndarray],
                     num_classes: Optional[int] = None) -> np.ndarray:
  """Returns a `[num_clients, num_classes]` array of per-client class counts."""
  labels = np.asarray(labels)
  num_classes = num_classes or int(labels.max()) + 1
  return np.stack([
      np.bincount(labels[np.asarray(indices, dtype=np.int64)], minlength=num_classes)
      for indices in partition
  ])


def _check_num_clients(num_clients: int, num_examples: int) -> None:
  if not 1 <= num_clients <= num_examples:
    raise ValueError(
        f'num_clients must be in [1, {num_examples}] (the number of examples), '
        f'got {num_clients}.')


def iid(num_examples: int, num_clients: int, *, seed: int,
        sizes: Optional[Sequence[int]] = None) -> Partition:
  """Shuffles the examples and deals them out, equally or in given `sizes`."""
  _check_num_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  if sizes is None:
    return [np.sort(part) for part in np.array_split(order, num_clients)]
  sizes = np.asarray(sizes, dtype=np.int64)
  if len(sizes) != num_clients or sizes.min() < 0 or sizes.sum() > num_examples:
    raise ValueError(
        f'sizes must be {num_clients} non-negative counts summing to at most '
        f'{num_examples}, got {len(sizes)} counts summing to {int(sizes.sum())}.')
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def dirichlet_per_class(labels: np.ndarray, num_clients: int, *, alpha: float,
                        seed: int, min_examples: int = 1,
                        max_attempts: int = 100) -> Partition:
  """Label skew of NIID-Bench (Li et al. 2022, arXiv 2102.02079).

  For every class, the share of its examples that each client receives is
  drawn from Dir(alpha * 1). Client sizes therefore differ. Draws are repeated
  (with the same seeded generator) until every client has `min_examples`.

  Args:
    labels: One integer label per example.
    num_clients: How many clients to create.
    alpha: Dirichlet concentration; small values give strong skew.
    seed: Seed of the generator.
    min_examples: The fewest examples any client may end with.
    max_attempts: How many draws to try before giving up.

  Raises:
    ValueError: If `alpha` is not positive, or no draw gives every client
      `min_examples` examples.
  """
  labels = np.asarray(labels)
  _check_num_clients(num_clients, len(labels))
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}.')
  rng = np.random.default_rng(seed)
  for _ in range(max_attempts):
    parts = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == label))
      shares = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
      for client, chunk in enumerate(np.split(members, cuts)):
        parts[client].append(chunk)
    partition = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(p) for p in partition) >= min_examples:
      return partition
  raise ValueError(
      f'No Dirichlet(alpha={alpha}) split in {max_attempts} draws gave every one '
      f'of {num_clients} clients at least {min_examples} examples; raise alpha '
      'or lower num_clients.')
