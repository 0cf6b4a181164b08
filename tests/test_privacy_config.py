"""DP-FedAvg from configs: epsilon per round, the summary, refused claims."""

import os

import pytest

import fedtff
from fedtff import outputs
from fedtff.privacy import accounting


def dp_config(**privacy):
  config = fedtff.config.base_config()
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
  with pytest.raises(fedtff.config.ConfigError, match=message):
    fedtff.config.validate(config)


def test_delta_too_large_for_the_population_is_refused(tmp_path):
  with pytest.raises(ValueError, match='delta'):
    fedtff.run_experiment(dp_config(delta=0.2), str(tmp_path))
