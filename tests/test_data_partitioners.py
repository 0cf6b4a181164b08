"""Partitioners at parity with Flower Datasets: each one's defining property, seeding, coverage.

Pure NumPy: class counts (pathological, inner_dirichlet, distribution), sizes
(id_to_size and its linear, square and exponential cases), groups (natural_id,
grouped_natural_id) and order (continuous).
"""

import numpy as np
import pytest

from fedtff import data

LABELS = np.repeat(np.arange(10), 100)


def _as_lists(partition):
  return [a.tolist() for a in partition]


def _assert_disjoint_sorted(partition, num_examples, every_example=True):
  for part in partition:
    assert np.all(np.diff(part) > 0)
  joined = np.concatenate(partition)
  assert len(np.unique(joined)) == len(joined)
  assert joined.min() >= 0 and joined.max() < num_examples
  if every_example:
    assert len(joined) == num_examples


def _assert_seeded(partition_fn):
  assert _as_lists(partition_fn(0)) == _as_lists(partition_fn(0))
  assert _as_lists(partition_fn(0)) != _as_lists(partition_fn(1))


@pytest.mark.parametrize('mode', data.CLASS_ASSIGNMENTS)
@pytest.mark.parametrize('k', [1, 2, 3])
def test_pathological_gives_every_client_exactly_k_classes_split_equally(mode, k):
  partition = data.pathological(LABELS, 30, classes_per_client=k, seed=0, class_assignment=mode)
  histograms = data.label_histograms(LABELS, partition, num_classes=10)
  assert np.all((histograms > 0).sum(axis=1) == k)
  holders = (histograms > 0).sum(axis=0)
  for label in range(10):
    counts = histograms[:, label][histograms[:, label] > 0]
    assert counts.sum() == (100 if holders[label] else 0)
    assert counts.max() - counts.min() <= 1 if len(counts) else True
  _assert_disjoint_sorted(partition, len(LABELS), every_example=holders.min() > 0)
  _assert_seeded(lambda seed: data.pathological(LABELS, 30, classes_per_client=k, seed=seed,
                                                class_assignment='random'))


def test_pathological_assignments_follow_niid_bench_and_flower():
  # NIID-Bench's #C=k (first-deterministic): client i's first class is i mod 10.
  first = data.label_histograms(LABELS, data.pathological(
      LABELS, 20, classes_per_client=2, seed=3, class_assignment='first-deterministic'))
  assert all(first[i, i % 10] > 0 for i in range(20))
  # #C=1: each class split equally over its 2 holders, every example used.
  one = data.label_histograms(LABELS, data.pathological(
      LABELS, 20, classes_per_client=1, seed=0, class_assignment='first-deterministic'))
  np.testing.assert_array_equal(one.argmax(axis=1), np.arange(20) % 10)
  np.testing.assert_array_equal(one.max(axis=1), np.full(20, 50))
  deterministic = data.label_histograms(LABELS, data.pathological(
      LABELS, 12, classes_per_client=3, seed=0, class_assignment='deterministic'))
  for i in range(12):
    assert set(np.flatnonzero(deterministic[i])) == {i % 10, (i + 1) % 10, (i + 2) % 10}


@pytest.mark.parametrize(
    'kwargs, message',
    [(dict(classes_per_client=0), r'classes_per_client must be in \[1, 10\]'),
     (dict(classes_per_client=11), r'classes_per_client must be in \[1, 10\]'),
     (dict(classes_per_client=2, class_assignment='first'), 'class_assignment must be one of'),
     (dict(classes_per_client=10, num_clients=101), 'Class 0 has 100 examples for the 101')],
    ids=['zero', 'too_many', 'mode', 'class_too_small'])
def test_pathological_rejects_bad_input(kwargs, message):
  kwargs.setdefault('num_clients', 5)
  with pytest.raises(ValueError, match=message):
    data.pathological(LABELS, seed=0, **kwargs)


