"""Systems heterogeneity (Li et al. 2020, Section 5.2): stragglers and dropouts,
seeded per (seed, round, client), the same on both engines."""

import zlib

import numpy as np
import pytest

import fedtff
from fedtff import data
from fedtff.data import heterogeneity
from fedtff.runner import config as config_lib
from tests import test_compiled_runner
from tests import test_data_rounds

COHORT = [f'client_{i}' for i in range(10)]


def numpy_plan(cohort, straggler_fraction, dropout_fraction, keep, *, seed, round_num, full):
  """The plan recomputed from the seed with NumPy alone, as docs/algorithms.md states it."""
  order = np.random.default_rng([seed, round_num, 0x5354]).permutation(len(cohort))
  num_dropped = int(np.floor(dropout_fraction * len(cohort) + 0.5))
  num_stragglers = int(np.floor(straggler_fraction * (len(cohort) - num_dropped) + 0.5))
  dropped = sorted(order[:num_dropped])
  stragglers = sorted(order[num_dropped:num_dropped + num_stragglers])
  steps = {}
  for i in stragglers:
    rng = np.random.default_rng([seed, round_num, zlib.crc32(cohort[i].encode()), 0x4b53])
    steps[cohort[i]] = 1 + int(rng.integers(full[cohort[i]]))
  reporting = [cohort[i] for i in range(len(cohort))
               if i not in dropped and (keep or i not in stragglers)]
  return reporting, [cohort[i] for i in stragglers], [cohort[i] for i in dropped], steps


@pytest.mark.parametrize('policy', ['drop', 'keep_partial'])
def test_the_plan_is_the_numpy_recomputation_from_the_seed(policy):
  full = {c: 3 + i for i, c in enumerate(COHORT)}
  het = heterogeneity.Heterogeneity(0.5, 0.2, policy)
  for round_num in (1, 2, 7):
    plan = heterogeneity.plan_round(COHORT, het, seed=4, round_num=round_num,
                                    full_batches_fn=full.__getitem__)
    reporting, stragglers, dropped, steps = numpy_plan(
        COHORT, 0.5, 0.2, policy == 'keep_partial', seed=4, round_num=round_num, full=full)
    assert (len(dropped), len(stragglers)) == (2, 4)
    assert plan.stragglers == stragglers and plan.dropped == dropped
    assert plan.max_batches == steps
    assert [data.rounds.split_round_client_id(t)[2] for t in plan.tagged_ids] == reporting
    cuts = {data.rounds.split_round_client_id(t)[2]: data.rounds.split_round_client_id(t)[1]
            for t in plan.tagged_ids}
    assert {c: k for c, k in cuts.items() if k is not None} == (
        steps if policy == 'keep_partial' else {})
    assert plan.metrics() == {'train/stragglers': 4.0, 'train/dropped': 2.0}


def test_straggler_steps_are_uniform_on_one_to_full():
  draws = [heterogeneity.straggler_batches(4, seed=0, round_num=r, client_id='a')
           for r in range(4000)]
  counts = np.bincount(draws, minlength=5)
  assert counts[0] == 0 and set(draws) == {1, 2, 3, 4}
  assert np.allclose(counts[1:] / 4000, 0.25, atol=0.03)


def test_a_stragglers_dataset_is_the_first_k_batches_of_its_round_dataset():
  client_data, _ = test_data_rounds._indexed_clients((23, 9))  # pylint: disable=protected-access
  full = list(client_data.serializable_dataset_fn(data.round_client_id(5, '0')))
  assert len(full) == 6 and heterogeneity.FullBatches(client_data)('0') == 6
  for k in (1, 4, 6):
    cut = list(client_data.serializable_dataset_fn(data.round_client_id(5, '0', max_batches=k)))
    assert len(cut) == k
    for got, want in zip(cut, full):
      np.testing.assert_array_equal(got['x'], want['x'])


def test_bad_heterogeneity_is_refused():
  with pytest.raises(ValueError, match=r'straggler_fraction must be in \[0, 1\], got 1.5'):
    heterogeneity.Heterogeneity(1.5)
  with pytest.raises(ValueError, match=r'max_batches must be a positive int or None, got 0'):
    data.round_client_id(1, 'a', max_batches=0)
  config = test_compiled_runner.small_compiled_config()
  config.heterogeneity.dropout_fraction = 1.0
  with pytest.raises(config_lib.ConfigError,
                     match=r'heterogeneity.dropout_fraction must be in \[0, 1\), got 1.0'):
    config_lib.validate(config)
  config.heterogeneity.dropout_fraction = 0.2
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  config.aggregator.noise_multiplier = 1.0
  with pytest.raises(config_lib.ConfigError, match="do not combine with aggregator.kind='dp'"):
    config_lib.validate(config)


@pytest.mark.parametrize('algorithm, policy', [('fedprox', 'auto'), ('fedavg', 'auto'),
                                               ('fednova', 'auto')])
def test_stragglers_and_dropouts_give_the_same_rows_on_both_engines(algorithm, policy, tmp_path):
  """A config run end to end on each engine: the same rows (within 1e-5), the
  counts logged, and (keep_partial) fewer batches than without stragglers."""
  rows = {}
  for engine in ('tff', 'compiled'):
    config = test_compiled_runner.small_compiled_config(engine=engine, total_rounds=3)
    config.clients_per_round = 6
    config.algorithm.name = algorithm
    config.algorithm.proximal_strength = 0.5 if algorithm == 'fedprox' else 0.0
    config.heterogeneity.straggler_fraction = 0.5
    config.heterogeneity.dropout_fraction = 0.2
    config.heterogeneity.straggler_policy = policy
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = test_compiled_runner.rows_of(tmp_path / engine)
  test_compiled_runner.assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-5)
  for row in rows['compiled']:
    assert (row['train/dropped'], row['train/stragglers']) == (1.0, 3.0)  # 20% of 6, 50% of 5.
  assert len(rows['compiled']) == 3
