"""Distributed DP (fedtff.privacy.ddp): the Skellam accountant against
independent computations, TFF's own parameters, the noise it adds, a run from a
config, and the refusals."""

import math
import os

import dp_accounting
import mpmath
import numpy as np
import pytest

import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import distributed_dp
import tensorflow_privacy as tfp

import fedtff
from fedtff.runner import outputs
from fedtff.privacy import ddp
from fedtff.privacy import ledger as ledger_lib
from tests import test_privacy_config

MODEL_DIM = 4810  # The digits MLP (64 inputs, 64 hidden, 10 classes): 64*64+64+64*10+10.


def paper_rdp(alpha, d2, d1, mu):
  """Agarwal, Kairouz, Liu 2021 (arXiv 2110.04995), Theorem 3.5 in mpmath, `mu` the variance."""
  alpha, d2, d1, mu = (mpmath.mpf(x) for x in (alpha, d2, d1, mu))
  return alpha * d2**2 / (2 * mu) + min(((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * mu**2),
                                        3 * d1 / (2 * mu))


def rdp_to_epsilon(orders, rdp, delta):
  """Canonne, Kamath, Steinke 2020 (arXiv 2004.00010), Proposition 12, in NumPy."""
  orders, rdp = np.asarray(orders, float), np.asarray(rdp, float)
  eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
  return float(np.min(eps))


def tff_bounds(noise_multiplier, clients_per_round, clip, bits, dim):
  """(l2 bound, l1 bound, local stddev) in TFF's own DistributedDpSumFactory state."""
  factory = distributed_dp.DistributedDpSumFactory(
      noise_multiplier=noise_multiplier, expected_clients_per_round=clients_per_round,
      bits=bits, l2_clip=clip, mechanism='distributed_skellam', rotation_type='hd')
  state = factory.create(tff.TensorType(np.float32, (dim,))).initialize()
  query = state[0]['inner_agg']['inner_agg_process'].query_state
  return float(query.l2_norm_bound), int(query.l1_norm_bound), float(query.local_stddev)


def independent_epsilon(noise_multiplier, clients_per_round, clip, bits, dim, rounds, delta):
  """Replace-one: sensitivities 2*L2 and 2*L1 of TFF's bounds, noise variance m*local**2."""
  l2, l1, local = tff_bounds(noise_multiplier, clients_per_round, clip, bits, dim)
  orders = list(range(2, 65)) + [80, 96, 128, 160, 192, 256, 384, 512, 768, 1024]
  rdp = [rounds * float(paper_rdp(a, 2 * l2, 2 * l1, clients_per_round * local**2))
         for a in orders]
  return rdp_to_epsilon(orders, rdp, delta)


@pytest.mark.parametrize('alpha, d2, d1, mu', [
    (2, 1.0, 1.0, 0.5), (7, 3.0, 9.0, 40.0), (64, 2e5, 3e7, 4e10), (1024, 10.0, 30.0, 1e4)])
def test_skellam_rdp_is_the_papers_bound(alpha, d2, d1, mu):
  assert ddp.skellam_rdp(alpha, d2, d1, mu) == pytest.approx(float(paper_rdp(alpha, d2, d1, mu)),
                                                             rel=1e-12)


@pytest.mark.parametrize('shift, mu', [(1, 2.0), (1, 10.0), (3, 10.0), (2, 50.0)])
@pytest.mark.parametrize('alpha', [2, 5, 12])
def test_skellam_rdp_bounds_the_exact_renyi_divergence_in_one_dimension(shift, mu, alpha):
  # D_alpha(Sk + shift || Sk) for Sk = Poisson(mu/2) - Poisson(mu/2), whose pmf is
  # exp(-mu) I_|k|(mu), summed in mpmath far into both tails.
  pmf = lambda k: mpmath.exp(-mu) * mpmath.besseli(abs(k), mu)
  span = int(40 + 12 * mu)
  total = mpmath.fsum(pmf(k - shift)**alpha * pmf(k)**(1 - alpha)
                      for k in range(-span, span + shift + 1))
  exact = float(mpmath.log(total) / (alpha - 1))
  bound = ddp.skellam_rdp(alpha, shift, shift, mu)
  assert exact <= bound
  assert bound < 3 * exact + 0.5  # Not vacuous.


@pytest.mark.parametrize('shift', [(1, 2, 1, 3), (2, -2, 0, 1, 1), (4, 0, -1)])
@pytest.mark.parametrize('alpha', [2, 8])
def test_skellam_rdp_bounds_the_exact_renyi_divergence_of_an_integer_vector_shift(shift, alpha):
  # Independent coordinates: the divergence is the sum of the 1-D divergences.
  mu = 20.0
  pmf = lambda k: mpmath.exp(-mu) * mpmath.besseli(abs(k), mu)
  exact = 0.0
  for v in shift:
    total = mpmath.fsum(pmf(k - v)**alpha * pmf(k)**(1 - alpha) for k in range(-300, 301))
    exact += float(mpmath.log(total) / (alpha - 1))
  l2, l1 = float(np.linalg.norm(shift)), float(np.abs(shift).sum())
  assert exact <= ddp.skellam_rdp(alpha, l2, l1, mu)


@pytest.mark.parametrize('alpha', [2, 10, 64])
def test_skellam_rdp_tends_to_dp_accountings_gaussian_rdp(alpha):
  sigma, d2 = 1e4, 2e3
  accountant = dp_accounting.rdp.RdpAccountant(orders=[alpha])
  accountant.compose(dp_accounting.GaussianDpEvent(sigma / d2))
  skellam = ddp.skellam_rdp(alpha, d2, d2 * 1e3, sigma**2)
  assert skellam == pytest.approx(accountant._rdp[0], rel=2e-3)  # pylint: disable=protected-access
  assert skellam >= accountant._rdp[0]  # pylint: disable=protected-access


@pytest.mark.parametrize('z, m, clip, bits, dim', [
    (1.0, 10, 1.0, 20, MODEL_DIM), (3.0, 5, 0.5, 16, 1000), (0.5, 20, 2.0, 12, 300)])
def test_parameters_are_tffs_distributed_dp_parameters(z, m, clip, bits, dim):
  params = ddp.skellam_parameters(z, m, clip, bits, dim)
  l2, l1, local = tff_bounds(z, m, clip, bits, dim)
  assert params.l2_bound == pytest.approx(l2, rel=1e-6) and params.l2_bound >= l2
  assert params.l1_bound == pytest.approx(l1, rel=1e-6)
  assert params.local_stddev == pytest.approx(local, rel=1e-6)
  assert params.variance == pytest.approx(m * params.local_stddev**2, rel=1e-12)


def test_epsilon_is_an_independent_composition_of_the_papers_bound():
  delta = 2e-4
  for rounds in (1, 30, 100):
    assert ddp.epsilon(10.0, 10, clip=1.0, dim=MODEL_DIM, rounds=rounds, delta=delta) == (
        pytest.approx(independent_epsilon(10.0, 10, 1.0, 20, MODEL_DIM, rounds, delta),
                      rel=1e-5))
  assert ddp.epsilon(0.0, 10, clip=1.0, dim=MODEL_DIM, rounds=3, delta=delta) == math.inf


def test_noise_multiplier_for_epsilon_is_the_smallest_within_tolerance(monkeypatch):
  target, options = 8.0, dict(clip=1.0, dim=MODEL_DIM, rounds=100, delta=2e-4)
  calls, epsilon = [], ddp.epsilon
  monkeypatch.setattr(ddp, 'epsilon', lambda z, *args, **kwargs: calls.append(z) or epsilon(
      z, *args, **kwargs))
  ddp.noise_multiplier_for_epsilon.cache_clear()
  z = ddp.noise_multiplier_for_epsilon(target, 10, **options)
  assert len(calls) <= 8, calls  # Doubling, then bisection, took 18.
  assert epsilon(z, 10, **options) <= target < epsilon(z - 1e-3, 10, **options)
  independent = lambda z: independent_epsilon(z, 10, 1.0, 20, MODEL_DIM, 100, 2e-4)
  assert independent(z) <= target * (1 + 1e-5) and independent(z - 1e-3) > target


def test_without_amplification_ddp_spends_more_than_dp_fedavg_at_the_same_z():
  dp_fedavg = fedtff.privacy.epsilon(5.0, 10, 50, 100, 2e-4)
  skellam = ddp.epsilon(5.0, 10, clip=1.0, dim=MODEL_DIM, rounds=100, delta=2e-4)
  assert skellam > dp_fedavg


def test_a_ledger_of_two_skellam_segments_composes_their_rdp():
  ledger = ledger_lib.PrivacyLedger()
  mechanism = lambda z: ledger_lib.RoundMechanism(z, 10, 50, 1.0, mechanism='ddp_skellam',
                                                  bits=20, dim=MODEL_DIM)
  for round_num in range(1, 8):
    ledger.record(round_num, mechanism(4.0 if round_num <= 3 else 6.0))
  l2a, l1a, la = tff_bounds(4.0, 10, 1.0, 20, MODEL_DIM)
  l2b, l1b, lb = tff_bounds(6.0, 10, 1.0, 20, MODEL_DIM)
  orders = list(ddp.ORDERS)
  rdp = [3 * float(paper_rdp(a, 2 * l2a, 2 * l1a, 10 * la**2))
         + 4 * float(paper_rdp(a, 2 * l2b, 2 * l1b, 10 * lb**2)) for a in orders]
  assert ledger.epsilon(1e-4) == pytest.approx(rdp_to_epsilon(orders, rdp, 1e-4), rel=1e-5)
  assert ledger_lib.PrivacyLedger.from_json(ledger.to_json()).epsilon(1e-4) == ledger.epsilon(1e-4)


def test_noise_shares_are_independent_across_clients_and_of_the_stated_size():
  # Five clients send zeros; identical shares would make every sum a multiple of 5.
  process = tff.aggregators.DifferentiallyPrivateFactory(
      query=ddp.OsSeededSkellamSumQuery(10**6, 10**4, 10.0),
      record_aggregation_factory=tff.aggregators.SumFactory()).create(
          tff.TensorType(np.int32, (4000,)))
  total = np.asarray(process.next(process.initialize(), [np.zeros(4000, np.int32)] * 5).result)
  assert np.mean(total % 5 == 0) < 0.3
  assert total.std() == pytest.approx(10.0 * math.sqrt(5), rel=0.05)


def test_the_aggregated_mean_differs_from_the_clipped_mean_by_the_stated_noise():
  z, m, clip, dim = 2.0, 4, 1.0, 1024
  process = ddp.ddp_aggregator(z, m, clip=clip, dim=dim, bits=20).create(
      tff.TensorType(np.float32, (dim,)))
  rng = np.random.default_rng(0)
  updates = [rng.normal(size=dim).astype(np.float32) for _ in range(m)]
  clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in updates]
  result = np.asarray(process.next(process.initialize(), updates).result)
  error = result - np.mean(clipped, axis=0)
  assert error.std() == pytest.approx(z * clip / m, rel=0.1)  # Central noise z*C on the sum.
  assert abs(error.mean()) < 4 * z * clip / m / math.sqrt(dim)
  noiseless = ddp.ddp_aggregator(0.0, m, clip=clip, dim=dim, bits=20).create(
      tff.TensorType(np.float32, (dim,)))
  exact = np.asarray(noiseless.next(noiseless.initialize(), updates).result)
  np.testing.assert_allclose(exact, np.mean(clipped, axis=0), atol=1e-4)