def test_inner_dirichlet_keeps_the_given_sizes_and_draws_the_class_mix():
  sizes = [50, 120, 7, 300, 1]
  partition = data.inner_dirichlet(LABELS, sizes, alpha=0.1, seed=0)
  assert [len(p) for p in partition] == sizes
  _assert_disjoint_sorted(partition, len(LABELS), every_example=False)
  _assert_seeded(lambda seed: data.inner_dirichlet(LABELS, sizes, alpha=0.1, seed=seed))
  # Dir(alpha) class mix: skewed for small alpha, near uniform for large.
  big = [90] * 10
  skewed = data.label_histograms(LABELS, data.inner_dirichlet(LABELS, big, alpha=0.05, seed=0))
  flat = data.label_histograms(LABELS, data.inner_dirichlet(LABELS, big, alpha=1e4, seed=0))
  assert (skewed.max(axis=1) / 90).mean() > 0.6
  assert (flat.max(axis=1) / 90).max() < 0.25
  # Per-class alpha: all mass on class 3 in expectation.
  alpha = np.full(10, 1e-3)
  alpha[3] = 1e3
  tilted = data.label_histograms(LABELS, data.inner_dirichlet(LABELS, [20], alpha=alpha, seed=0))
  assert tilted[0, 3] == 20


def test_inner_dirichlet_rejects_bad_input():
  with pytest.raises(ValueError, match=r'alpha must be positive: one number or 10 \(one per class'):
    data.inner_dirichlet(LABELS, [10, 10], alpha=[1.0, 2.0], seed=0)
  with pytest.raises(ValueError, match='client_sizes must be 2 positive counts'):
    data.inner_dirichlet(LABELS, [10, 2000], alpha=1.0, seed=0)


def test_dirichlet_per_class_self_balancing_caps_clients_at_the_average():
  labels = np.repeat(np.arange(10), 200)
  plain = data.dirichlet_per_class(labels, 10, alpha=0.3, seed=0, min_examples=0)
  balanced = data.dirichlet_per_class(labels, 10, alpha=0.3, seed=0, min_examples=0,
                                      self_balancing=True)
  _assert_disjoint_sorted(balanced, len(labels))
  # A client stops receiving classes once above the average of 200, so it can
  # overshoot by at most one class (200 examples).
  assert max(len(p) for p in balanced) <= 200 + 200
  assert np.std([len(p) for p in balanced]) < np.std([len(p) for p in plain])


def test_dirichlet_per_class_takes_one_alpha_per_client():
  alpha = [100.0] * 5 + [0.01] * 5
  partition = data.dirichlet_per_class(LABELS, 10, alpha=alpha, seed=0, min_examples=0)
  sizes = np.array([len(p) for p in partition])
  assert sizes[:5].sum() > 0.95 * len(LABELS)
  with pytest.raises(ValueError,
                     match=r'alpha must be positive: one number or 10 \(one per client'):
    data.dirichlet_per_class(LABELS, 10, alpha=[1.0] * 9, seed=0)


def _largest_remainder_ok(sizes, weights, total):
  exact = np.asarray(weights, float) / np.sum(weights) * total
  assert sizes.sum() == total
  assert np.all(np.abs(sizes - exact) < 1)
  # Largest remainder: the clients rounded up have the largest fractional parts.
  up = sizes > np.floor(exact)
  fractions = exact - np.floor(exact)
  if up.any() and (~up).any():
    assert fractions[up].min() >= fractions[~up].max()


@pytest.mark.parametrize(
    'name, weight_fn',
    [('linear', lambda i: i), ('square', lambda i: i ** 2), ('exponential', np.exp)],
    ids=['linear', 'square', 'exponential'])
def test_id_function_sizes_are_proportional_with_exact_totals(name, weight_fn):
  ids = np.arange(1, 7, dtype=float)
  partition = getattr(data, name)(1001, 6, seed=0)
  sizes = np.array([len(p) for p in partition])
  _largest_remainder_ok(sizes, weight_fn(ids), 1001)
  _assert_disjoint_sorted(partition, 1001)
  _assert_seeded(lambda seed: getattr(data, name)(1001, 6, seed=seed))


def test_linear_gives_client_i_exactly_i_units():
  assert [len(p) for p in data.linear(55, 10, seed=0)] == list(range(1, 11))
  assert [len(p) for p in data.square(30, 4, seed=0)] == [1, 4, 9, 16]


def test_id_to_size_takes_any_function_and_refuses_empty_clients():
  partition = data.id_to_size(100, 4, lambda ids: 5.0 - ids, seed=0)
  assert [len(p) for p in partition] == [40, 30, 20, 10]
  with pytest.raises(ValueError, match='leaves client 0 no example of 100'):
    data.exponential(100, 10, seed=0)
  with pytest.raises(ValueError, match='size_fn must map the ids 1..3 to 3 finite non-negative'):
    data.id_to_size(100, 3, lambda ids: ids - 2, seed=0)


