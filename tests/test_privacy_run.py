"""A DP run's privacy record: the ledger epsilon is composed from, the secret
noise seed, and the client-derived metrics a DP run withholds."""

import json
import os
import shutil

import dp_accounting
import numpy as np
import pytest

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import outputs
from fedtff.runner import run_dir
from fedtff.privacy import accounting
from fedtff.privacy import ledger as ledger_lib
from fedtff.privacy import run_privacy
from tests import test_experiment

NUM_TRAIN_CLIENTS, CLIENTS_PER_ROUND = 9, 4  # test_experiment.small_config's task.


def dp_config(total_rounds=3, **overrides):
  config = test_experiment.small_config(engine='compiled', total_rounds=total_rounds,
                                        rounds_per_eval=1, rounds_per_checkpoint=1)
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  config.aggregator.noise_multiplier = 1.0
  config.output.checkpoints_to_keep = 0
  config.update(overrides)
  return config


def independent_epsilon(segments, delta):
  """dp_accounting's RDP epsilon of `(z, rounds)` segments of DP-FedAvg rounds
  (replace-one, m of N without replacement: Gaussian of z/2 per round)."""
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  for z, rounds in segments:
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            NUM_TRAIN_CLIENTS, CLIENTS_PER_ROUND, dp_accounting.GaussianDpEvent(z / 2)), rounds))
  return accountant.get_epsilon(delta)


def newest_checkpoint_metadata(workdir):
  """The strings saved with the newest checkpoint, read straight from the .npz."""
  directory = os.path.join(workdir, 'checkpoints')
  path = os.path.join(directory, f'round-{checkpoints.rounds(directory)[-1]:06d}.npz')
  with np.load(path, allow_pickle=False) as saved:
    return {k[len('__meta__'):]: str(saved[k]) for k in saved.files if k.startswith('__meta__')}


def rows_of(workdir):
  return outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))


@pytest.fixture(scope='module')
def dp_run(tmp_path_factory):
  """A 3-round compiled DP run extended to 5 rounds."""
  workdir = str(tmp_path_factory.mktemp('dp'))
  fedtff.run_experiment(dp_config(3), workdir)
  summary = fedtff.run_experiment(dp_config(5), workdir)
  return workdir, summary


def test_reported_epsilon_equals_an_independent_composition_of_the_rounds_run(dp_run):
  workdir, summary = dp_run
  delta = summary['privacy']['delta']
  assert summary['privacy']['epsilon'] == pytest.approx(
      independent_epsilon([(1.0, 5)], delta), rel=1e-9)
  epsilons = [row[accounting.EPSILON_METRIC] for row in rows_of(workdir)]
  assert epsilons == pytest.approx(
      [independent_epsilon([(1.0, r)], delta) for r in range(1, 6)], rel=1e-9)


def test_the_ledger_is_written_with_each_checkpoint(dp_run):
  workdir, _ = dp_run
  with open(os.path.join(workdir, run_privacy.LEDGER_FILE)) as f:
    (segment,) = json.load(f)
  assert segment == {'first_round': 1, 'last_round': 5, 'noise_multiplier': 1.0,
                     'clients_per_round': 4, 'num_clients': 9, 'clip_norm': 1.0,
                     'sampling': 'without_replacement', 'mechanism': 'dp_fedavg',
                     'accountant': 'rdp'}
  ledger = ledger_lib.PrivacyLedger.from_json(newest_checkpoint_metadata(workdir)['privacy_ledger'])
  assert ledger.last_round == 5


def test_a_ledger_of_two_mechanisms_composes_both():
  ledger = ledger_lib.PrivacyLedger()
  mechanism = lambda z: ledger_lib.RoundMechanism(z, CLIENTS_PER_ROUND, NUM_TRAIN_CLIENTS, 1.0)
  for round_num in range(1, 21):
    ledger.record(round_num, mechanism(1.765 if round_num <= 10 else 2.554))
  assert [s.rounds for s in ledger.segments] == [10, 10]
  assert ledger.epsilon(1e-3) == pytest.approx(
      independent_epsilon([(1.765, 10), (2.554, 10)], 1e-3), rel=1e-9)
  assert ledger.truncated(7).epsilon(1e-3) == pytest.approx(
      independent_epsilon([(1.765, 7)], 1e-3), rel=1e-9)


def test_extending_a_target_epsilon_run_is_refused(tmp_path):
  config = dp_config(2)
  config.aggregator.noise_multiplier = None
  config.privacy.target_epsilon = 50.0
  fedtff.run_experiment(config, str(tmp_path))
  config.total_rounds = 4
  with pytest.raises(run_dir.RunDirectoryError,
                     match=r'privacy.target_epsilon=50.0 over total_rounds=2; other rounds would '
                     'break that target'):
    fedtff.run_experiment(config, str(tmp_path))
  assert [row['round'] for row in rows_of(tmp_path)] == [1, 2]


def test_two_fresh_runs_draw_different_noise_and_the_seed_is_not_in_the_config(dp_run, tmp_path):
  workdir, _ = dp_run
  fedtff.run_experiment(dp_config(5), str(tmp_path))
  first, second = rows_of(workdir), rows_of(tmp_path)
  assert first[0]['eval/loss'] != second[0]['eval/loss']
  secret = newest_checkpoint_metadata(workdir)['noise_seed']
  assert len(secret) > 6 and secret not in open(os.path.join(workdir, 'config.json')).read()


def test_a_resumed_run_repeats_its_noise(dp_run, tmp_path):
  workdir, _ = dp_run
  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  for round_num in (4, 5):  # As if killed after checkpoint 3.
    os.remove(resumed / 'checkpoints' / f'round-{round_num:06d}.npz')
  os.remove(resumed / 'summary.json')
  fedtff.run_experiment(dp_config(5), str(resumed))
  for before, after in zip(rows_of(workdir), rows_of(resumed)):
    assert before == pytest.approx(after, abs=1e-6)


def test_a_public_noise_seed_reproduces_the_noise(tmp_path):
  config = dp_config(2)
  config.privacy.noise_seed = 7
  fedtff.run_experiment(config, str(tmp_path / 'a'))
  summary = fedtff.run_experiment(config, str(tmp_path / 'b'))
  assert rows_of(tmp_path / 'a') == rows_of(tmp_path / 'b')
  assert 'no privacy guarantee' in summary['privacy']['noise_seed']


def test_a_public_noise_seed_on_the_tff_engine_is_refused():
  config = dp_config(2, engine='tff')
  config.privacy.noise_seed = 7
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match="privacy.noise_seed must be a non-negative integer with engine='compiled'"):
    fedtff.runner.config.validate(config)


def test_a_dp_run_withholds_client_derived_metrics(dp_run):
  workdir, summary = dp_run
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    header = f.readline().strip().split(',')
  assert header == ['round', 'eval/accuracy', 'eval/loss', 'eval/num_examples',
                    'eval/num_batches', 'privacy/epsilon']
  assert summary['privacy']['client_metrics'] == 'withheld'
  assert not any(k.startswith('train/') for k in summary['final'])


def test_published_client_metrics_are_marked_outside_the_guarantee(tmp_path):
  summary = fedtff.run_experiment(dp_config(1, privacy=dict(publish_client_metrics=True)),
                                  str(tmp_path))
  assert 'train/num_examples' in rows_of(tmp_path)[0]
  assert 'outside the guarantee' in summary['privacy']['client_metrics']
