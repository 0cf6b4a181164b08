"""Seeded partitions of a centralized labelled dataset across clients.

Every partitioner returns one array of example indices per client (sorted)
and is deterministic for a given seed. `label_histograms` reports the class
counts of every client; `check_labels` checks labels against a class count.

Partitioners, the papers they follow and the Flower Datasets partitioner
(`flwr_datasets.partitioner`) each corresponds to; docs/data.md lists where
the semantics differ:

* `iid`: a uniform shuffle dealt out equally (Flower's IidPartitioner) or in
  given `sizes` (Flower's SizePartitioner).
* `dirichlet_per_class`: per class, its split over clients ~ Dir(alpha); client
  sizes vary (NIID-Bench: Li et al. 2022, Federated Learning on Non-IID Data
  Silos: An Experimental Study, arXiv 2102.02079; Yurochkin et al. 2019,
  arXiv 1905.12022). Flower's DirichletPartitioner, with its `self_balancing`.
* `dirichlet_prior`: per client, its class distribution ~ Dir(alpha * p) with
  fixed client sizes (Hsu et al. 2019, Measuring the Effects of Non-Identical
  Data Distribution for Federated Visual Classification, arXiv 1909.06335).
* `inner_dirichlet`: `dirichlet_prior` with Flower's InnerDirichletPartitioner
  arguments: given client sizes, class mix ~ Dir(alpha) (Acar et al. 2021,
  FedDyn, arXiv 2111.04263).
* `pathological`: every client holds exactly k classes, each class split
  equally among its holders (NIID-Bench's #C = k label skew). Flower's
  PathologicalPartitioner.
* `shards`: sort by label, deal out shards (McMahan et al. 2017,
  Communication-Efficient Learning of Deep Networks from Decentralized Data,
  arXiv 1602.05629). Flower's ShardPartitioner.
* `id_to_size`, `linear`, `square`, `exponential`: sizes proportional to a
  function of the client id 1..M (Flower's IdToSizeFncPartitioner,
  LinearPartitioner, SquarePartitioner, ExponentialPartitioner).
* `natural_id`, `grouped_natural_id`: one client per id of a per-example id
  column, or per group of ids (Flower's NaturalIdPartitioner and
  GroupedNaturalIdPartitioner).
* `distribution`: each class split over clients by given shares (Flower's
  DistributionPartitioner; `flower_distribution_shares` converts its array;
  after Li et al. 2020, FedProx, arXiv 1812.06127).
* `continuous`: clients ordered by a real-valued property blended with noise
  (Flower's ContinuousPartitioner).
* `quantity_skew`: lognormal or power-law client sizes, IID labels (Li et al.
  2020, Federated Optimization in Heterogeneous Networks (FedProx), MLSys
  2020; NIID-Bench's quantity skew). Flower has no counterpart.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

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


def _client_alphas(alpha: Union[float, Sequence[float]], num_clients: int) -> np.ndarray:
  alphas = np.asarray(alpha, dtype=np.float64)
  if alphas.ndim == 0:
    alphas = np.full(num_clients, float(alphas))
  if alphas.shape != (num_clients,) or not np.all(alphas > 0):
    raise ValueError(
        f'alpha must be positive: one number or {num_clients} (one per client), '
        f'got {np.asarray(alpha).tolist()!r:.200}.')
  return alphas


def _balanced_shares(shares: np.ndarray, sizes: np.ndarray, average: float) -> np.ndarray:
  """Zeroes the shares of clients above the average size, then renormalises."""
  shares = np.where(sizes > average, 0.0, shares)
  if shares.sum() <= 0:
    shares = (sizes <= average).astype(np.float64)
  return shares / shares.sum()


def dirichlet_per_class(labels: np.ndarray, num_clients: int, *,
                        alpha: Union[float, Sequence[float]], seed: int,
                        min_examples: int = 1, max_attempts: int = 100,
                        self_balancing: bool = False) -> Partition:
  """Label skew of NIID-Bench (Li et al. 2022, arXiv 2102.02079).

  For every class, the share of its examples that each client receives is
  drawn from Dir(alpha). Client sizes therefore differ. Draws are repeated
  (with the same seeded generator) until every client has `min_examples`.
  Flower's DirichletPartitioner (`min_partition_size` is `min_examples`).

  Args:
    labels: One integer label per example.
    num_clients: How many clients to create.
    alpha: Dirichlet concentration, one number or one per client; small
      values give strong skew.
    seed: Seed of the generator.
    min_examples: The fewest examples any client may end with.
    max_attempts: How many draws to try before giving up.
    self_balancing: If True, as in the code of Yurochkin et al. 2019 (arXiv
      1905.12022) and Flower, a client that already holds more than
      `len(labels) / num_clients` examples gets none of the later classes.

  Raises:
    ValueError: If `alpha` is not positive, or no draw gives every client
      `min_examples` examples.
  """
  labels = np.asarray(labels)
  _check_num_clients(num_clients, len(labels))
  alphas = _client_alphas(alpha, num_clients)
  rng = np.random.default_rng(seed)
  average = len(labels) / num_clients
  for _ in range(max_attempts):
    parts = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for label in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == label))
      shares = rng.dirichlet(alphas)
      if self_balancing:
        shares = _balanced_shares(shares, sizes, average)
      cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
      for client, chunk in enumerate(np.split(members, cuts)):
        parts[client].append(chunk)
        sizes[client] += len(chunk)
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


def shards(labels: np.ndarray, num_clients: int, *, shards_per_client: Optional[int] = 2,
           seed: int, shard_size: Optional[int] = None,
           keep_incomplete_shard: bool = False) -> Partition:
  """Pathological non-IID split of McMahan et al. 2017 (arXiv 1602.05629).

  Sorts the examples by label (within a label, a seeded shuffle) and cuts that
  order into shards dealt out at random: Flower's ShardPartitioner.

  * `shard_size=None`: `num_clients * shards_per_client` shards of equal size
    (sizes differ by at most one), every example used, `shards_per_client`
    each. MNIST's 60,000 examples over 100 clients with 2 shards each gives
    200 shards of 300, most clients seeing two digits.
  * `shard_size` and `shards_per_client`: that many shards of that size each,
    drawn from the `len(labels) // shard_size` full shards; the rest unused.
  * `shard_size` with `shards_per_client=None`: every full shard (and the
    last, smaller one if `keep_incomplete_shard`) is dealt out, the first
    `num_shards % num_clients` clients getting one shard more.

  Args:
    labels: One label per example.
    num_clients: How many clients to create.
    shards_per_client: Shards each client gets (k), or None with `shard_size`.
    seed: Seed of the generator.
    shard_size: Examples per shard; None derives it as above.
    keep_incomplete_shard: With `shard_size` alone, also deal the last shard
      of fewer than `shard_size` examples.

  Raises:
    ValueError: If a count is not positive, or there are fewer shards (or
      examples) than the request needs.
  """
  labels = np.asarray(labels)
  _check_positive('num_clients', num_clients)
  if shards_per_client is None and shard_size is None:
    raise ValueError('shards_per_client must be a positive count when shard_size is None, '
                     'got None.')
  if shards_per_client is not None:
    _check_positive('shards_per_client', shards_per_client)
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(len(labels))
  by_label = shuffled[np.argsort(labels[shuffled], kind='stable')]
  if shard_size is None:
    pieces, counts = _equal_shards(by_label, num_clients, shards_per_client)
  else:
    pieces, counts = _sized_shards(by_label, num_clients, shards_per_client, shard_size,
                                   keep_incomplete_shard)
  dealt = np.split(rng.permutation(len(pieces))[:counts.sum()], np.cumsum(counts)[:-1])
  return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def _equal_shards(by_label: np.ndarray, num_clients: int, k: int):
  num_shards = num_clients * k
  if num_shards > len(by_label):
    raise ValueError(
        f'num_clients * shards_per_client = {num_shards} shards is more than the '
        f'{len(by_label)} examples; lower num_clients or shards_per_client.')
  return np.array_split(by_label, num_shards), np.full(num_clients, k)


def _sized_shards(by_label: np.ndarray, num_clients: int, k: Optional[int], shard_size: int,
                  keep_incomplete: bool):
  _check_positive('shard_size', shard_size)
  full = len(by_label) // shard_size
  usable = -(-len(by_label) // shard_size) if keep_incomplete and k is None else full
  pieces = [by_label[s * shard_size:(s + 1) * shard_size] for s in range(usable)]
  if k is None:
    counts = np.full(num_clients, usable // num_clients)
    counts[:usable % num_clients] += 1
  else:
    counts = np.full(num_clients, k)
  if counts.sum() > usable or counts.min() < 1:
    raise ValueError(
        f'shard_size={shard_size} gives {usable} shards of the {len(by_label)} examples, '
        f'fewer than the {max(counts.sum(), num_clients)} needed; lower shard_size, '
        'num_clients or shards_per_client.')
  return pieces, counts


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


def inner_dirichlet(labels: np.ndarray, client_sizes: Sequence[int], *,
                    alpha: Union[float, Sequence[float]], seed: int,
                    num_classes: Optional[int] = None) -> Partition:
  """Fixed client sizes, class mix ~ Dir(alpha): Flower's InnerDirichletPartitioner.

  The split of Acar et al. 2021 (FedDyn, arXiv 2111.04263) and of Hsu et al.
  2019 (arXiv 1909.06335): client k gets exactly `client_sizes[k]` examples,
  with class distribution q_k ~ Dir(alpha), alpha one number (symmetric) or
  one per class. It is `dirichlet_prior` with prior `alpha / sum(alpha)` and
  concentration `sum(alpha)`, so exhausted classes are handled as there.

  Args:
    labels: One integer label per example.
    client_sizes: Examples per client, each at least 1, summing to at most
      `len(labels)`.
    alpha: Dirichlet concentration, one number or one per class.
    seed: Seed of the generator.
    num_classes: The number of classes; defaults to the largest label + 1.

  Raises:
    ValueError: If `alpha` is not positive or has the wrong length, or the
      sizes are malformed.
  """
  labels = np.asarray(labels)
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if labels.size else 1
  alphas = np.asarray(alpha, dtype=np.float64)
  alphas = np.full(num_classes, float(alphas)) if alphas.ndim == 0 else alphas
  if alphas.shape != (num_classes,) or not np.all(alphas > 0):
    raise ValueError(
        f'alpha must be positive: one number or {num_classes} (one per class), '
        f'got {np.asarray(alpha).tolist()!r:.200}.')
  return dirichlet_prior(labels, len(client_sizes), alpha=float(alphas.sum()), seed=seed,
                         client_sizes=client_sizes, prior=alphas / alphas.sum(),
                         num_classes=num_classes)


CLASS_ASSIGNMENTS = ('random', 'first-deterministic', 'deterministic')


def _held_classes(rng: np.random.Generator, classes: np.ndarray, num_clients: int,
                  k: int, mode: str) -> List[np.ndarray]:
  """Which k classes each client holds (Flower's `class_assignment_mode`)."""
  if mode == 'deterministic':
    return [classes[(client + np.arange(k)) % len(classes)] for client in range(num_clients)]
  if mode == 'random':
    return [rng.choice(classes, size=k, replace=False) for _ in range(num_clients)]
  held = []
  for client in range(num_clients):
    first = classes[client % len(classes)]
    others = rng.choice(classes[classes != first], size=k - 1, replace=False)
    held.append(np.concatenate([[first], others]))
  return held


def pathological(labels: np.ndarray, num_clients: int, *, classes_per_client: int,
                 seed: int, class_assignment: str = 'random') -> Partition:
  """#C = k label skew of NIID-Bench (Li et al. 2022, arXiv 2102.02079).

  Every client holds exactly `classes_per_client` distinct classes; each
  class's examples are shuffled and split equally (sizes differ by at most
  one) among the clients holding it. Flower's PathologicalPartitioner.
  Classes no client holds are left out.

  Args:
    labels: One integer label per example.
    num_clients: How many clients to create.
    classes_per_client: k, the number of classes each client holds.
    seed: Seed of the generator.
    class_assignment: 'random': k classes drawn without replacement per
      client. 'first-deterministic' (NIID-Bench's code): client i's first
      class is class i mod C, the other k - 1 drawn from the rest.
      'deterministic': client i holds classes i, i + 1, ..., i + k - 1 mod C.

  Raises:
    ValueError: If an argument is out of range, or a class has fewer
      examples than clients holding it.
  """
  labels = np.asarray(labels)
  _check_num_clients(num_clients, len(labels))
  classes = np.unique(labels)
  if not 1 <= classes_per_client <= len(classes):
    raise ValueError(
        f'classes_per_client must be in [1, {len(classes)}] (the classes present), '
        f'got {classes_per_client}.')
  if class_assignment not in CLASS_ASSIGNMENTS:
    raise ValueError(f'class_assignment must be one of {", ".join(CLASS_ASSIGNMENTS)}, '
                     f'got {class_assignment!r}.')
  rng = np.random.default_rng(seed)
  held = _held_classes(rng, classes, num_clients, classes_per_client, class_assignment)
  parts = [[] for _ in range(num_clients)]
  for label in classes:
    owners = [client for client, h in enumerate(held) if label in h]
    members = rng.permutation(np.flatnonzero(labels == label))
    if len(owners) > len(members):
      raise ValueError(
          f'Class {label} has {len(members)} examples for the {len(owners)} clients '
          'holding it; lower num_clients or classes_per_client.')
    for client, chunk in zip(owners, np.array_split(members, max(len(owners), 1))):
      parts[client].append(chunk)
  return [np.sort(np.concatenate(p)) for p in parts]


def id_to_size(num_examples: int, num_clients: int,
               size_fn: Callable[[np.ndarray], np.ndarray], *, seed: int) -> Partition:
  """Sizes proportional to `size_fn(id)`, ids 1..M: Flower's IdToSizeFncPartitioner.

  Client k (id k + 1) gets `size_fn(k + 1) / sum size_fn` of the examples,
  rounded by largest remainder so that every example is used; the examples
  are a seeded shuffle dealt out in those sizes (`iid` with `sizes`).

  Args:
    num_examples: How many examples there are.
    num_clients: How many clients to create (M).
    size_fn: Maps the float ids `[1, ..., M]` to M non-negative weights.
    seed: Seed of the generator.

  Raises:
    ValueError: If the weights are not finite and non-negative with a
      positive sum, or a client would get no example.
  """
  _check_num_clients(num_clients, num_examples)
  weights = np.asarray(size_fn(np.arange(1, num_clients + 1, dtype=np.float64)),
                       dtype=np.float64)
  if (weights.shape != (num_clients,) or not np.all(np.isfinite(weights))
      or weights.min() < 0 or weights.sum() <= 0):
    raise ValueError(
        f'size_fn must map the ids 1..{num_clients} to {num_clients} finite non-negative '
        f'weights with a positive sum, got {weights.tolist()!r:.200}.')
  sizes = _largest_remainder(num_examples, weights)
  if sizes.min() < 1:
    raise ValueError(
        f'num_clients={num_clients} leaves client {int(np.argmin(sizes))} no example of '
        f'{num_examples} under these sizes; lower num_clients.')
  return iid(num_examples, num_clients, seed=seed, sizes=sizes)


def linear(num_examples: int, num_clients: int, *, seed: int) -> Partition:
  """Client with id i (1..M) gets i units: Flower's LinearPartitioner."""
  return id_to_size(num_examples, num_clients, lambda ids: ids, seed=seed)


def square(num_examples: int, num_clients: int, *, seed: int) -> Partition:
  """Client with id i (1..M) gets i^2 units: Flower's SquarePartitioner."""
  return id_to_size(num_examples, num_clients, np.square, seed=seed)


def exponential(num_examples: int, num_clients: int, *, seed: int) -> Partition:
  """Client with id i (1..M) gets e^i units: Flower's ExponentialPartitioner.

  The weights are computed as e^(i - M), the same proportions without
  overflow. Every client must get an example, so M is at most about
  log(num_examples) + 1.
  """
  return id_to_size(num_examples, num_clients, lambda ids: np.exp(ids - ids[-1]), seed=seed)


def _natural_ids(ids: np.ndarray) -> Partition:
  ids = np.asarray(ids)
  if ids.ndim != 1 or ids.size == 0:
    raise ValueError(f'ids must be a non-empty one-dimensional array (one id per example), '
                     f'got shape {ids.shape}.')
  _, inverse = np.unique(ids, return_inverse=True)
  order = np.argsort(inverse, kind='stable')
  return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def natural_id(ids: np.ndarray) -> Partition:
  """One client per distinct id: Flower's NaturalIdPartitioner.

  Client k holds the examples whose id is the k-th of `np.unique(ids)`
  (sorted, as Flower numbers them). Nothing is random, so there is no seed.

  Raises:
    ValueError: If `ids` is not a non-empty one-dimensional array.
  """
  return _natural_ids(ids)


GROUP_MODES = ('allow-smaller', 'allow-bigger', 'drop-remainder', 'strict')


def _id_groups(order: np.ndarray, group_size: int, mode: str) -> List[np.ndarray]:
  count, rest = divmod(len(order), group_size)
  if count == 0 and mode != 'allow-smaller':
    raise ValueError(f'group_size must be at most the {len(order)} ids in mode {mode!r}, '
                     f'got {group_size}.')
  if mode == 'strict' and rest:
    raise ValueError(f"group_size must divide the {len(order)} ids in mode 'strict', "
                     f'got {group_size} (remainder {rest}).')
  if mode == 'allow-bigger':
    return np.array_split(order, count)
  groups = [order[i * group_size:(i + 1) * group_size] for i in range(count)]
  if rest and mode == 'allow-smaller':
    groups.append(order[count * group_size:])
  return groups


def grouped_natural_id(ids: np.ndarray, group_size: int, *, mode: str = 'allow-smaller',
                       seed: Optional[int] = None) -> Partition:
  """One client per group of `group_size` ids: Flower's GroupedNaturalIdPartitioner.

  The distinct ids are taken in sorted order (`seed=None`) or in a seeded
  shuffle, and cut into consecutive groups. What happens to the `r` ids left
  over when `group_size` does not divide their number is `mode`:
  'allow-smaller' makes them a last, smaller group; 'allow-bigger' spreads
  them over the first `r` groups (one each, `np.array_split`, as Flower
  does); 'drop-remainder' leaves them (and their examples) out; 'strict'
  raises. Flower's spelling 'drop-reminder' is accepted too.

  Raises:
    ValueError: If `group_size` is not a positive integer, `mode` is unknown,
      or the mode cannot group the ids.
  """
  mode = 'drop-remainder' if mode == 'drop-reminder' else mode
  if mode not in GROUP_MODES:
    raise ValueError(f'mode must be one of {", ".join(GROUP_MODES)}, got {mode!r}.')
  if (isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer))
      or group_size < 1):
    raise ValueError(f'group_size must be a positive integer, got {group_size!r}.')
  members = _natural_ids(ids)
  order = (np.arange(len(members)) if seed is None
           else np.random.default_rng(seed).permutation(len(members)))
  return [np.sort(np.concatenate([members[i] for i in group]))
          for group in _id_groups(order, group_size, mode)]