def test_iid_with_sizes_is_the_size_partitioner():
  partition = data.iid(100, 3, seed=0, sizes=[10, 50, 40])
  assert [len(p) for p in partition] == [10, 50, 40]
  _assert_disjoint_sorted(partition, 100)


def test_natural_id_gives_one_client_per_id_in_sorted_order():
  ids = np.array(['bob', 'alice', 'bob', 'carol', 'alice', 'bob'])
  partition = data.natural_id(ids)
  assert _as_lists(partition) == [[1, 4], [0, 2, 5], [3]]
  with pytest.raises(ValueError, match='ids must be a non-empty one-dimensional array'):
    data.natural_id(np.zeros((2, 2)))


@pytest.mark.parametrize(
    'mode, group_ids',
    [('allow-smaller', [[0, 1, 2], [3, 4, 5], [6]]),
     ('allow-bigger', [[0, 1, 2, 3], [4, 5, 6]]),
     ('drop-remainder', [[0, 1, 2], [3, 4, 5]]),
     ('drop-reminder', [[0, 1, 2], [3, 4, 5]])],
    ids=['allow_smaller', 'allow_bigger', 'drop_remainder', 'flower_spelling'])
def test_grouped_natural_id_groups_ids_by_mode(mode, group_ids):
  ids = np.repeat(np.arange(7), [1, 2, 3, 1, 2, 3, 1])[::-1]
  partition = data.grouped_natural_id(ids, 3, mode=mode)
  assert [sorted(set(ids[p].tolist())) for p in partition] == group_ids
  members = data.natural_id(ids)
  for part, group in zip(partition, group_ids):
    assert part.tolist() == sorted(np.concatenate([members[i] for i in group]).tolist())


def test_grouped_natural_id_seeded_grouping_and_strict_mode():
  ids = np.arange(60) % 12
  shuffled = data.grouped_natural_id(ids, 4, seed=0, mode='strict')
  assert len(shuffled) == 3
  assert all(len(set(ids[p])) == 4 for p in shuffled)
  _assert_disjoint_sorted(shuffled, 60)
  _assert_seeded(lambda seed: data.grouped_natural_id(ids, 4, seed=seed))
  with pytest.raises(ValueError, match="group_size must divide the 12 ids in mode 'strict'"):
    data.grouped_natural_id(ids, 5, mode='strict')
  with pytest.raises(ValueError, match='group_size must be a positive integer'):
    data.grouped_natural_id(ids, 0)
  with pytest.raises(ValueError, match='mode must be one of'):
    data.grouped_natural_id(ids, 2, mode='loose')


def test_continuous_orders_clients_by_the_property_with_the_given_strictness():
  values = np.random.default_rng(123).uniform(0, 10, size=2000)  # not the noise stream
  strict = data.continuous(values, 10, strictness=1.0, seed=0)
  for lower, upper in zip(strict[:-1], strict[1:]):
    assert values[lower].max() <= values[upper].min()
  _assert_disjoint_sorted(strict, 2000)
  # strictness 0 ignores the property: the same split for any values.
  iid = data.continuous(values, 10, strictness=0.0, seed=0)
  assert _as_lists(iid) == _as_lists(data.continuous(values ** 3 + 5, 10, strictness=0.0, seed=0))
  means = {s: [values[p].mean() for p in data.continuous(values, 10, strictness=s, seed=0)]
           for s in (0.0, 0.3, 0.7, 1.0)}
  spread = {s: np.ptp(m) for s, m in means.items()}
  assert spread[0.0] < spread[0.3] < spread[0.7] < spread[1.0]
  assert np.all(np.diff(means[0.7]) > 0)
  _assert_seeded(lambda seed: data.continuous(values, 10, strictness=0.5, seed=seed))


@pytest.mark.parametrize(
    'values, kwargs, message',
    [(np.ones(10), dict(strictness=0.5), 'values must vary when strictness > 0'),
     (np.arange(10.0), dict(strictness=1.5), r'strictness must be in \[0, 1\]'),
     (np.array([1.0, np.nan]), dict(strictness=0.5), 'values must be a one-dimensional array')],
    ids=['constant', 'strictness', 'nan'])
