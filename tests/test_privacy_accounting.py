"""DP-FedAvg accounting against dp_accounting, TF Privacy and a published figure."""

import math

import dp_accounting
import pytest
from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib

from fedtff import privacy
from fedtff.privacy import accounting
from fedtff.research import bench_tools


@pytest.mark.parametrize('noise_multiplier, clients_per_round, num_clients, rounds, delta', [
    (1.0, 10, 1000, 100, 1e-5),
    (2.5, 50, 500, 300, None),
], ids=['z1_m10_n1000', 'z2.5_m50_n500_default_delta'])
def test_epsilon_is_dp_accountings_for_sampling_without_replacement(
    noise_multiplier, clients_per_round, num_clients, rounds, delta):
  # Built by hand: replace-one sensitivity of a sum clipped to C is 2C, so the
  # Gaussian's multiplier relative to it is z / 2.
  event = dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
      num_clients, clients_per_round, dp_accounting.GaussianDpEvent(noise_multiplier / 2)), rounds)
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  expected = accountant.compose(event).get_epsilon(delta or 0.01 / num_clients)
  assert privacy.epsilon(noise_multiplier, clients_per_round, num_clients, rounds,
                         delta) == expected


def test_full_participation_is_the_gaussian_mechanism_with_sensitivity_twice_the_clip():
  replace_one = privacy.epsilon(1.2, 40, 40, 25, 1e-6)
  gaussian = dp_accounting.rdp.RdpAccountant().compose(
      dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.6), 25))
  assert replace_one == pytest.approx(gaussian.get_epsilon(1e-6), rel=1e-12)


@pytest.mark.parametrize('noise_multiplier, batch, population, steps, delta', [
    (1.3, 150, 60000, 6000, 1e-5),
    (1.0, 100, 10000, 1000, 1e-5),
], ids=['tf_privacy_mnist_setting', 'q0.01_1000_rounds'])
def test_poisson_epsilon_agrees_with_tf_privacy_within_one_percent(
    noise_multiplier, batch, population, steps, delta):
  # Apples to apples: Poisson sampling with q = batch / population, add-or-remove
  # adjacency, sensitivity C, `steps` compositions; TF Privacy's orders differ.
  tf_privacy, _ = compute_dp_sgd_privacy_lib.compute_dp_sgd_privacy(
      population, batch, noise_multiplier, steps * batch / population, delta)
  ours = privacy.epsilon(noise_multiplier, batch, population, steps, delta,
                         sampling=accounting.POISSON)
  assert ours == pytest.approx(tf_privacy, rel=0.01)


def test_poisson_event_reproduces_abadi_et_al_2016():
  """Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Sec. 3.1.

  q = 0.01, sigma = 4, delta = 1e-5, 100 epochs (10,000 steps): the moments
  accountant gives epsilon ~ 1.26 (integer moments up to 32, tail bound
  epsilon = min (alpha(lambda) + log(1/delta)) / lambda).
  """
  event = accounting.dp_event(4.0, 600, 60000, 10000, sampling=accounting.POISSON)
  orders = list(range(2, 34))
  rdp = dp_accounting.rdp.RdpAccountant(orders).compose(event).rdp
  moments = {order - 1: (order - 1) * value for order, value in zip(orders, rdp)}
  published = min((moment + math.log(1e5)) / lam for lam, moment in moments.items())
  assert published == pytest.approx(1.26, rel=0.01)
  # dp_accounting's conversion to (epsilon, delta) is tighter than that bound.
  assert privacy.epsilon(4.0, 600, 60000, 10000, 1e-5, sampling=accounting.POISSON) < 1.26


def test_noise_multiplier_for_epsilon_is_the_smallest_within_tolerance():
  noise_multiplier = privacy.noise_multiplier_for_epsilon(5.0, 10, 1000, 50, 1e-5)
  assert privacy.epsilon(noise_multiplier, 10, 1000, 50, 1e-5) <= 5.0
  smaller = noise_multiplier - accounting.DEFAULT_TOLERANCE
  assert privacy.epsilon(smaller, 10, 1000, 50, 1e-5) > 5.0


def test_tracker_reports_the_epsilon_of_the_rounds_so_far():
  tracker = privacy.PrivacyTracker(1.0, 10, 1000)
  assert tracker.epsilon(0) == 0.0
  for round_num in (1, 7):
    assert tracker.epsilon(round_num) == privacy.epsilon(1.0, 10, 1000, round_num)
  assert tracker.metrics(7) == {'privacy/epsilon': tracker.epsilon(7)}
  assert tracker.epsilon(8) > tracker.epsilon(7)


