"""Client sampling and the round loop."""

import numpy as np
import pytest

import fedtff
from fedtff.runner import training
from tests import conftest


def test_sample_clients_is_seeded_per_round_and_without_replacement():
  ids = [str(i) for i in range(20)]
  first = fedtff.sample_clients(ids, 5, round_num=3, seed=7)
  assert first == fedtff.sample_clients(ids, 5, round_num=3, seed=7)
  assert len(set(first)) == 5 and set(first) <= set(ids)
  others = [fedtff.sample_clients(ids, 5, round_num=r, seed=7) for r in range(4, 10)]
  assert any(o != first for o in others)
  assert first != fedtff.sample_clients(ids, 5, round_num=3, seed=8)


def test_sample_clients_is_uniform():
  ids = [str(i) for i in range(10)]
  counts = np.zeros(10)
  for round_num in range(2000):
    for client in fedtff.sample_clients(ids, 3, round_num=round_num, seed=0):
      counts[int(client)] += 1
  np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)


def test_sample_clients_rejects_more_clients_than_exist():
  with pytest.raises(ValueError, match=r'clients_per_round must be in \[1, 3\]'):
    fedtff.sample_clients(['a', 'b', 'c'], 4, round_num=1, seed=0)


def test_poisson_sampling_includes_each_client_independently_with_probability_q():
  ids = [str(i) for i in range(10)]
  cohorts = [fedtff.sample_clients(ids, 3, round_num=r, seed=0, sampling='poisson')
             for r in range(1, 4001)]
  assert cohorts[0] == fedtff.sample_clients(ids, 3, round_num=1, seed=0, sampling='poisson')
  joined = np.array([[str(i) in set(c) for i in range(10)] for c in cohorts])
  # Per-client rate q = 0.3 (binomial sd 0.0072 over 4000 rounds: 5 sd), and
  # cohort sizes Binomial(10, 0.3): mean 3, variance 2.1, P(empty) = 0.7**10.
  np.testing.assert_allclose(joined.mean(axis=0), 0.3, atol=0.036)
  sizes = joined.sum(axis=1)
  assert sizes.mean() == pytest.approx(3.0, abs=0.12)
  assert sizes.var() == pytest.approx(2.1, rel=0.1)
  assert (sizes == 0).mean() == pytest.approx(0.7**10, abs=0.008)
  # Independence of two clients: P(both) = q**2.
  assert (joined[:, 0] & joined[:, 1]).mean() == pytest.approx(0.09, abs=0.023)
  assert all(c == sorted(c, key=int) for c in cohorts)  # In client_ids' order.


def test_poisson_draws_are_those_of_the_documented_seeding():
  ids = [str(i) for i in range(6)]
  for round_num in range(1, 30):
    joins = np.random.default_rng([5, round_num]).random(6) < 1 / 6
    expected = [i for i, join in zip(ids, joins) if join]
    assert fedtff.sample_clients(ids, 1, round_num=round_num, seed=5, sampling='poisson') == expected


def test_cyclic_sampling_visits_disjoint_cohorts_in_turn():
  ids = [str(i) for i in range(23)]
  cohorts = [fedtff.sample_clients(ids, 5, round_num=r, seed=3, sampling='cyclic')
             for r in range(1, 13)]
  epoch = cohorts[:4]  # K = 23 // 5 = 4 cohorts of 5; 3 clients never join.
  assert all(len(c) == 5 for c in cohorts)
  assert len(set().union(*map(set, epoch))) == 20
  assert cohorts[4:8] == epoch and cohorts[8:12] == epoch
  assert epoch != [fedtff.sample_clients(ids, 5, round_num=r, seed=4, sampling='cyclic')
                   for r in range(1, 5)]


def test_sample_clients_rejects_an_unknown_sampling():
  with pytest.raises(ValueError, match="sampling must be one of .* got 'shuffle'"):
    fedtff.sample_clients(['a', 'b'], 1, round_num=1, seed=0, sampling='shuffle')


def test_scalar_metrics_flattens_with_prefix():
  flat = training.scalar_metrics({'loss': np.float32(0.5), 'sub': {'a': 1}, 'vec': [1, 2]}, 'train')
  assert flat == {'train/loss': 0.5, 'train/sub/a': 1.0}


def test_run_training_records_every_round_and_evaluates_on_schedule(tiny_arrays):
  features, labels = tiny_arrays
  client_data = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(90), 6))
  datasets = {i: client_data.create_tf_dataset_for_client(i).batch(5) for i in client_data.client_ids}
  process = fedtff.build_fed_avg(
      lambda: fedtff.models.logistic_regression((8,), 3), next(iter(datasets.values())))
  rows, selected = [], []

  def select(round_num):
    ids = fedtff.sample_clients(list(datasets), 2, round_num=round_num, seed=0)
    selected.append(ids)
    return [datasets[i] for i in ids]

  evaluate = lambda state, round_num: {'eval/round_seen': float(round_num)}
  training.run_training(process, select, total_rounds=5, evaluation_fn=evaluate,
                        rounds_per_eval=2, metrics_writers=[rows.append])
  assert [r['round'] for r in rows] == [1, 2, 3, 4, 5]
  assert [r.get('eval/round_seen') for r in rows] == [None, 2.0, None, 4.0, 5.0]
  assert all(r['train/num_examples'] == 30.0 for r in rows)
  assert all(r['round_time_s'] > 0 for r in rows)
  assert len(selected) == 5


def test_metric_names_come_from_the_type_signature(tiny_arrays):
  spec = fedtff.data.from_arrays(*tiny_arrays, [[0]]).create_tf_dataset_for_client('0').batch(2)
  process = fedtff.build_fed_avg(lambda: fedtff.models.logistic_regression((8,), 3), spec)
  assert training.metric_names(process, training.train_metrics) == [
      'train/accuracy', 'train/loss', 'train/num_examples', 'train/num_batches']