def distribution(labels: np.ndarray, shares: np.ndarray, *, seed: int,
                 rescale: bool = True) -> Partition:
  """Each class split over clients by given shares: Flower's DistributionPartitioner.

  `shares[k, c]` is client k's share of class c. With `rescale`, each
  class's examples (a seeded shuffle) are split over the clients in
  proportion to its column, rounded by largest remainder, so every example
  of a class with a non-zero column is used and the per-client class counts
  are the given distribution up to rounding. Without it, `shares` are exact
  counts, each class's counts summing to at most its examples. Flower's
  `(classes, columns)` layout converts with `flower_distribution_shares`.

  Args:
    labels: One integer label per example, in `[0, shares.shape[1])`.
    shares: `[num_clients, num_classes]` non-negative weights (or counts).
    seed: Seed of the generator.
    rescale: Whether `shares` are proportions per class (True) or counts.

  Raises:
    ValueError: If `shares` is malformed, or counts exceed a class.
  """
  shares = np.asarray(shares, dtype=np.float64)
  if shares.ndim != 2 or 0 in shares.shape or not np.all(np.isfinite(shares)) or shares.min() < 0:
    raise ValueError('shares must be a [num_clients, num_classes] array of finite non-negative '
                     f'weights, got shape {shares.shape}.')
  labels = check_labels(labels, shares.shape[1])
  rng = np.random.default_rng(seed)
  parts = [[] for _ in range(len(shares))]
  for label in range(shares.shape[1]):
    members = rng.permutation(np.flatnonzero(labels == label))
    counts = _class_split(shares[:, label], len(members), label, rescale)
    for client, chunk in enumerate(np.split(members[:counts.sum()], np.cumsum(counts)[:-1])):
      parts[client].append(chunk)
  return [np.sort(np.concatenate(p)) for p in parts]


