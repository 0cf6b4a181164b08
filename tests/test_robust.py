"""Robust aggregation: each rule against a float64 NumPy reference, and both engines alike."""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.algorithms import aggregators
from fedtff.algorithms import attacks
from fedtff.algorithms import robust
from tests import conftest
from tests import test_compiled_engine

# NumPy float64 references of the papers' rules, written from the papers.


def np_median(x):
  return np.median(x, axis=0)


def np_trimmed_mean(x, beta):
  k = int(np.floor(beta * len(x)))
  return np.sort(x, axis=0)[k:len(x) - k].mean(axis=0)


def np_krum_scores(x, f, active=None):
  n = len(x)
  active = np.ones(n, bool) if active is None else active
  flat = x.reshape(n, -1)
  r = active.sum()
  k = min(max(r - f - 2, 1), r - 1)
  scores = np.full(n, np.inf)
  for i in np.flatnonzero(active):
    d = [np.sum((flat[i] - flat[j]) ** 2) for j in np.flatnonzero(active) if j != i]
    scores[i] = np.sum(np.sort(d)[:k])
  return scores


def np_multi_krum(x, f, m):
  m = m or len(x) - f
  return x[np.argsort(np_krum_scores(x, f), kind='stable')[:m]].mean(axis=0)


def np_bulyan(x, f):
  n = len(x)
  active, chosen = np.ones(n, bool), []
  for _ in range(n - 2 * f):
    best = int(np.argmin(np_krum_scores(x, f, active)))
    chosen.append(best)
    active[best] = False
  selected = x[chosen].reshape(len(chosen), -1)
  beta = len(chosen) - 2 * f
  gap = np.abs(selected - np.median(selected, axis=0))
  closest = np.argsort(gap, axis=0, kind='stable')[:beta]
  return np.take_along_axis(selected, closest, axis=0).mean(axis=0).reshape(x.shape[1:])


def np_geometric_median(x, iterations, nu):
  flat = x.reshape(len(x), -1)
  v = flat.mean(axis=0)
  for _ in range(iterations):
    b = 1.0 / np.maximum(nu, np.linalg.norm(flat - v, axis=1))
    v = (b[:, None] * flat).sum(axis=0) / b.sum()
  return v.reshape(x.shape[1:])


def stacked_updates(n=7, seed=0):
  """n updates of shape [3, 4] around 0.5, two of them far off."""
  rng = np.random.default_rng(seed)
  x = 0.5 + 0.1 * rng.normal(size=(n, 3, 4))
  x[1] += 5.0
  x[4] -= 3.0 * rng.random((3, 4))
  return x


REFERENCES = {
    'median': (robust.Rule('median'), np_median),
    'trimmed_mean': (robust.Rule('trimmed_mean', trim_fraction=0.3),
                     lambda x: np_trimmed_mean(x, 0.3)),
    'krum': (robust.Rule('krum', byzantine_clients=2), lambda x: np_multi_krum(x, 2, 1)),
    'multi_krum': (robust.Rule('multi_krum', byzantine_clients=1, krum_selected=3),
                   lambda x: np_multi_krum(x, 1, 3)),
    'multi_krum_n_minus_f': (robust.Rule('multi_krum', byzantine_clients=2),
                             lambda x: np_multi_krum(x, 2, 0)),
    'bulyan': (robust.Rule('bulyan', byzantine_clients=1), lambda x: np_bulyan(x, 1)),
    'geometric_median': (robust.Rule('geometric_median', rfa_iterations=4, rfa_smoothing=1e-6),
                         lambda x: np_geometric_median(x, 4, 1e-6)),
}


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('n', [7, 8])
def test_rule_matches_its_numpy_reference(name, n):
  rule, reference = REFERENCES[name]
  x = stacked_updates(n)
  got = robust.aggregate(rule, tf.constant(x, tf.float32)).numpy()
  np.testing.assert_allclose(got, reference(x), atol=1e-5)


def test_hand_checked_tiny_case():
  x = np.array([[0.0], [0.1], [0.2], [10.0], [-10.0]])
  # f = 1: n - f - 2 = 2 neighbours; scores 0.05, 0.02, 0.05, 194.05, 204.05.
  np.testing.assert_allclose(robust.krum_scores(robust.squared_distances(tf.constant(x)),
                                                tf.ones([5], tf.bool), 1).numpy()[:3],
                             [0.05, 0.02, 0.05], atol=1e-12)
  assert robust.aggregate(robust.Rule('krum'), tf.constant(x)).numpy() == pytest.approx([0.1])
  assert robust.aggregate(robust.Rule('multi_krum', krum_selected=3),
                          tf.constant(x)).numpy() == pytest.approx([0.1])
  assert robust.aggregate(robust.Rule('median'), tf.constant(x)).numpy() == pytest.approx([0.1])
  # β = 0.2 drops one value at each end: mean(0, 0.1, 0.2).
  assert robust.aggregate(robust.Rule('trimmed_mean', trim_fraction=0.2),
                          tf.constant(x)).numpy() == pytest.approx([0.1])
  # Bulyan, f = 0 would need n ≥ 3; with f = 0 it selects all 5 by Krum and averages
  # (β = 5) the values closest to the median: all of them.
  assert robust.aggregate(robust.Rule('bulyan', byzantine_clients=0),
                          tf.constant(x)).numpy() == pytest.approx([0.06])


