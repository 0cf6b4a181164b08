"""Seeded partitions of a centralized labelled dataset across clients.

Every partitioner returns one array of example indices per client (sorted)
and is deterministic for a given seed. `label_histograms` reports the class
counts of every client; `check_labels` checks labels against a class count.

Partitioners and the papers they follow:

* `iid`: a uniform shuffle dealt out equally or in given sizes.
* `dirichlet_per_class`: per class, its split over clients ~ Dir(alpha); client
  sizes vary (NIID-Bench: Li et al. 2022, Federated Learning on Non-IID Data
  Silos: An Experimental Study, arXiv 2102.02079).
* `dirichlet_prior`: per client, its class distribution ~ Dir(alpha * p) with
  fixed client sizes (Hsu et al. 2019, Measuring the Effects of Non-Identical
  Data Distribution for Federated Visual Classification, arXiv 1909.06335).
* `shards`: sort by label, deal out shards (McMahan et al. 2017,
  Communication-Efficient Learning of Deep Networks from Decentralized Data,
  arXiv 1602.05629).
* `quantity_skew`: lognormal or power-law client sizes, IID labels (Li et al.
  2020, Federated Optimization in Heterogeneous Networks (FedProx), MLSys
  2020; NIID-Bench's quantity skew).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

Partition = List[np.ndarray]


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Returns `labels` as an int64 array after checking them against `num_classes`.

  Raises:
    ValueError: If `num_classes` is not positive, or the labels are not a
      one-dimensional integer array with values in `[0, num_classes)`.
  """
  labels = np.asarray(labels)
  if num_classes < 1:
    raise ValueError(f'num_classes must be positive, got {num_classes}.')
  if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
    raise ValueError(
        'labels must be a one-dimensional integer array, got shape '
        f'{labels.shape} and dtype {labels.dtype}.')
  outside = labels[(labels < 0) | (labels >= num_classes)]
  if outside.size:
    raise ValueError(
        f'{outside.size} labels are outside [0, {num_classes}), for example '
        f'{outside[0]}.')
  return labels.astype(np.int64)


def label_histograms(labels: np.ndarray, partition: Sequence[np.ndarray],
                     num_classes: Optional[int] = None) -> np.ndarray:
  """Returns a `[num_clients, num_classes]` array of per-client class counts.

  Args:
    labels: One integer label per example.
    partition: For each client, the indices of its examples.
    num_classes: The number of classes; defaults to the largest label + 1.
      When given, labels outside `[0, num_classes)` raise a ValueError.
  """
  labels = np.asarray(labels)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  else:
    labels = check_labels(labels, num_classes)
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


def _check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f'{name} must be positive, got {value}.')


def _class_prior(labels: np.ndarray, num_classes: int,
                 prior: Optional[Sequence[float]]) -> np.ndarray:
  if prior is None:
    return np.bincount(labels, minlength=num_classes) / len(labels)
  prior = np.asarray(prior, dtype=np.float64)
  if prior.shape != (num_classes,) or prior.min() < 0 or prior.sum() <= 0:
    raise ValueError(
        f'prior must be {num_classes} non-negative weights with a positive sum, '
        f'got {prior.tolist()!r:.200}.')
  return prior / prior.sum()