def _class_split(column: np.ndarray, available: int, label: int, rescale: bool) -> np.ndarray:
  if rescale:
    if column.sum() == 0:
      return np.zeros(len(column), dtype=np.int64)
    return _largest_remainder(available, column)
  counts = column.astype(np.int64)
  if np.any(counts != column) or counts.sum() > available:
    raise ValueError(
        f'shares of class {label} must be integer counts summing to at most its {available} '
        f'examples when rescale=False, got {column.tolist()!r:.200}.')
  return counts


def flower_distribution_shares(distribution_array: np.ndarray, num_clients: int,
                               classes_per_client: int) -> np.ndarray:
  """Turns Flower's DistributionPartitioner array into `distribution`'s shares.

  Flower's array has one row per class and `classes_per_client * num_clients
  / num_classes` columns; client i holds classes i, ..., i + k - 1 mod C, and
  the t-th client (by id) holding class c gets `distribution_array[c, t]`.

  Returns:
    A `[num_clients, num_classes]` array for `distribution`.

  Raises:
    ValueError: If the shapes do not fit that layout.
  """
  array = np.asarray(distribution_array, dtype=np.float64)
  num_classes = array.shape[0] if array.ndim == 2 else 0
  if not num_classes or num_clients % num_classes or not 1 <= classes_per_client <= num_classes:
    raise ValueError(
        'distribution_array must be [num_classes, columns] with num_clients a multiple of '
        f'num_classes and 1 <= classes_per_client <= num_classes, got shape {array.shape}, '
        f'num_clients {num_clients}, classes_per_client {classes_per_client}.')
  columns = classes_per_client * num_clients // num_classes
  if array.shape[1] != columns:
    raise ValueError(f'distribution_array must have {columns} columns '
                     f'(classes_per_client * num_clients / num_classes), got {array.shape[1]}.')
  shares = np.zeros((num_clients, num_classes))
  used = np.zeros(num_classes, dtype=np.int64)
  for client in range(num_clients):
    for label in (client + np.arange(classes_per_client)) % num_classes:
      shares[client, label] = array[label, used[label]]
      used[label] += 1
  return shares


