"""DP-FedAvg from configs: epsilon per round, the summary, refused claims."""

import math
import os

import dp_accounting
import numpy as np
import pytest
from tensorflow_privacy.privacy.analysis import tree_aggregation_accountant

import fedtff
from fedtff.runner import outputs
from fedtff.privacy import accounting


def dp_config(**privacy):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 24
  config.data.num_test_clients = 4
  config.clients_per_round = 5
  config.total_rounds = 3
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  config.privacy.update(privacy)
  if 'target_epsilon' not in privacy:
    config.aggregator.noise_multiplier = 1.5
  return config


def test_epsilon_is_logged_every_round_and_summarized(tmp_path):
  summary = fedtff.run_experiment(dp_config(), str(tmp_path))
  rows = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  expected = [accounting.epsilon(1.5, 5, 20, r) for r in (1, 2, 3)]
  assert [r['privacy/epsilon'] for r in rows] == pytest.approx(expected, rel=1e-9)
  assert summary['privacy']['epsilon'] == pytest.approx(expected[-1], rel=1e-9)
  assert summary['privacy']['delta'] == pytest.approx(0.01 / 20)
  assert summary['privacy']['num_clients'] == 20


def test_target_epsilon_chooses_the_noise_multiplier(tmp_path):
  summary = fedtff.run_experiment(dp_config(target_epsilon=8.0, delta=1e-3), str(tmp_path))
  privacy = summary['privacy']
  assert privacy['epsilon'] <= 8.0
  assert privacy['epsilon'] > 7.9
  assert privacy['noise_multiplier'] == pytest.approx(
      accounting.noise_multiplier_for_epsilon(8.0, 5, 20, 3, 1e-3))


@pytest.mark.parametrize(
    'change, message',
    [
        (lambda c: c.algorithm.update(dict(weighted=True)), 'needs algorithm.weighted=False'),
        (lambda c: c.privacy.update(dict(target_epsilon=2.0)),
         'exactly one of aggregator.noise_multiplier and privacy.target_epsilon'),
        (lambda c: c.aggregator.update(dict(kind='mean', noise_multiplier=None)),
         "need aggregator.kind='dp'"),
    ],
    ids=['weighted', 'noise_and_target', 'privacy_without_dp'])
def test_claims_that_would_not_hold_are_refused(change, message):
  config = dp_config(delta=1e-3)
  change(config)
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(config)


def test_delta_too_large_for_the_population_is_refused(tmp_path):
  with pytest.raises(ValueError, match='delta'):
    fedtff.run_experiment(dp_config(delta=0.2), str(tmp_path))


def test_poisson_rounds_sample_as_documented_run_empty_cohorts_and_report_pld_epsilon(tmp_path):
  # 6 training clients, q = 1/6: with seed 0 rounds 3 and 4 draw nobody.
  config = dp_config(sampling='poisson', accountant='pld')
  config.data.num_clients, config.data.num_test_clients = 8, 2
  config.clients_per_round, config.total_rounds = 1, 4
  config.privacy.publish_client_metrics = True  # To read the cohort sizes back.
  summary = fedtff.run_experiment(config, str(tmp_path))
  rows = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  cohort_sizes = [int((np.random.default_rng([0, r]).random(6) < 1 / 6).sum()) for r in range(1, 5)]
  assert cohort_sizes[2:] == [0, 0] and min(cohort_sizes[:2]) >= 1
  assert [r['train/num_examples'] == 0 for r in rows] == [s == 0 for s in cohort_sizes]
  delta = 0.01 / 6  # The default.
  expected = [dp_accounting.pld.PLDAccountant().compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(1 / 6, dp_accounting.GaussianDpEvent(1.5)), r)
  ).get_epsilon(delta) for r in range(1, 5)]
  assert [r['privacy/epsilon'] for r in rows] == pytest.approx(expected, rel=1e-9)
  assert summary['privacy']['accountant'] == 'pld'
  assert summary['privacy']['sampling'].startswith('Poisson')


def test_dp_ftrl_run_reports_the_single_tree_epsilon_of_its_cyclic_schedule(tmp_path):
  config = dp_config(mechanism='dp_ftrl', sampling='cyclic')
  config.total_rounds = 6  # 20 training clients, 5 per round: 4 cohorts, so 2 rounds repeat.
  summary = fedtff.run_experiment(config, str(tmp_path))
  rows = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  orders = dp_accounting.rdp.RdpAccountant().orders
  expected = [dp_accounting.rdp.compute_epsilon(orders, tree_aggregation_accountant.compute_rdp_single_tree(
      1.5, r, math.ceil(r / 4), 3, orders), 0.01 / 20)[0] for r in range(1, 7)]
  assert [r['privacy/epsilon'] for r in rows] == pytest.approx(expected, rel=1e-9)
  assert summary['privacy']['mechanism'] == 'dp_ftrl'
  assert all(np.isfinite(r['eval/accuracy']) for r in rows)


@pytest.mark.parametrize('privacy, engine, message', [
    (dict(accountant='pld'), 'tff', "privacy.accountant='pld' needs privacy.sampling='poisson'"),
    (dict(mechanism='dp_ftrl'), 'tff', "privacy.mechanism='dp_ftrl' goes with privacy.sampling='cyclic'"),
    (dict(sampling='cyclic'), 'tff', "privacy.mechanism='dp_ftrl' goes with privacy.sampling='cyclic'"),
    (dict(mechanism='dp_ftrl', sampling='cyclic', noise_seed=3), 'compiled', "privacy.noise_seed does not apply to privacy.mechanism='dp_ftrl'"),
    (dict(sampling='shuffle'), 'tff', "privacy.sampling is 'shuffle'; expected one of: fixed, poisson, cyclic"),
], ids=['pld_fixed', 'ftrl_fixed', 'cyclic_fedavg', 'ftrl_noise_seed', 'unknown_sampling'])
def test_privacy_options_that_do_not_fit_are_refused(privacy, engine, message):
  config = dp_config(**privacy)
  config.engine = engine
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(config)


def test_privacy_options_without_dp_are_refused():
  config = fedtff.runner.config.base_config()
  config.privacy.sampling = 'poisson'
  with pytest.raises(fedtff.runner.config.ConfigError, match="need aggregator.kind='dp'"):
    fedtff.runner.config.validate(config)
