"""FedProx with adaptive mu (Li et al. 2020, Appendix C.3.3; pfl-research's
AdaptMuOnMetricCallback): the rule, both engines, resume."""

import pytest

import fedtff
from fedtff.algorithms import fed_prox
from fedtff.runner import config as config_lib
from tests import test_compiled_runner

LOSSES = [5.0, 4.0, 3.0, 3.5, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.35]
# By hand, patience 2, step 0.1, from mu = 1: an improvement in a row counts;
# from the second on, each lowers mu; a loss that does not fall raises it.
HAND = [1.0, 0.9, 0.8, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.5]


def trajectory(rule, mu, losses):
  previous, improvements, after = float('inf'), 0, []
  for loss in losses:
    mu, improvements = rule.next(mu, loss, previous, improvements)
    previous = loss
    after.append(mu)
  return after


def test_the_rule_follows_the_hand_run():
  rule = fed_prox.AdaptiveStrength(step=0.1, patience=2)
  assert trajectory(rule, 1.0, LOSSES) == pytest.approx(HAND)
  assert trajectory(rule, 0.95, [1.0, 2.0]) == pytest.approx([0.95, 1.0])  # Capped at 1.
  assert trajectory(fed_prox.AdaptiveStrength(step=0.1, patience=1), 0.05,
                    [3.0, 2.0]) == pytest.approx([0.0, 0.0])  # Floored at 0.
  assert rule.replay(LOSSES[:4]) == (3.5, 0) and rule.replay(LOSSES[:7]) == (1.0, 3)


def adaptive_config(engine, total_rounds=4):
  config = test_compiled_runner.small_compiled_config(engine=engine, total_rounds=total_rounds)
  config.algorithm.name = 'fedprox'
  config.algorithm.proximal_strength = 0.5
  config.algorithm.adaptive_mu = True
  config.algorithm.adaptive_mu_patience = 1
  config.client.learning_rate = 0.5  # Large steps, so the loss also rises sometimes.
  return config


def test_both_engines_give_the_rows_of_the_rule(tmp_path):
  rows = {}
  for engine in ('tff', 'compiled'):
    fedtff.run_experiment(adaptive_config(engine), str(tmp_path / engine))
    rows[engine] = test_compiled_runner.rows_of(tmp_path / engine)
  test_compiled_runner.assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-5)
  used = [row['train/proximal_strength'] for row in rows['compiled']]
  expected = trajectory(fed_prox.AdaptiveStrength(step=0.1, patience=1), 0.5,
                        [row['train/loss'] for row in rows['compiled']])
  assert used == pytest.approx([0.5] + expected[:-1], abs=1e-6)
  assert len(set(round(u, 4) for u in used)) > 1  # mu moved.


def test_a_resumed_run_repeats_mu(tmp_path):
  fedtff.run_experiment(adaptive_config('compiled'), str(tmp_path / 'whole'))
  config = adaptive_config('compiled', total_rounds=2)
  fedtff.run_experiment(config, str(tmp_path / 'resumed'))
  fedtff.run_experiment(adaptive_config('compiled'), str(tmp_path / 'resumed'))
  test_compiled_runner.assert_same_rows(test_compiled_runner.rows_of(tmp_path / 'whole'),
                                        test_compiled_runner.rows_of(tmp_path / 'resumed'),
                                        tolerance=1e-6)


def test_adaptive_mu_is_refused_without_fedprox():
  config = test_compiled_runner.small_compiled_config()
  config.algorithm.adaptive_mu = True
  with pytest.raises(config_lib.ConfigError, match="algorithm.adaptive_mu adapts fedprox's mu, "
                     "but algorithm.name is 'fedavg'"):
    config_lib.validate(config)