def test_continuous_rejects_bad_input(values, kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.continuous(values, 2, seed=0, **kwargs)


def test_distribution_realises_the_given_class_distribution():
  labels = np.repeat(np.arange(3), [100, 60, 30])
  counts = np.array([[50, 0, 10], [25, 60, 0], [25, 0, 20]])
  exact = data.distribution(labels, counts, seed=0, rescale=False)
  np.testing.assert_array_equal(data.label_histograms(labels, exact, 3), counts)
  # Rescaled shares: every example used, each class split by largest remainder.
  shares = np.array([[1.0, 0.0, 1.0], [1.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
  rescaled = data.distribution(labels, shares, seed=0)
  histograms = data.label_histograms(labels, rescaled, 3)
  np.testing.assert_array_equal(histograms, [[34, 0, 8], [33, 60, 0], [33, 0, 22]])
  _assert_disjoint_sorted(rescaled, len(labels))
  _assert_seeded(lambda seed: data.distribution(labels, shares, seed=seed))
  with pytest.raises(ValueError, match='shares of class 0 must be integer counts'):
    data.distribution(labels, counts * 2, seed=0, rescale=False)
  with pytest.raises(ValueError, match=r'shares must be a \[num_clients, num_classes\]'):
    data.distribution(labels, -shares, seed=0)


def test_flower_distribution_array_assigns_classes_as_flower_documents():
  # Flower's docstring: 10 labels, 20 partitions, 2 per partition: class 0 goes
  # to partitions [0, 9, 10, 19], class 1 to [0, 1, 10, 11].
  array = np.arange(40, dtype=float).reshape(10, 4) + 1
  shares = data.flower_distribution_shares(array, 20, 2)
  assert np.flatnonzero(shares[:, 0]).tolist() == [0, 9, 10, 19]
  assert np.flatnonzero(shares[:, 1]).tolist() == [0, 1, 10, 11]
  assert shares[[0, 9, 10, 19], 0].tolist() == array[0].tolist()
  assert np.all((shares > 0).sum(axis=1) == 2)
  histograms = data.label_histograms(LABELS, data.distribution(LABELS, shares, seed=0), 10)
  assert np.all((histograms > 0).sum(axis=1) == 2)
  with pytest.raises(ValueError, match='must have 4 columns'):
    data.flower_distribution_shares(array[:, :3], 20, 2)


@pytest.mark.parametrize(
    'kwargs, sizes',
    [(dict(num_clients=10, shards_per_client=2, shard_size=1000), [2000] * 10),
     (dict(num_clients=9, shards_per_client=None, shard_size=1000), [7000] * 6 + [6000] * 3),
     # 61 shards (60 of 990, one of 600): one client gets 7. Flower's draw gave the 600 to a
     # 6-shard client; the other outcome is the 7-shard client holding it.
     (dict(num_clients=10, shards_per_client=None, shard_size=990, keep_incomplete_shard=True),
      ([5550] + [5940] * 8 + [6930], [5940] * 9 + [6540]))],
    ids=['size_and_count', 'size_only', 'keep_incomplete'])
def test_shards_with_a_shard_size_give_flowers_documented_mnist_sizes(kwargs, sizes):
  labels = np.repeat(np.arange(10), 6000)  # MNIST's 60,000 training examples.
  outcomes = sizes if isinstance(sizes, tuple) else (sizes,)
  sizes = outcomes[0]
  for seed in range(4):
    partition = data.shards(labels, seed=seed, **kwargs)
    assert sorted(len(p) for p in partition) in [sorted(o) for o in outcomes]
  _assert_disjoint_sorted(partition, len(labels), every_example=sum(sizes) == len(labels))
  # Shards are runs of the label-sorted order: 1,000 examples span at most 2 labels.
  if kwargs['shard_size'] == 1000:
    assert max(len(set(labels[p])) for p in partition) <= 2 * 7
  _assert_seeded(lambda seed: data.shards(labels, seed=seed, **kwargs))


def test_shards_refuse_too_few_sized_shards():
  with pytest.raises(ValueError, match='shard_size=400 gives 2 shards of the 1000 examples'):
    data.shards(LABELS, 3, shards_per_client=None, shard_size=400, seed=0)
  with pytest.raises(ValueError, match='shard_size must be positive'):
    data.shards(LABELS, 3, shard_size=0, seed=0)
