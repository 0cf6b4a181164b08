"""DP-FTRL's accounting (fedtff.privacy.ftrl) against independent computations."""

import itertools
import math

import dp_accounting
import numpy as np
import pytest
import tensorflow_federated as tff

import fedtff
from fedtff import privacy
from fedtff.algorithms import tff_model
from fedtff.privacy import ftrl
from tests import conftest


def brute_force_sensitivity_square_sum(steps, max_participation, min_separation):
  """Max over participation patterns of sum over complete dyadic tree nodes of
  (leaves of the pattern under the node)**2: Kairouz et al. 2021, Appendix D."""
  nodes = [set(range(k * 2**h, (k + 1) * 2**h))
           for h in range(int(math.log2(steps)) + 1) for k in range(steps // 2**h)]
  best = 0
  for count in range(1, max_participation + 1):
    for leaves in itertools.combinations(range(steps), count):
      if all(b - a - 1 >= min_separation for a, b in zip(leaves, leaves[1:])):
        best = max(best, sum(len(node & set(leaves))**2 for node in nodes))
  return best


@pytest.mark.parametrize('clients_per_round, num_clients, rounds', [
    (2, 7, 10), (5, 20, 16), (3, 9, 13), (4, 40, 12)])
def test_rdp_is_the_gaussian_rdp_of_the_worst_participation_pattern(
    clients_per_round, num_clients, rounds):
  cohorts = num_clients // clients_per_round
  square_sum = brute_force_sensitivity_square_sum(
      rounds, math.ceil(rounds / cohorts), cohorts - 1)
  orders = np.array(dp_accounting.rdp.RdpAccountant().orders)
  np.testing.assert_allclose(ftrl.rdp(1.7, clients_per_round, num_clients, rounds),
                             orders * square_sum / (2 * 1.7**2), rtol=1e-12)


@pytest.mark.parametrize('rounds', [1, 3, 7, 8])
def test_single_participation_is_dp_accountings_single_epoch_tree_event(rounds):
  # 80 clients, 10 per round: 8 cohorts, so up to 8 rounds nobody joins twice.
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
  accountant.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(3.0, rounds))
  assert ftrl.epsilon(3.0, 10, 80, rounds, 1e-5) == pytest.approx(
      accountant.get_epsilon(1e-5), rel=1e-12)


def test_participation_of_the_cyclic_schedule():
  assert ftrl.participation(10, 50, 100) == {
      'cohorts': 5, 'max_participation': 20, 'min_separation': 4}
  assert ftrl.participation(10, 59, 11) == {
      'cohorts': 5, 'max_participation': 3, 'min_separation': 4}


@pytest.mark.parametrize('target', [1.0, 8.0])
def test_noise_multiplier_for_epsilon_is_the_smallest_within_tolerance(target, monkeypatch):
  calls, epsilon = [], ftrl.epsilon
  monkeypatch.setattr(ftrl, 'epsilon', lambda z, *args: calls.append(z) or epsilon(z, *args))
  ftrl.noise_multiplier_for_epsilon.cache_clear()
  z = ftrl.noise_multiplier_for_epsilon(target, 10, 50, 100)
  assert len(calls) <= 8, calls  # Doubling, then bisection, took 18 (target 8) and 24.
  assert epsilon(z, 10, 50, 100) <= target < epsilon(z - 1e-3, 10, 50, 100)


def test_tracker_and_zero_noise():
  tracker = ftrl.FtrlPrivacyTracker(2.0, 10, 50)
  assert tracker.epsilon(0) == 0.0
  assert tracker.metrics(7) == {'privacy/epsilon': ftrl.epsilon(2.0, 10, 50, 7)}
  assert ftrl.epsilon(0.0, 10, 50, 3) == math.inf


def test_noiseless_dp_ftrl_is_server_sgd_on_the_clipped_mean_each_round():
  # Without noise the tree's residual is the round's clipped sum, so DP-FTRL
  # with server SGD takes the same steps as DP-FedAvg with zero noise.
  features, labels = conftest.tiny_classification_arrays(num_features=8)
  client_data = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(90), 3))
  datasets = [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]
  keras_model = lambda: fedtff.models.mlp((8,), 3, hidden_units=(6,))
  trained = []
  for aggregator in (ftrl.ftrl_aggregator(0.0, 3, 0.05, keras_model),
                     privacy.dp_aggregator(0.0, 3, clip=0.05)):
    process = tff.learning.algorithms.build_unweighted_fed_avg(
        tff_model.tff_model_fn(keras_model, datasets[0]), fedtff.build_optimizer('sgd', 0.1),
        fedtff.build_optimizer('sgd', 1.0), model_aggregator=aggregator)
    state = process.set_model_weights(process.initialize(),
                                      tff_model.initial_weights(keras_model, 0))
    for _ in range(3):
      state = process.next(state, datasets).state
    trained.append(process.get_model_weights(state).trainable)
  initial = tff_model.initial_weights(keras_model, 0).trainable
  assert max(np.abs(a - b).max() for a, b in zip(trained[0], initial)) > 1e-3
  for a, b in zip(*trained):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_the_tree_noise_seed_comes_from_the_os_not_the_clock():
  # TF Privacy seeds an unseeded tree with [microseconds now, nanosecond
  # residue]; fedtff's builder passes a 63-bit secret instead.
  import time  # pylint: disable=g-import-not-at-top
  keras_model = lambda: fedtff.models.mlp((8,), 3, hidden_units=(6,))
  seeds = []
  for _ in range(2):
    factory = ftrl.ftrl_aggregator(1.0, 3, 0.05, keras_model)
    query = factory._query._numerator  # pylint: disable=protected-access
    state = query.initial_global_state()
    seeds.append(np.asarray(state.tree_state.value_generator_state.seeds))
  now_us = time.time() * 1e6
  assert not np.array_equal(seeds[0], seeds[1])
  for seed in seeds:
    assert abs(float(seed[0]) - now_us) > 1e12, f'seed {seed} is near the clock ({now_us:.0f})'