def test_without_noise_epsilon_is_infinite():
  assert privacy.epsilon(0.0, 10, 100, 5) == math.inf
  assert privacy.PrivacyTracker(0.0, 10, 100).epsilon(3) == math.inf


VALID = dict(noise_multiplier=1.0, clients_per_round=10, num_clients=1000, weighted=False)


@pytest.mark.parametrize('change, message', [
    (dict(weighted=True), 'needs unweighted aggregation'),
    (dict(accountant='pld'), "accountant='pld' needs sampling='poisson'"),
    (dict(accountant='moments'), "accountant must be one of"),
    (dict(clients_per_round=1001), 'clients_per_round=1001 exceeds num_clients=1000'),
    (dict(noise_multiplier=0.0, target_epsilon=8.0, rounds=10),
     'noise_multiplier is 0, so the updates get no noise'),
    (dict(noise_multiplier=-1.0), 'noise_multiplier must be nonnegative'),
    (dict(delta=0.01), 'is not below 1/num_clients'),
    (dict(target_epsilon=1.0, rounds=100), 'spend epsilon .* more than target_epsilon=1.0'),
    (dict(target_epsilon=1.0), 'needs the number of rounds'),
], ids=['weighted', 'pld_without_poisson', 'unknown_accountant', 'more_clients_than_exist', 'no_noise_finite_epsilon',
        'negative_noise', 'large_delta', 'over_budget', 'target_without_rounds'])
def test_check_guarantee_refuses_broken_claims(change, message):
  with pytest.raises(ValueError, match=message):
    privacy.check_guarantee(**(VALID | change))


def test_check_guarantee_returns_the_spent_epsilon():
  spent = privacy.check_guarantee(**VALID, rounds=20, target_epsilon=10.0)
  assert spent == privacy.epsilon(1.0, 10, 1000, 20)
  assert privacy.check_guarantee(**VALID) is None


@pytest.mark.parametrize('num_clients', [50, 1000, 10**6])
def test_default_delta_keeps_the_population_wide_failure_chance_at_one_percent(num_clients):
  # A mechanism publishing each client's data with probability delta meets
  # (0, delta)-DP; over N clients it leaks someone with probability ~N * delta.
  delta = accounting.default_delta(num_clients)
  assert num_clients * delta <= 0.01 + 1e-15
  assert privacy.PrivacyTracker(1.0, 10, num_clients).delta == delta
  expected = privacy.epsilon(1.0, 10, num_clients, 5, 0.01 / num_clients)
  assert privacy.epsilon(1.0, 10, num_clients, 5) == expected


def test_a_user_delta_of_one_over_n_is_still_refused():
  with pytest.raises(ValueError, match=r'delta=0.02 is not below 1/num_clients=0.02'):
    privacy.check_guarantee(noise_multiplier=1.0, clients_per_round=10, num_clients=50,
                            weighted=False, delta=0.02)


def test_check_guarantee_accepts_poisson_sampling_now_that_rounds_can_sample_that_way():
  spent = privacy.check_guarantee(**VALID, rounds=20, sampling='poisson', accountant='pld')
  direct = dp_accounting.pld.PLDAccountant().compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0)), 20))
  assert spent == pytest.approx(direct.get_epsilon(0.01 / 1000), rel=1e-9)  # The default delta.


@pytest.mark.parametrize('noise_multiplier, clients_per_round, num_clients, rounds, delta', [
    (1.0, 10, 50, 100, 1 / 50**1.1),  # The quickstart's Poisson setting.
    (0.8, 100, 10000, 100, 1e-6),
], ids=['quickstart', 'q0.01_z0.8'])
def test_pld_epsilon_is_an_upper_bound_close_to_the_true_value(
    noise_multiplier, clients_per_round, num_clients, rounds, delta):
  # Independent of fedtff and of dp_accounting's accountant classes: the PLD of
  # the subsampled Gaussian built directly, both pessimistic (an upper bound on
  # the true privacy loss) and optimistic (a lower bound).
  q = clients_per_round / num_clients
  bounds = {}
  for pessimistic in (True, False):
    pld = dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
        noise_multiplier, sampling_prob=q, value_discretization_interval=1e-4,
        pessimistic_estimate=pessimistic, use_connect_dots=pessimistic)
    bounds[pessimistic] = pld.self_compose(rounds).get_epsilon_for_delta(delta)
  ours = privacy.epsilon(noise_multiplier, clients_per_round, num_clients, rounds, delta,
                         sampling='poisson', accountant='pld')
  assert ours == pytest.approx(bounds[True], rel=1e-3)
  assert bounds[False] <= ours < 1.02 * bounds[False]
  # PLD is tighter than RDP on the same event.
  rdp = privacy.epsilon(noise_multiplier, clients_per_round, num_clients, rounds, delta,
                        sampling='poisson', accountant='rdp')
  assert ours < rdp


