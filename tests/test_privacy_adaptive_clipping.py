"""DP-FedAvg with adaptive clipping: the noise split, its accounting, configs."""

import math
import os

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.algorithms import aggregators
from fedtff.privacy import accounting
from fedtff.privacy import mechanisms
from fedtff.research import benchmarks
from tests import conftest


def quickstart_dp(variant):
  path = os.path.join(conftest.REPO_ROOT, 'configs', 'quickstart_dp.py')
  return benchmarks.load_config_file(path).get_config(variant)


def query_events(noise_multiplier, clients_per_round, **kwargs):
  """The DpEvent TF Privacy's query reports for one round of the TFF aggregator."""
  factory = mechanisms.dp_aggregator(noise_multiplier, clients_per_round, clipping='adaptive',
                                     **kwargs)
  query = factory._query  # pylint: disable=protected-access
  state = query.initial_global_state()
  sample = query.initial_sample_state(tf.TensorSpec([3], tf.float32))
  record = query.preprocess_record(query.derive_sample_params(state), tf.ones([3]))
  _, _, event = query.get_noised_result(query.accumulate_preprocessed_record(sample, record)
                                        if hasattr(query, 'accumulate_preprocessed_record')
                                        else record, state)
  return event


@pytest.mark.parametrize('z, m, stddev', [
    (1.0, 100, None), (4.786, 10, None), (2.0, 10, 3.0), (0.3, 40, 0.5)],
    ids=['tff_default', 'quickstart_eps8', 'explicit', 'explicit_small'])
def test_the_split_keeps_the_replace_one_multiplier_at_half_z(z, m, stddev):
  event = query_events(z, m, clipped_count_stddev=stddev)
  multipliers = [float(e.noise_multiplier) for e in event.events]  # value sum, clipped count
  assert all(isinstance(e, dp_accounting.GaussianDpEvent) for e in event.events)
  sigma_b = max(0.05 * m, z) if stddev is None else stddev
  # Value noise over C, count noise over its sensitivity 1/2 (TF Privacy's own events).
  assert multipliers[1] == pytest.approx(2 * sigma_b, rel=1e-6)
  # Under replace-one both sensitivities double (2C; a +-1/2 bit flips by 1): the
  # joint L2 sensitivity over unit noise is sqrt((2/z_v)^2 + (1/sigma_b)^2).
  joint = math.sqrt((2 / multipliers[0])**2 + (1 / sigma_b)**2)
  assert 1 / joint == pytest.approx(z / 2, rel=1e-6)
  # The same through dp_accounting: both halved events composed over 7 rounds
  # with every client sampled equal fedtff's epsilon at m = N.
  halved = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(v / 2)
                                          for v in multipliers])
  reference = dp_accounting.rdp.RdpAccountant().compose(
      dp_accounting.SelfComposedDpEvent(halved, 7)).get_epsilon(1e-5)
  assert accounting.epsilon(z, m, m, 7, 1e-5) == pytest.approx(reference, rel=1e-5)


def test_default_count_noise_is_tffs_while_it_costs_at_most_15_percent():
  assert mechanisms.default_clipped_count_stddev(1.0, 100) == 5.0  # TFF's 0.05 * m.
  assert mechanisms.default_clipped_count_stddev(4.786, 10) == 4.786
  assert mechanisms.default_clipped_count_stddev(0.0, 10) == 0.0
  value, _ = mechanisms.adaptive_noise_split(4.786, 10)
  assert value == pytest.approx(4.786 * 2 / math.sqrt(3))


@pytest.mark.parametrize('kwargs, message', [
    (dict(clipped_count_stddev=0.5), r'^clipped_count_stddev=0.5 is too small for '
     r'noise_multiplier=1: adaptive clipping needs 2\*clipped_count_stddev > noise_multiplier'),
    (dict(clipped_count_stddev=-1.0), '^clipped_count_stddev must be nonnegative, got -1.0.$'),
], ids=['too_small', 'negative'])
def test_impossible_splits_are_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message) as info:
    mechanisms.dp_aggregator(1.0, 10, clipping='adaptive', **kwargs)
  assert '\n' not in str(info.value)


def test_count_noise_with_fixed_clipping_is_refused():
  with pytest.raises(ValueError, match='apply to clipping=.adaptive. only'):
    mechanisms.dp_aggregator(1.0, 10, clip=1.0, clipped_count_stddev=2.0)
  with pytest.raises(ValueError, match=r'applies to adaptive clipping only \(clip_norm None\)'):
    aggregators.build_aggregator(aggregators.AggregatorSpec(
        'dp', clip_norm=1.0, noise_multiplier=1.0, clients_per_round=10,
        clipped_count_stddev=2.0), weighted=False)
  with pytest.raises(ValueError, match="applies to the 'dp' aggregator only"):
    aggregators.build_aggregator(aggregators.AggregatorSpec(
        'robust', clipped_count_stddev=2.0), weighted=False)


def test_quickstart_eps8_with_adaptive_clipping_runs(tmp_path):
  config = quickstart_dp('eps8')
  config.aggregator.clip_norm = None
  config.data.num_clients, config.data.num_test_clients = 12, 2
  z = accounting.noise_multiplier_for_epsilon(8.0, 10, 50, 100)  # The config's, at N = 50.
  assert z > 0.1 * config.clients_per_round  # Beyond TFF's default split.
  config.privacy.target_epsilon = None
  config.aggregator.noise_multiplier = z
  config.total_rounds = 2
  summary = fedtff.run_experiment(config, str(tmp_path))
  assert summary['privacy']['noise_multiplier'] == z
  rows = fedtff.runner.outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  assert [r['round'] for r in rows] == [1, 2]
  assert rows[-1]['privacy/epsilon'] == pytest.approx(accounting.epsilon(z, 10, 10, 2))
  assert np.isfinite(rows[-1]['eval/loss'])


@pytest.mark.parametrize('aggregator, message', [
    (dict(kind='dp', noise_multiplier=1.0, clipped_count_stddev=0.4),
     r'^Config key aggregator.clipped_count_stddev: clipped_count_stddev=0.4 is too small for '
     r'noise_multiplier=1: '),
    (dict(kind='dp', noise_multiplier=1.0, clip_norm=1.0, clipped_count_stddev=2.0),
     r"^Config key aggregator.clipped_count_stddev needs aggregator.kind='dp' with adaptive "),
    (dict(kind='robust', clipped_count_stddev=2.0),
     r"^Config key aggregator.clipped_count_stddev needs aggregator.kind='dp' with adaptive "),
], ids=['too_small', 'fixed_clip', 'not_dp'])
def test_config_refuses_a_bad_clipped_count_stddev_before_any_run(aggregator, message):
  config = fedtff.runner.config.base_config()
  config.algorithm.weighted = False
  config.aggregator.update(aggregator)
  with pytest.raises(fedtff.runner.config.ConfigError, match=message) as info:
    fedtff.runner.config.validate(config)
  assert '\n' not in str(info.value)