def test_refuses_cohorts_too_small_and_bad_options():
  with pytest.raises(ValueError, match=r'krum aggregator needs at least 5 clients per round '
                                       r'\(n > 2f \+ 2 with f=1\), got 4'):
    robust.Rule('krum').check_cohort(4)
  with pytest.raises(ValueError, match=r'bulyan aggregator needs at least 11 clients .*'
                                       r'n ≥ 4f \+ 3 with f=2\), got 10'):
    robust.Rule('bulyan', byzantine_clients=2).check_cohort(10)
  with pytest.raises(ValueError, match=r'trim_fraction must be in \[0, 0.5\)'):
    robust.Rule('trimmed_mean', trim_fraction=0.5)
  with pytest.raises(ValueError, match='unweighted client updates, as in its paper; use it with '
                                       'weighted=False'):
    aggregators.build_aggregator(fedtff.AggregatorSpec('median'), weighted=True)
  with pytest.raises(ValueError, match="sign_flipping attack runs with aggregator kind mean or "):
    aggregators.build_aggregator(fedtff.AggregatorSpec(
        'robust', clip_norm=1.0, attack=attacks.AttackSpec('sign_flipping', 0.1)), weighted=False)


# Both engines: 7 clients (Bulyan with f = 1 needs 7), 2 rounds from the same weights.

CLIENT_SIZES = (13, 9, 16, 11, 8, 14, 19)


@pytest.fixture(scope='module')
def datasets():
  features, labels = conftest.tiny_classification_arrays(
      num_examples=sum(CLIENT_SIZES), num_features=test_compiled_engine.NUM_FEATURES)
  bounds = np.cumsum((0,) + CLIENT_SIZES)
  client_data = fedtff.data.from_arrays(
      features, labels, [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
  return [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]


def spec(kind, **options):
  return fedtff.AggregatorSpec(kind, byzantine_clients=1, **options)


ENGINE_CASES = {
    'median': spec('median'),
    'trimmed_mean': spec('trimmed_mean', trim_fraction=0.2),
    'krum': spec('krum'),
    'multi_krum': spec('multi_krum', krum_selected=3),
    'bulyan': spec('bulyan'),
    'geometric_median': spec('geometric_median'),
    'mean_sign_flipping': spec('mean', attack=attacks.AttackSpec('sign_flipping', 0.3, 2.0,
                                                                 seed=5)),
    'median_model_replacement': spec('median', attack=attacks.AttackSpec(
        'model_replacement', 0.3, seed=5)),
}


@pytest.mark.parametrize('name', sorted(ENGINE_CASES))
def test_engines_agree(name, datasets):
  options = dict(algorithm='fedavg', weighted=False, aggregator=ENGINE_CASES[name],
                 client_optimizer=fedtff.build_optimizer('sgd', 0.3))
  rounds = list(test_compiled_engine.run_both(options, datasets, rounds=2))
  for tff_weights, tff_metrics, compiled_weights, compiled_metrics in rounds:
    test_compiled_engine.assert_weights_close(tff_weights, compiled_weights)
    assert compiled_metrics['aggregator'] == tff_metrics['aggregator'] == ()
    assert compiled_metrics['client_work']['train']['loss'] == pytest.approx(
        tff_metrics['client_work']['train']['loss'], abs=1e-5)
  first, last = rounds[0][0], rounds[-1][0]
  assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(first.trainable, last.trainable))


def test_attack_round_index_converts_to_and_from_the_tff_state(datasets):
  options = dict(algorithm='fedavg', weighted=False, aggregator=ENGINE_CASES['mean_sign_flipping'])
  tff_process = fedtff.build_learning_process(test_compiled_engine.keras_model, datasets[0],
                                              **options)
  compiled_process = compiled.build_compiled_process(test_compiled_engine.keras_model,
                                                     datasets[0], **options)
  state = compiled_process.initialize()
  state, _ = compiled_process.next(state, compiled.from_datasets(datasets))
  assert int(state.aggregator) == 1
  tff_state = compiled_process.to_tff_state(state, tff_process)
  assert int(tff_state.aggregator) == 1
  tff_state = tff_process.next(tff_state, datasets).state
  state, _ = compiled_process.next(state, compiled.from_datasets(datasets))
  test_compiled_engine.assert_weights_close(tff_process.get_model_weights(tff_state),
                                            compiled_process.get_model_weights(state))
  assert int(compiled_process.from_tff_state(tff_state).aggregator) == 2


def test_compiled_engine_refuses_a_cohort_too_small(datasets):
  process = compiled.build_compiled_process(test_compiled_engine.keras_model, datasets[0],
                                            weighted=False, aggregator=spec('bulyan'))
  with pytest.raises(ValueError, match=r'bulyan aggregator needs at least 7 clients per round '
                                       r'\(n ≥ 4f \+ 3 with f=1\), got 6'):
    process.next(process.initialize(), datasets[:6])