def test_an_update_of_another_size_than_accounted_is_refused():
  with pytest.raises(ValueError, match=r'^The distributed Skellam sum was accounted for 100 '
                     r'coordinates, but the update has 99\.$'):
    ddp.ddp_aggregator(1.0, 4, clip=1.0, dim=100).create(tff.TensorType(np.float32, (99,)))


def ddp_config(**privacy):
  config = test_privacy_config.dp_config(mechanism='ddp_skellam', **privacy)
  config.total_rounds = 2
  return config


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ddp'))
  return workdir, fedtff.run_experiment(ddp_config(), workdir)


def test_a_run_reports_the_independent_composition_of_its_ledger(ddp_run):
  workdir, summary = ddp_run
  privacy = summary['privacy']
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  # 20 training clients, 5 per round, z = 1.5, clip 1.0, 20 bits, delta 0.01/20.
  expected = [independent_epsilon(1.5, 5, 1.0, 20, MODEL_DIM, r, 0.01 / 20) for r in (1, 2)]
  assert [r['privacy/epsilon'] for r in rows] == pytest.approx(expected, rel=1e-5)
  assert privacy['epsilon'] == pytest.approx(expected[-1], rel=1e-5)
  assert (privacy['mechanism'], privacy['ddp_bits'], privacy['dim']) == (
      'ddp_skellam', 20, MODEL_DIM)
  assert 'no amplification' in privacy['sampling']
  with open(os.path.join(workdir, 'privacy_ledger.json')) as f:
    (segment,) = ledger_lib.PrivacyLedger.from_json(f.read()).segments
  assert (segment.first_round, segment.last_round) == (1, 2)
  assert segment.mechanism == ledger_lib.RoundMechanism(
      1.5, 5, 20, 1.0, mechanism='ddp_skellam', bits=20, dim=MODEL_DIM)
  assert all(np.isfinite(r['eval/accuracy']) for r in rows)
  assert not any(c.startswith('train/') for c in rows[0])