def test_pld_agrees_with_tf_privacys_pld_dp_sgd_statement():
  # TF Privacy 0.9.0's own DP-SGD accounting with its PLD accountant, for
  # Poisson sampling without microbatching (sensitivity C, add-or-remove).
  tf_privacy = compute_dp_sgd_privacy_lib._compute_dp_sgd_example_privacy(  # pylint: disable=protected-access
      num_epochs=2.0, noise_multiplier=1.0, example_delta=1e-5, used_microbatching=False,
      poisson_subsampling_probability=0.01,
      accountant_type=compute_dp_sgd_privacy_lib.AccountantType.PLD)
  ours = privacy.epsilon(1.0, 100, 10000, 200, 1e-5, sampling='poisson', accountant='pld')
  assert ours == pytest.approx(tf_privacy, rel=0.01)


def test_pld_tracker_matches_the_accountant_every_round_and_refuses_fixed_sampling():
  tracker = privacy.PrivacyTracker(1.0, 10, 50, sampling='poisson', accountant='pld')
  assert tracker.epsilon(0) == 0.0
  for round_num in (1, 5):
    assert tracker.epsilon(round_num) == pytest.approx(
        privacy.epsilon(1.0, 10, 50, round_num, sampling='poisson', accountant='pld'), rel=1e-9)
  with pytest.raises(ValueError, match="accountant='pld' needs sampling='poisson'"):
    privacy.PrivacyTracker(1.0, 10, 50, accountant='pld')


def _dp_accounting_epsilon(z, clients_per_round, num_clients, rounds, delta, *, sampling,
                           accountant):
  """dp_accounting's own accountant on the event built here (see the module docstring of
  fedtff.privacy.accounting), not by fedtff."""
  if sampling == 'poisson':
    one_round = dp_accounting.PoissonSampledDpEvent(clients_per_round / num_clients,
                                                    dp_accounting.GaussianDpEvent(z))
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  else:
    one_round = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round, dp_accounting.GaussianDpEvent(z / 2))
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
  if accountant == 'pld':
    account = dp_accounting.pld.PLDAccountant(relation, value_discretization_interval=1e-4)
  else:
    account = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  return account.compose(dp_accounting.SelfComposedDpEvent(one_round, rounds)).get_epsilon(delta)


CALIBRATION_CASES = {  # target epsilon, m, N, T, delta, sampling, accountant
    'rdp_fixed_eps1': (1.0, 10, 50, 100, 2e-4, 'without_replacement', 'rdp'),
    'rdp_fixed_eps8': (8.0, 10, 50, 100, 2e-4, 'without_replacement', 'rdp'),
    'rdp_poisson_eps8': (8.0, 10, 50, 100, 2e-4, 'poisson', 'rdp'),
    'pld_poisson_eps2': (2.0, 10, 50, 10, 2e-4, 'poisson', 'pld'),
}


@pytest.mark.parametrize('case', list(CALIBRATION_CASES))
def test_smallest_noise_multiplier_meets_its_contract_in_few_evaluations(case):
  target, m, n, rounds, delta, sampling, accountant = CALIBRATION_CASES[case]
  calls = []
  def spends(z):
    calls.append(z)
    return _dp_accounting_epsilon(z, m, n, rounds, delta, sampling=sampling,
                                  accountant=accountant)
  z = accounting.smallest_noise_multiplier(spends, target, rounds)
  # Bisection from [0, 1] or [1, 2] alone takes 10 evaluations to a bracket of 1e-3.
  assert len(calls) <= 8, calls
  assert spends(z) <= target < spends(z - accounting.DEFAULT_TOLERANCE)


