"""Simulated attacks: who attacks, what they send, and runs from a config on both engines."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import tasks
from fedtff.algorithms import attacks
from fedtff.runner import config as config_lib


def test_attackers_are_a_fixed_count_drawn_per_seed_and_round():
  spec = attacks.AttackSpec('sign_flipping', 0.3, seed=4)
  masks = [attacks.attacker_mask(spec, r, 10).numpy() for r in range(6)]
  assert [m.sum() for m in masks] == [3] * 6
  np.testing.assert_array_equal(masks[2], attacks.attacker_mask(spec, 2, 10).numpy())
  assert len({m.tobytes() for m in masks}) > 1  # The attackers change from round to round.
  other_seed = attacks.AttackSpec('sign_flipping', 0.3, seed=5)
  assert any((attacks.attacker_mask(other_seed, r, 10).numpy() != masks[r]).any()
             for r in range(6))
  assert attacks.attacker_mask(attacks.AttackSpec('sign_flipping', 0.1), 0, 10).numpy().sum() == 1
  assert attacks.attacker_mask(attacks.AttackSpec('sign_flipping', 0.0), 0, 10).numpy().sum() == 0


@pytest.mark.parametrize('kind, scale, factor', [
    ('sign_flipping', None, -1.0), ('sign_flipping', 3.0, -3.0),
    ('model_replacement', None, 10.0), ('model_replacement', 4.0, 4.0)])
def test_update_attacks_replace_the_attackers_updates(kind, scale, factor):
  spec = attacks.AttackSpec(kind, 0.3, scale, seed=1)
  stack = np.random.default_rng(0).normal(size=(10, 2, 3)).astype(np.float32)
  mask = attacks.attacker_mask(spec, 7, 10).numpy()
  expected = np.where(mask[:, None, None], factor * stack.astype(np.float64), stack)
  got = attacks.attack_updates(spec, tf.constant(stack), 7).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert (got[~mask] == stack[~mask]).all()


def test_label_flipping_is_drawn_per_client_key():
  spec = attacks.AttackSpec('label_flipping', 0.5)
  keys = [tf.constant([3, k], tf.int64) for k in range(400)]
  flips = np.array([bool(attacks.is_label_flipper(spec, key)) for key in keys])
  assert 0.4 < flips.mean() < 0.6
  assert bool(attacks.is_label_flipper(spec, keys[0])) == flips[0]


def attack_config(**attack):
  config = config_lib.base_config()
  config.data.num_clients = 20
  config.data.num_test_clients = 4
  config.algorithm.weighted = False
  config.clients_per_round = 7
  config.total_rounds = 2
  config.rounds_per_eval = 2
  config.output.tensorboard = False
  config.attack.update(attack)
  return config


def test_label_flipping_flips_the_attackers_labels():
  honest = tasks.build_task(attack_config())
  flipped = tasks.build_task(attack_config(kind='label_flipping', fraction=1.0))
  client = honest.train_data.client_ids[0]
  labels = lambda task: np.concatenate([b['y'].numpy() for b in
                                        task.train_data.create_tf_dataset_for_client(
                                            client, round_num=3)])
  np.testing.assert_array_equal(labels(flipped), honest.num_classes - 1 - labels(honest))


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.update(dict(algorithm=dict(weighted=True))),
     "aggregator.kind='krum' with attack.kind='none' aggregates unweighted updates; set "
     'algorithm.weighted=False.'),
    (lambda c: c.update(dict(clients_per_round=4)),
     "aggregator.kind='krum' needs clients_per_round of at least 5 with "
     'aggregator.byzantine_clients=1, got 4.'),
    (lambda c: c.aggregator.update(dict(kind='robust', clip_norm=1.0)) or c.attack.update(
        dict(kind='sign_flipping', fraction=0.1)),
     "attack.kind='sign_flipping' runs with aggregator.kind 'mean' or one of median, "),
    (lambda c: c.attack.update(dict(kind='label_flipping', scale=2.0)),
     'The attack scale applies to sign_flipping and model_replacement'),
    (lambda c: c.attack.update(dict(kind='sign_flipping', fraction=1.5)),
     r'The attack fraction must be in \[0, 1\], got 1.5.'),
    (lambda c: c.data.update(dict(dataset='shakespeare')) or c.attack.update(
        dict(kind='label_flipping')),
     "attack.kind='label_flipping' needs a built-in classification dataset"),
])
def test_config_refusals(mutate, message):
  config = attack_config()
  config.aggregator.kind = 'krum'
  mutate(config)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def final_row(workdir):
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))[-1]


@pytest.fixture(scope='module')
def label_flipping_runs(tmp_path_factory):
  """trimmed_mean under 30% label flippers, 2 rounds on digits, on each engine."""
  rows = {}
  for engine in ('compiled', 'tff'):
    config = attack_config(kind='label_flipping', fraction=0.3)
    config.aggregator.kind = 'trimmed_mean'
    config.engine = engine
    workdir = str(tmp_path_factory.mktemp(engine))
    summary = fedtff.run_experiment(config, workdir)
    assert summary['engine'] == engine
    rows[engine] = final_row(workdir)
  return rows


def test_label_flipping_runs_alike_on_both_engines(label_flipping_runs):
  compiled_row, tff_row = label_flipping_runs['compiled'], label_flipping_runs['tff']
  for key in ('train/loss', 'eval/loss', 'eval/accuracy'):
    assert float(compiled_row[key]) == pytest.approx(float(tff_row[key]), abs=1e-5)


def test_sign_flipping_run_from_a_config(tmp_path):
  runs = {}
  for kind in ('none', 'sign_flipping'):
    config = attack_config(kind=kind, fraction=0.3 if kind != 'none' else 0.0)
    config.aggregator.kind = 'mean'
    runs[kind] = fedtff.run_experiment(config, str(tmp_path / kind))
    runs[kind] = final_row(str(tmp_path / kind))
  assert float(runs['sign_flipping']['eval/loss']) != pytest.approx(
      float(runs['none']['eval/loss']), abs=1e-4)
