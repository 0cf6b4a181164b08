"""Partitioners: Hsu et al.'s Dirichlet prior, McMahan's shards, quantity skew, label checks."""

import numpy as np
import pytest

from fedtff import data

LABELS = np.repeat(np.arange(10), 100)


def _as_lists(partition):
  return [a.tolist() for a in partition]


def _dominant_share(histograms):
  return (histograms.max(axis=1) / histograms.sum(axis=1)).mean()


def test_dirichlet_prior_has_fixed_sizes_and_is_seeded():
  partition = data.dirichlet_prior(LABELS, 20, alpha=0.1, seed=0)
  assert _as_lists(partition) == _as_lists(data.dirichlet_prior(LABELS, 20, alpha=0.1, seed=0))
  assert _as_lists(partition) != _as_lists(data.dirichlet_prior(LABELS, 20, alpha=0.1, seed=1))
  assert [len(a) for a in partition] == [50] * 20
  everything = np.concatenate(partition)
  assert len(np.unique(everything)) == 1000  # Without replacement: no example twice.
  histograms = data.label_histograms(LABELS, partition, num_classes=10)
  near_iid = data.label_histograms(LABELS, data.dirichlet_prior(LABELS, 20, alpha=1000, seed=0))
  assert _dominant_share(histograms) > 0.6 > 0.3 > _dominant_share(near_iid)


def test_dirichlet_prior_takes_sizes_and_a_prior():
  partition = data.dirichlet_prior(LABELS, 3, alpha=1.0, seed=0, client_sizes=[10, 200, 5],
                                   prior=[1] * 5 + [0] * 5)
  assert [len(a) for a in partition] == [10, 200, 5]
  assert data.label_histograms(LABELS, partition, 10)[:, 5:].sum() == 0


def test_dirichlet_prior_redraws_from_classes_left_when_one_runs_out():
  labels = np.array([0] * 5 + [1] * 95)
  partition = data.dirichlet_prior(labels, 10, alpha=100.0, seed=0, prior=[0.9, 0.1])
  histograms = data.label_histograms(labels, partition)
  assert histograms[:, 0].sum() == 5 and histograms.sum() == 100
  assert [len(a) for a in partition] == [10] * 10
  assert histograms[0, 0] == 5  # Client 0 wants ~90% class 0 and takes all five.


@pytest.mark.parametrize(
    'kwargs, message',
    [({'alpha': 0}, 'alpha must be positive'),
     ({'alpha': 1, 'client_sizes': [600, 600]}, 'summing to at most 1000'),
     ({'alpha': 1, 'prior': [1, 2]}, 'prior must be 10 non-negative weights'),
     ({'alpha': 1, 'num_classes': 5}, r'labels are outside \[0, 5\)')],
    ids=['alpha', 'sizes', 'prior', 'labels'])
def test_dirichlet_prior_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.dirichlet_prior(LABELS, 2, seed=0, **kwargs)


def test_shards_follow_mcmahan():
  labels = np.repeat(np.arange(10), 60)  # 600 examples: 20 shards of 30 over 10 clients.
  partition = data.shards(labels, 10, shards_per_client=2, seed=0)
  assert _as_lists(partition) == _as_lists(data.shards(labels, 10, shards_per_client=2, seed=0))
  assert [len(a) for a in partition] == [60] * 10
  assert sorted(np.concatenate(partition).tolist()) == list(range(600))
  histograms = data.label_histograms(labels, partition)
  assert ((histograms > 0).sum(axis=1) <= 2).all()
  assert set(np.unique(histograms)) <= {0, 30, 60}


def test_more_shards_than_examples_is_an_error():
  with pytest.raises(ValueError, match='= 12 shards is more than the 10 examples'):
    data.shards(np.zeros(10, int), 6, shards_per_client=2, seed=0)
  with pytest.raises(ValueError, match='shards_per_client must be positive'):
    data.shards(np.zeros(10, int), 2, shards_per_client=0, seed=0)


@pytest.mark.parametrize('distribution', ['lognormal', 'power_law'])
def test_quantity_skew_sizes_are_skewed_and_respect_the_minimum(distribution):
  partition = data.quantity_skew(1000, 20, seed=0, distribution=distribution, min_size=10)
  sizes = [len(a) for a in partition]
  assert min(sizes) >= 10 and sum(sizes) == 1000 and max(sizes) > 3 * min(sizes)
  assert sorted(np.concatenate(partition).tolist()) == list(range(1000))
  assert _as_lists(partition) == _as_lists(
      data.quantity_skew(1000, 20, seed=0, distribution=distribution, min_size=10))
  np.testing.assert_array_equal(
      sizes, data.skewed_sizes(1000, 20, seed=0, distribution=distribution, min_size=10))


@pytest.mark.parametrize(
    'kwargs, message',
    [({'min_size': 60}, r'min_size must be in \[0, 50\]'),
     ({'distribution': 'zipf'}, "distribution must be 'lognormal' or 'power_law'"),
     ({'sigma': 0}, 'sigma must be positive')],
    ids=['min_size', 'distribution', 'sigma'])
def test_quantity_skew_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.quantity_skew(1000, 20, seed=0, **kwargs)


def test_check_labels():
  np.testing.assert_array_equal(data.check_labels(np.array([0, 2, 1]), 3), [0, 2, 1])
  with pytest.raises(ValueError, match=r'2 labels are outside \[0, 3\), for example 3'):
    data.check_labels(np.array([0, 3, -1]), 3)
  with pytest.raises(ValueError, match='one-dimensional integer array'):
    data.check_labels(np.array([0.5, 1.0]), 3)
  with pytest.raises(ValueError, match=r'labels are outside \[0, 2\)'):
    data.label_histograms(np.array([0, 1, 2]), [np.array([0, 2])], num_classes=2)