def test_a_target_epsilon_run_picks_z_from_the_skellam_accountant():
  config = ddp_config(target_epsilon=20.0)
  config.aggregator.noise_multiplier = None
  task = fedtff.tasks.build_task(config)
  z = fedtff.runner.experiment.noise_multiplier(config, task)
  assert z == ddp.noise_multiplier_for_epsilon(20.0, 5, clip=1.0, dim=MODEL_DIM, rounds=2,
                                               delta=0.01 / 20)
  assert independent_epsilon(z, 5, 1.0, 20, MODEL_DIM, 2, 0.01 / 20) <= 20.0 * (1 + 1e-5)


@pytest.mark.parametrize('change, message', [
    (dict(sampling='poisson'), "privacy.mechanism='ddp_skellam' needs privacy.sampling='fixed': "
     'the noise shares add up to the accounted noise only with exactly clients_per_round clients '
     "(got sampling='poisson')."),
    (dict(sampling='cyclic'), "privacy.mechanism='ddp_skellam' needs privacy.sampling='fixed'"),
    (dict(accountant='pld'), "privacy.mechanism='ddp_skellam' is accounted with "
     "privacy.accountant='rdp' (Agarwal et al.'s Skellam RDP bound)."),
    (dict(clip_norm=None), "privacy.mechanism='ddp_skellam' needs a fixed aggregator.clip_norm: "
     "TFF's adaptive clip (auto_l2_clip) is not accounted."),
    (dict(zeroing=True), "privacy.mechanism='ddp_skellam' refuses aggregator.zeroing and "
     "aggregator.zeroing_norm: TFF's adaptive zeroing estimates its threshold without noise."),
    (dict(ddp_bits=23), 'Config key privacy.ddp_bits must be an integer from 1 to 22, got 23.'),
    (dict(ddp_bits=2), 'Config key privacy.ddp_bits: bits=2 is too small for 5 clients per round'),
    (dict(mechanism='dp_fedavg', ddp_bits=16), "Config key privacy.ddp_bits needs "
     "aggregator.kind='dp' with privacy.mechanism='ddp_skellam', got kind='dp', "
     "mechanism='dp_fedavg'."),
    (dict(weighted=True), "aggregator.kind='dp' needs algorithm.weighted=False"),
    (dict(mechanism='ddp_dgauss'), "privacy.mechanism is 'ddp_dgauss'; expected one of: "
     'dp_fedavg, dp_ftrl, ddp_skellam'),
], ids=['poisson', 'cyclic', 'pld', 'adaptive_clip', 'zeroing', 'bits_range',
        'bits_small', 'bits_elsewhere', 'weighted', 'dgauss'])
