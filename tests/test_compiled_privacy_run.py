"""DP runs with Poisson sampling and with DP-FTRL on engine='compiled' through
the runner: the TFF engine's rows with the noise off, its epsilon, and exact
resumes with the noise on."""

import os
import shutil

import pytest

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import training
from fedtff.privacy import accounting
from tests import test_compiled_runner
from tests import test_experiment

ROUNDS = 4
TOLERANCE = 1e-5
IDS = [str(i) for i in range(9)]  # test_experiment.small_config's 9 training clients.


def privacy_config(engine, sampling, noise_multiplier, **overrides):
  """A 4-round DP run of the small task, checkpointed and evaluated every round."""
  config = test_experiment.small_config(engine=engine, total_rounds=ROUNDS, rounds_per_eval=1,
                                        rounds_per_checkpoint=1)
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 0.5
  config.aggregator.noise_multiplier = noise_multiplier
  config.privacy.sampling = sampling
  config.privacy.mechanism = 'dp_ftrl' if sampling == 'cyclic' else 'dp_fedavg'
  config.privacy.publish_client_metrics = True  # The training rows are compared too.
  config.output.checkpoints_to_keep = 0
  config.update(overrides)
  return config


POISSON = dict(sampling='poisson', clients_per_round=1)  # Seed 0: round 4 draws nobody.
FTRL = dict(sampling='cyclic', clients_per_round=3)


def run(tmp_path, name, engine, case, noise_multiplier):
  workdir = str(tmp_path / name)
  config = privacy_config(engine, noise_multiplier=noise_multiplier, **case)
  summary = fedtff.run_experiment(config, workdir)
  assert summary['engine'] == engine
  return workdir, summary


def test_the_poisson_schedule_has_an_empty_round():
  config = privacy_config('compiled', noise_multiplier=1.0, **POISSON)
  sizes = [len(training.sample_clients(IDS, 1, round_num=r, seed=config.seed, sampling='poisson'))
           for r in range(1, ROUNDS + 1)]
  assert sizes[-1] == 0 and min(sizes[:-1]) >= 1


@pytest.mark.parametrize('case', [POISSON, FTRL], ids=['poisson', 'dp_ftrl'])
def test_noiseless_rows_equal_the_tff_engines(case, tmp_path):
  tff_dir, _ = run(tmp_path, 'tff', 'tff', case, 0.0)
  compiled_dir, _ = run(tmp_path, 'compiled', 'compiled', case, 0.0)
  expected = test_compiled_runner.rows_of(tff_dir)
  test_compiled_runner.assert_same_rows(expected, test_compiled_runner.rows_of(compiled_dir),
                                        TOLERANCE)
  assert len(expected) == ROUNDS


def resume_from(source_dir, workdir, round_num, engine, case, noise_multiplier):
  """Copies a run, drops its checkpoints after `round_num` and resumes it on `engine`."""
  shutil.copytree(source_dir, workdir)
  directory = os.path.join(workdir, 'checkpoints')
  for later in checkpoints.rounds(directory):
    if later > round_num:
      os.remove(os.path.join(directory, f'round-{later:06d}.npz'))
  config = privacy_config(engine, noise_multiplier=noise_multiplier, **case)
  return fedtff.run_experiment(config, workdir, overwrite=False)


def test_a_noised_poisson_run_resumes_exactly_and_spends_the_tff_engines_epsilon(tmp_path):
  workdir, summary = run(tmp_path, 'compiled', 'compiled', POISSON, 1.0)
  rows = test_compiled_runner.rows_of(workdir)
  expected_epsilon = [accounting.epsilon(1.0, 1, 9, r, sampling=accounting.POISSON)
                      for r in range(1, ROUNDS + 1)]
  assert [r[accounting.EPSILON_METRIC] for r in rows] == pytest.approx(expected_epsilon,
                                                                         rel=1e-9)
  assert rows[-1]['train/num_examples'] == 0  # The empty round ran: noise, no clients.
  assert rows[-1]['eval/loss'] != rows[-2]['eval/loss']
  # From round 3 the resumed run starts with the empty round: its noise is round 4's all the same.
  for last_round in (2, 3):
    resumed = resume_from(workdir, str(tmp_path / f'resumed_{last_round}'), last_round,
                          'compiled', POISSON, 1.0)
    test_compiled_runner.assert_same_rows(
        rows, test_compiled_runner.rows_of(tmp_path / f'resumed_{last_round}'), 1e-6)
  tff_dir, tff_summary = run(tmp_path, 'tff', 'tff', POISSON, 1.0)
  assert summary['privacy']['epsilon'] == tff_summary['privacy']['epsilon'] == resumed[
      'privacy']['epsilon']
  assert [r[accounting.EPSILON_METRIC] for r in test_compiled_runner.rows_of(tff_dir)] == [
      r[accounting.EPSILON_METRIC] for r in rows]


def test_a_noised_dp_ftrl_run_resumes_exactly_on_either_engine(tmp_path):
  """The tree (levels, seeds) is checkpointed in TFF's aggregator state, whose
  level buffers change shape by round: each engine resumes the other's noise."""
  workdir, summary = run(tmp_path, 'compiled', 'compiled', FTRL, 1.0)
  rows = test_compiled_runner.rows_of(workdir)
  for engine, tolerance in (('compiled', 1e-6), ('tff', TOLERANCE)):
    resumed_dir = tmp_path / f'resumed_on_{engine}'
    resumed = resume_from(workdir, str(resumed_dir), 2, engine, FTRL, 1.0)
    test_compiled_runner.assert_same_rows(rows, test_compiled_runner.rows_of(resumed_dir),
                                          tolerance)
    assert resumed['privacy']['epsilon'] == summary['privacy']['epsilon']
  assert summary['privacy']['noise_seed'].startswith("TF Privacy's tree seed, drawn from the OS")