def _fixed_sizes(num_examples: int, num_clients: int,
                 client_sizes: Optional[Sequence[int]]) -> np.ndarray:
  if client_sizes is None:
    return np.full(num_clients, num_examples // num_clients, dtype=np.int64)
  sizes = np.asarray(client_sizes, dtype=np.int64)
  if sizes.shape != (num_clients,) or sizes.min() < 1 or sizes.sum() > num_examples:
    raise ValueError(
        f'client_sizes must be {num_clients} positive counts summing to at most '
        f'{num_examples}, got {len(sizes)} counts summing to {int(sizes.sum())}.')
  return sizes


def _client_distribution(rng: np.random.Generator, alpha: float,
                         prior: np.ndarray) -> np.ndarray:
  support = np.flatnonzero(prior > 0)
  q = np.zeros_like(prior)
  q[support] = rng.dirichlet(alpha * prior[support])
  return np.nan_to_num(q)


def _class_counts(rng: np.random.Generator, size: int, q: np.ndarray,
                  room: np.ndarray) -> np.ndarray:
  """Multinomial(size, q) class counts, redrawing what exhausted classes lack."""
  counts = np.zeros_like(room)
  while counts.sum() < size:
    left = room - counts
    weights = np.where(left > 0, q, 0.0)
    if weights.sum() <= 0:
      weights = (left > 0).astype(np.float64)
    drawn = rng.multinomial(size - counts.sum(), weights / weights.sum())
    counts += np.minimum(drawn, left)
  return counts


def dirichlet_prior(labels: np.ndarray, num_clients: int, *, alpha: float,
                    seed: int, client_sizes: Optional[Sequence[int]] = None,
                    prior: Optional[Sequence[float]] = None,
                    num_classes: Optional[int] = None) -> Partition:
  """Label skew of Hsu et al. 2019 (arXiv 1909.06335), with fixed client sizes.

  Client k's class distribution is q_k ~ Dir(alpha * p), where p is the prior
  class distribution (by default the class frequencies of `labels`). The
  client then draws `client_sizes[k]` examples without replacement from the
  class pools, with class counts ~ Multinomial(client_sizes[k], q_k).
  alpha -> inf approaches IID; alpha -> 0 gives one class per client.

  Class exhaustion: clients are filled in order 0, 1, ... When a class pool
  runs out, the examples a client would have drawn from it are redrawn from
  its classes that still have examples, in proportion to q_k (renormalised
  over them, as TFF's CIFAR-100 split does); if q_k puts no mass on any class
  left, they are drawn uniformly over what is left. So every client gets its
  full size, but with small alpha the last clients can be less skewed than
  their q_k. `label_histograms` reports the realised counts.

  Args:
    labels: One integer label per example.
    num_clients: How many clients to create.
    alpha: Dirichlet concentration (scaled by the prior).
    seed: Seed of the generator.
    client_sizes: Examples per client; defaults to an equal share,
      `len(labels) // num_clients` (leftover examples go unused).
    prior: Class weights p; defaults to the class frequencies of `labels`.
    num_classes: The number of classes; defaults to the largest label + 1.

  Raises:
    ValueError: If `alpha` is not positive, the labels are out of range, or
      the sizes or prior are malformed.
  """
  labels = np.asarray(labels)
  _check_num_clients(num_clients, len(labels))
  _check_positive('alpha', alpha)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  labels = check_labels(labels, num_classes)
  p = _class_prior(labels, num_classes, prior)
  sizes = _fixed_sizes(len(labels), num_clients, client_sizes)
  rng = np.random.default_rng(seed)
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
  used = np.zeros(num_classes, dtype=np.int64)
  room = np.array([len(pool) for pool in pools], dtype=np.int64)
  partition = []
  for size in sizes:
    counts = _class_counts(rng, size, _client_distribution(rng, alpha, p), room - used)
    partition.append(np.sort(np.concatenate(
        [pools[c][used[c]:used[c] + counts[c]] for c in range(num_classes)])))
    used += counts
  return partition


def shards(labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2,
           seed: int) -> Partition:
  """Pathological non-IID split of McMahan et al. 2017 (arXiv 1602.05629).

  Sorts the examples by label, cuts that order into
  `num_clients * shards_per_client` shards of equal size (sizes differ by at
  most one when they do not divide evenly) and deals every client
  `shards_per_client` shards at random. MNIST's 60,000 examples over 100
  clients with 2 shards each gives 200 shards of 300, most clients seeing two
  digits. Within a label, the order is a seeded shuffle.

  Args:
    labels: One label per example.
    num_clients: How many clients to create.
    shards_per_client: Shards each client gets (k).
    seed: Seed of the generator.

  Raises:
    ValueError: If there are more shards than examples, or a count is not
      positive.
  """
  labels = np.asarray(labels)
  _check_positive('num_clients', num_clients)
  _check_positive('shards_per_client', shards_per_client)
  num_shards = num_clients * shards_per_client
  if num_shards > len(labels):
    raise ValueError(
        f'num_clients * shards_per_client = {num_shards} shards is more than the '
        f'{len(labels)} examples; lower num_clients or shards_per_client.')
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(len(labels))
  by_label = shuffled[np.argsort(labels[shuffled], kind='stable')]
  pieces = np.array_split(by_label, num_shards)
  dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
  return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
  shares = weights / weights.sum() * total
  sizes = np.floor(shares).astype(np.int64)
  order = np.argsort(-(shares - sizes), kind='stable')
  sizes[order[:total - sizes.sum()]] += 1
  return sizes


def skewed_sizes(num_examples: int, num_clients: int, *, seed: int,
                 distribution: str = 'lognormal', sigma: float = 1.0,
                 exponent: float = 1.5, min_size: int = 1) -> np.ndarray:
  """Client sizes summing to `num_examples`, each at least `min_size`.

  Every client gets `min_size` examples; the rest are shared out in
  proportion to weights drawn per client, `exp(N(0, sigma))` for
  'lognormal' or Pareto `(1 + Lomax(exponent))` for 'power_law', rounded by
  largest remainder.

  Raises:
    ValueError: If the distribution is unknown, a parameter is not positive,
      or `num_clients * min_size` exceeds `num_examples`.
  """
  _check_num_clients(num_clients, num_examples)
  if min_size < 0 or num_clients * min_size > num_examples:
    raise ValueError(
        f'min_size must be in [0, {num_examples // num_clients}] so that '
        f'{num_clients} clients fit in {num_examples} examples, got {min_size}.')
  rng = np.random.default_rng(seed)
  if distribution == 'lognormal':
    _check_positive('sigma', sigma)
    weights = rng.lognormal(0.0, sigma, num_clients)
  elif distribution == 'power_law':
    _check_positive('exponent', exponent)
    weights = rng.pareto(exponent, num_clients) + 1.0
  else:
    raise ValueError(
        f"distribution must be 'lognormal' or 'power_law', got {distribution!r}.")
  return min_size + _largest_remainder(num_examples - num_clients * min_size, weights)


def quantity_skew(num_examples: int, num_clients: int, *, seed: int,
                  distribution: str = 'lognormal', sigma: float = 1.0,
                  exponent: float = 1.5, min_size: int = 1) -> Partition:
  """Quantity skew: skewed client sizes, labels IID.

  Sizes come from `skewed_sizes` (lognormal, as in FedProx's synthetic data,
  or power law, as in FedProx's MNIST split: Li et al., MLSys 2020; the
  quantity-skew setting of NIID-Bench, arXiv 2102.02079); the examples are
  shuffled and dealt out in those sizes, using every example.

  Args:
    num_examples: How many examples there are.
    num_clients: How many clients to create.
    seed: Seed of the generator.
    distribution: 'lognormal' or 'power_law'.
    sigma: Standard deviation of the log weights ('lognormal').
    exponent: Pareto shape; smaller is more skewed ('power_law').
    min_size: The fewest examples any client gets.

  Raises:
    ValueError: As `skewed_sizes`.
  """
  sizes = skewed_sizes(num_examples, num_clients, seed=seed, distribution=distribution,
                       sigma=sigma, exponent=exponent, min_size=min_size)
  return iid(num_examples, num_clients, seed=seed, sizes=sizes)