def test_options_that_do_not_fit_are_refused_with_one_line(change, message):
  config = ddp_config()
  for key, value in change.items():
    group = {'clip_norm': 'aggregator', 'zeroing': 'aggregator', 'weighted': 'algorithm',
             'engine': None}.get(key, 'privacy')
    target = config if group is None else config[group]
    target[key] = value
  with pytest.raises(ValueError) as raised:
    fedtff.runner.config.validate(config)
    fedtff.runner.experiment.noise_multiplier(config, fedtff.tasks.build_task(config))
  assert message in str(raised.value) and '\n' not in str(raised.value)


def test_a_ledger_mixing_skellam_and_dp_fedavg_rounds_is_refused():
  ledger = ledger_lib.PrivacyLedger()
  ledger.record(1, ledger_lib.RoundMechanism(4.0, 10, 50, 1.0))
  ledger.record(2, ledger_lib.RoundMechanism(4.0, 10, 50, 1.0, mechanism='ddp_skellam', bits=20,
                                             dim=MODEL_DIM))
  with pytest.raises(ledger_lib.LedgerError, match='or only distributed Skellam rounds, compose'):
    ledger.epsilon(1e-4)


def clock_seeded_noise_search(query):
  """Noises 50 zeros with `query` and searches the microsecond clock seeds of the call
  for TF Privacy's draw (`stateless_poisson` seeded with `tf.timestamp() * 10**6`)."""
  import time  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  query.add_noise_to_sample(3.0, tf.zeros(50, tf.int32))  # Warm up, so the call below is short.
  before = time.time()
  noise = query.add_noise_to_sample(3.0, tf.zeros(50, tf.int32)).numpy()
  after = time.time()
  for seed in range(int(before * 1e6) - 2, int(after * 1e6) + 3):
    draws = tf.random.stateless_poisson([50, 2], seed=[seed, 0], lam=[4.5, 4.5], dtype=tf.int64)
    if np.array_equal(draws[:, 0] - draws[:, 1], noise):
      return seed
  return None


def test_tf_privacys_clock_seeded_noise_is_recovered_from_the_time_and_fedtffs_is_not():
  assert clock_seeded_noise_search(tfp.DistributedSkellamSumQuery(10**4, 10**3, 3.0)) is not None
  assert clock_seeded_noise_search(ddp.OsSeededSkellamSumQuery(10**4, 10**3, 3.0)) is None
