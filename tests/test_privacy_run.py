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


def rerun_after_a_crash(workdir, config, crashed_after_checkpoint):
  """Deletes the checkpoints after `crashed_after_checkpoint` and the summary, as if the run
  was killed after writing its last row, then resumes it; returns the summary."""
  directory = os.path.join(workdir, 'checkpoints')
  for round_num in checkpoints.rounds(directory):
    if round_num > crashed_after_checkpoint:
      os.remove(os.path.join(directory, f'round-{round_num:06d}.npz'))
  os.remove(os.path.join(workdir, 'summary.json'))
  return fedtff.run_experiment(config, str(workdir))


def test_rounds_rerun_with_fresh_noise_on_the_tff_engine_are_charged_again(tmp_path):
  # Rows 1-3 published; the resume from checkpoint 1 reruns rounds 2 and 3 with
  # new TFF noise on the same cohorts: each is two Gaussian releases of z = 1,
  # together one of z = 1/sqrt(2). A second crash keeps the first charge.
  config = dp_config(3, engine='tff')
  fedtff.run_experiment(config, str(tmp_path))
  summary = rerun_after_a_crash(tmp_path, config, crashed_after_checkpoint=1)
  delta = summary['privacy']['delta']
  charged = independent_epsilon([(1.0, 1), (1.0 / np.sqrt(2), 2)], delta)
  assert summary['privacy']['epsilon'] == pytest.approx(charged, rel=1e-9)
  assert rows_of(tmp_path)[-1][accounting.EPSILON_METRIC] == pytest.approx(charged, rel=1e-9)
  assert '2 earlier releases' in summary['privacy']['rerun_releases']
  with open(tmp_path / run_privacy.RERUNS_FILE) as f:
    assert json.load(f) == {'2': 1, '3': 1}
  summary = rerun_after_a_crash(tmp_path, config, crashed_after_checkpoint=2)
  assert summary['privacy']['epsilon'] == pytest.approx(
      independent_epsilon([(1.0, 1), (1.0 / np.sqrt(2), 1), (1.0 / np.sqrt(3), 1)], delta),
      rel=1e-9)


def test_rounds_the_compiled_engine_reruns_from_its_own_checkpoint_are_not_charged(dp_run,
                                                                                   tmp_path):
  # Its noise is a function of the secret seed and the round: the rerun rows are
  # the first ones again (test_a_resumed_run_repeats_its_noise).
  workdir, summary = dp_run
  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  assert rerun_after_a_crash(resumed, dp_config(5), 3)['privacy']['epsilon'] == (
      summary['privacy']['epsilon'])
  assert not os.path.exists(resumed / run_privacy.RERUNS_FILE)


@pytest.mark.parametrize('engine, checkpoint_engine, mechanism, charged', [
    ('tff', 'tff', 'dp_fedavg', True),
    ('compiled', 'tff', 'dp_fedavg', True),  # TFF wrote the rows after the checkpoint.
    ('compiled', None, 'dp_fedavg', True),  # A checkpoint of unknown engine counts as TFF's.
    ('compiled', 'compiled', 'dp_fedavg', False),
    ('tff', 'compiled', 'ddp_skellam', True),
    ('tff', 'tff', 'dp_ftrl', False),  # The tree noise is a function of the state.
])
def test_which_reruns_are_charged(engine, checkpoint_engine, mechanism, charged, tmp_path):
  extra = dict(sampling='cyclic') if mechanism == 'dp_ftrl' else (
      dict(bits=20, dim=100, sampling='fixed') if mechanism == 'ddp_skellam' else {})
  privacy = run_privacy.RunPrivacy(ledger_lib.RoundMechanism(
      1.0, CLIENTS_PER_ROUND, NUM_TRAIN_CLIENTS, 1.0, mechanism=mechanism, **extra))
  metadata = {} if checkpoint_engine is None else {'noise_engine': checkpoint_engine}
  privacy.resume(0, metadata, engine=engine, workdir=str(tmp_path), published_round=2)
  privacy.metrics(1)
  privacy.metrics(2)
  assert [s.mechanism.releases for s in privacy.ledger.segments] == ([2] if charged else [1])
  assert os.path.exists(tmp_path / run_privacy.RERUNS_FILE) == charged
  assert privacy.checkpoint_metadata()['noise_engine'] == engine


def test_a_ledger_charges_k_releases_of_a_round_as_one_release_of_z_over_root_k():
  ledger = ledger_lib.PrivacyLedger()
  mechanism = ledger_lib.RoundMechanism(1.2, CLIENTS_PER_ROUND, NUM_TRAIN_CLIENTS, 1.0)
  ledger.record(1, mechanism)
  ledger.record(2, ledger_lib.RoundMechanism(1.2, CLIENTS_PER_ROUND, NUM_TRAIN_CLIENTS, 1.0,
                                             releases=4))
  assert ledger.epsilon(1e-3) == pytest.approx(
      independent_epsilon([(1.2, 1), (0.6, 1)], 1e-3), rel=1e-9)
  assert ledger_lib.PrivacyLedger.from_json(ledger.to_json()).epsilon(1e-3) == ledger.epsilon(1e-3)
  with pytest.raises(ledger_lib.LedgerError, match='released at least once, got releases=0'):
    ledger_lib.RoundMechanism(1.2, 4, 9, releases=0)


def test_a_pld_ledger_with_rerun_rounds_composes_them_by_pld():
  poisson = dict(sampling=accounting.POISSON, accountant=accounting.PLD)
  ledger = ledger_lib.PrivacyLedger()
  ledger.record(1, ledger_lib.RoundMechanism(1.2, 4, 90, 1.0, **poisson))
  ledger.record(2, ledger_lib.RoundMechanism(1.2, 4, 90, 1.0, releases=2, **poisson))
  accountant = dp_accounting.pld.PLDAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
      value_discretization_interval=1e-4)
  for z in (1.2, 1.2 / np.sqrt(2)):
    accountant.compose(dp_accounting.PoissonSampledDpEvent(4 / 90, dp_accounting.GaussianDpEvent(z)))
  assert ledger.epsilon(1e-3) == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-6)


def test_a_torn_row_counts_as_written(tmp_path):
  with open(tmp_path / 'metrics.csv', 'w') as f:
    f.write('round,eval/loss\n1,0.5\n2,0.4\n3,0.')
  assert run_dir.last_written_round(str(tmp_path)) == 3
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('{"round": 1}\n{"round": 2}\n{"round": 3}\n{"round": 4}\n')
  assert run_dir.last_written_round(str(tmp_path)) == 4