def continuous(values: np.ndarray, num_clients: int, *, strictness: float,
               seed: int) -> Partition:
  """Clients ordered by a real-valued property: Flower's ContinuousPartitioner.

  Each example gets the score `strictness * z + (1 - strictness) * e`, z the
  standardized property and e ~ N(0, 1); the examples sorted by score are cut
  into `num_clients` consecutive, near-equal parts (client 0 the lowest).
  strictness 1 orders clients strictly by the property; 0 is IID.

  Args:
    values: One real value per example (the property).
    num_clients: How many clients to create.
    strictness: In [0, 1].
    seed: Seed of the generator (the noise).

  Raises:
    ValueError: If `values` are not finite, do not vary while strictness > 0,
      or strictness is outside [0, 1].
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or not np.all(np.isfinite(values)):
    raise ValueError(f'values must be a one-dimensional array of finite numbers, got shape '
                     f'{values.shape} with {int(np.sum(~np.isfinite(values)))} non-finite.')
  _check_num_clients(num_clients, len(values))
  if not 0 <= strictness <= 1:
    raise ValueError(f'strictness must be in [0, 1] (0 IID, 1 sorted by the property), '
                     f'got {strictness}.')
  spread = values.std()
  if strictness > 0 and spread == 0:
    raise ValueError('values must vary when strictness > 0 (their standard deviation is 0); '
                     'set strictness=0 for an IID split.')
  z = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
  noise = np.random.default_rng(seed).normal(size=len(values))
  order = np.argsort(strictness * z + (1 - strictness) * noise, kind='stable')
  return [np.sort(part) for part in np.array_split(order, num_clients)]