def test_pld_calibration_verifies_a_coarse_guess_in_two_evaluations(monkeypatch):
  target, m, n, rounds, delta, sampling, accountant = CALIBRATION_CASES['pld_poisson_eps2']
  fine_calls = []
  def counted_epsilon(z, *args, **kwargs):
    fine_calls.append(z)
    return epsilon(z, *args, **kwargs)
  epsilon = accounting.epsilon
  monkeypatch.setattr(accounting, 'epsilon', counted_epsilon)
  accounting.noise_multiplier_for_epsilon.cache_clear()
  z = accounting.noise_multiplier_for_epsilon(target, m, n, rounds, delta, sampling=sampling,
                                             accountant=accountant)
  assert len(fine_calls) == 2, fine_calls  # guess + tolerance/2, guess - tolerance/2.
  # The check of z and the tracker reuse the calibration's one-round PLD.
  built = accounting.round_pld.cache_info().misses
  spent = accounting.check_guarantee(
      noise_multiplier=z, clients_per_round=m, num_clients=n, weighted=False, rounds=rounds,
      target_epsilon=target, delta=delta, sampling=sampling, accountant=accountant)
  tracker = privacy.PrivacyTracker(z, m, n, delta, sampling=sampling, accountant=accountant)
  assert tracker.epsilon(rounds) == pytest.approx(spent, rel=1e-9)  # Without the identity PLD.
  assert accounting.round_pld.cache_info().misses == built
  direct = lambda z: _dp_accounting_epsilon(z, m, n, rounds, delta, sampling=sampling,
                                            accountant=accountant)
  assert direct(z) <= target < direct(z - accounting.DEFAULT_TOLERANCE)


def _bisection_evaluations(spends, target, tolerance):
  """How many evaluations the search fedtff had before takes (doubling, then bisection)."""
  calls = []
  bench_tools.bisection_noise_multiplier(lambda z: calls.append(z) or spends(z), target,
                                         tolerance=tolerance)
  return len(calls)


@pytest.mark.parametrize('spends, exact, guess', [
    (lambda z: 10 / z**2, math.sqrt(10), None),
    (lambda z: 100 * math.exp(-z), math.log(100), None),
    (lambda z: 0.5 / z, 0.5, None),  # Below 1.
    (lambda z: 4e5 / z, 4e5, None),  # Far above 1.
    (lambda z: 2.0 if z < 3.3 else 0.5, 3.3, None),  # A step: no secant helps.
    (lambda z: 1.5 - math.tanh(z - 5), 5 + math.atanh(0.5), None),  # Flat, then steep, then flat.
    (lambda z: 10 / z**2, math.sqrt(10), 30.0),  # A bad guess, too high.
    (lambda z: 10 / z**2, math.sqrt(10), 0.01),  # A bad guess, too low.
    (lambda z: 10 / z**2, math.sqrt(10), math.sqrt(10) + 4e-4),  # A guess within tolerance/2.
], ids=['inverse_square', 'exponential', 'root_below_1', 'root_4e5', 'step', 'tanh',
        'guess_high', 'guess_low', 'guess_close'])
def test_smallest_noise_multiplier_on_known_curves(spends, exact, guess):
  calls = []
  counted = lambda z: calls.append(z) or spends(z)
  z = accounting.smallest_noise_multiplier(counted, 1.0, 1, tolerance=1e-3, guess=guess)
  assert exact <= z <= exact + 1e-3
  assert len(calls) <= _bisection_evaluations(spends, 1.0, 1e-3) + 2
  if guess == math.sqrt(10) + 4e-4:
    assert len(calls) == 2


def test_smallest_noise_multiplier_refuses_an_unreachable_target_and_a_bad_guess():
  with pytest.raises(ValueError, match='No noise multiplier up to 1.04858e[+]06 reaches epsilon '
                                       '1.0 in 7 rounds'):
    accounting.smallest_noise_multiplier(lambda z: 2.0, 1.0, 7)
  with pytest.raises(ValueError, match='guess must be a positive noise multiplier, got 0.0'):
    accounting.smallest_noise_multiplier(lambda z: 1 / z, 1.0, 7, guess=0.0)


def test_pld_epsilon_and_tracker_are_dp_accountings_pld_exactly():
  accountant = dp_accounting.pld.PLDAccountant(
      dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
  event = dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.5))
  expected = accountant.compose(dp_accounting.SelfComposedDpEvent(event, 3)).get_epsilon(2e-4)
  assert privacy.epsilon(1.5, 10, 50, 3, 2e-4, sampling='poisson', accountant='pld') == expected
  one_round = dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
      1.5, sampling_prob=0.2, value_discretization_interval=1e-4)
  tracker = privacy.PrivacyTracker(1.5, 10, 50, 2e-4, sampling='poisson', accountant='pld')
  assert tracker.epsilon(3) == one_round.self_compose(3).get_epsilon_for_delta(2e-4)
