"""Ditto (Li et al., ICML 2021) against a float64 NumPy reference of Algorithm 1, both engines."""

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.algorithms import ditto
from fedtff.algorithms import tff_model
from tests import conftest
from tests.test_scaffold import assert_close, softmax_gradient

NUM_FEATURES, NUM_CLASSES, CLIENT_LR, SERVER_LR, LAMBDA = 8, 3, 0.1, 0.7, 0.5
POPULATION = 4
# Clients 1 and 2 are sampled in both rounds: their v_k from round 1 is used in round 2.
ROUNDS = ([0, 1, 2], [2, 1, 3])


def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels,
                                        np.array_split(np.arange(90), POPULATION))
  return [client_data.create_tf_dataset_for_client(i).batch(8).repeat(2 + n % 2)
          for n, i in enumerate(client_data.client_ids)]


@pytest.fixture(scope='module')
def initial_weights():
  return tff_model.initial_weights(keras_model, seed=1)


def reference_ditto(weights, client_datasets, *, weighted):
  """Ditto (Algorithm 1) for softmax regression, float64: FedAvg's global model w and
  each client's personal model v_k (None if never selected; w^t at first selection)."""
  w = [np.asarray(p, np.float64) for p in weights]
  personal = [None] * len(client_datasets)
  batches = [[(b['x'].astype(np.float64), b['y']) for b in ds.as_numpy_iterator()]
             for ds in client_datasets]
  for cohort in ROUNDS:
    deltas, sizes = [], []
    for k in cohort:
      y = [p.copy() for p in w]
      v = [p.copy() for p in (w if personal[k] is None else personal[k])]
      for features, labels in batches[k]:
        y = [yj - CLIENT_LR * gj for yj, gj in zip(y, softmax_gradient(*y, features, labels))]
        v = [vj - CLIENT_LR * (gj + LAMBDA * (vj - wj))
             for vj, gj, wj in zip(v, softmax_gradient(*v, features, labels), w)]
      personal[k] = v
      deltas.append([yj - wj for yj, wj in zip(y, w)])
      sizes.append(sum(len(l) for _, l in batches[k]) if weighted else 1)
    shares = np.array(sizes, np.float64) / sum(sizes)
    w = [wj + SERVER_LR * sum(s * d[j] for s, d in zip(shares, deltas)) for j, wj in enumerate(w)]
  return w, personal


def optimizers_kwargs():
  return dict(client_optimizer=fedtff.build_optimizer('sgd', CLIENT_LR),
              server_optimizer=fedtff.build_optimizer('sgd', SERVER_LR))


def run_tff(process, initial_weights, client_datasets):
  state = process.set_model_weights(process.initialize(), initial_weights)
  rows = np.zeros([len(client_datasets), process.state_size], np.float32)
  for cohort in ROUNDS:
    output = process.next(state, [client_datasets[i] for i in cohort],
                          process.unflatten_controls(rows[cohort]))
    state = output.state
    rows[cohort] = process.flatten_controls(output.client_controls)
  return process.get_model_weights(state).trainable, rows, output.metrics


def run_compiled(process, initial_weights, client_datasets):
  state = process.set_model_weights(process.initialize(), initial_weights)
  rows = np.zeros([len(client_datasets), process.state_size], np.float32)
  for cohort in ROUNDS:
    output, new_rows = process.next_with_controls(
        state, [client_datasets[i] for i in cohort], rows[cohort])
    state = output.state
    rows[cohort] = new_rows
  return process.get_model_weights(state).trainable, rows, output.metrics


def check_rows(rows, expected_personal, global_trainable):
  """Selected clients hold their v_k and seen = 1; the others a zero row."""
  for row, v in zip(rows, expected_personal):
    if v is None:
      assert not row.any()
    else:
      assert row[-1] == 1.0
      assert_close(ditto.personal_models(row[np.newaxis], global_trainable)[0], v)


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'unweighted'])
def test_both_engines_match_the_reference_update(weighted, client_datasets, initial_weights):
  expected_w, expected_v = reference_ditto(initial_weights.trainable, client_datasets,
                                           weighted=weighted)
  kwargs = dict(algorithm='ditto', ditto_lambda=LAMBDA, weighted=weighted, **optimizers_kwargs())
  tff_process = fedtff.build_learning_process(keras_model, client_datasets[0], **kwargs)
  compiled_process = compiled.build_compiled_process(keras_model, client_datasets[0], **kwargs)
  tff_result = run_tff(tff_process, initial_weights, client_datasets)
  compiled_result = run_compiled(compiled_process, initial_weights, client_datasets)
  for trainable, rows, _ in (tff_result, compiled_result):
    assert_close(trainable, expected_w)
    check_rows(rows, expected_v, trainable)
  assert_close(tff_result[2], compiled_result[2])  # The metrics: both engines alike.
  # λ matters: the personal models are not the global model.
  assert np.max(np.abs(expected_v[1][0] - expected_w[0])) > 1e-3


def test_refusals(client_datasets):
  with pytest.raises(ValueError, match='ditto_lambda'):
    fedtff.build_learning_process(keras_model, client_datasets[0], algorithm='ditto')
  with pytest.raises(ValueError, match='ditto_lambda.*>= 0'):
    fedtff.build_learning_process(keras_model, client_datasets[0], algorithm='ditto',
                                  ditto_lambda=-1.0)
  with pytest.raises(ValueError, match='plain SGD client optimizer'):
    fedtff.build_learning_process(
        keras_model, client_datasets[0], algorithm='ditto', ditto_lambda=0.1,
        client_optimizer=fedtff.build_optimizer('sgd', 0.1, momentum=0.9))
  with pytest.raises(ValueError, match='Ditto takes the mean aggregator only'):
    compiled.build_compiled_process(
        keras_model, client_datasets[0], algorithm='ditto', ditto_lambda=0.1,
        weighted=False, aggregator=fedtff.AggregatorSpec('dp', clip_norm=1.0,
                                                         noise_multiplier=1.0))
  with pytest.raises(ValueError, match='ditto_lambda.*only by|used by no other'):
    fedtff.build_learning_process(keras_model, client_datasets[0], ditto_lambda=0.1)


def test_personalized_evaluation_with_one_model_equals_the_compiled_evaluation(
    client_datasets, initial_weights):
  """Every client given the same model: `PersonalizedEvaluation` is `CompiledEvaluation`;
  given its own, a client's metrics are those of `CompiledEvaluation` of that model."""
  from fedtff.compiled import personalized  # pylint: disable=import-outside-toplevel
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels,
                                        np.array_split(np.arange(90), POPULATION))
  batched = client_data.preprocess(lambda ds: ds.batch(8))
  plain = compiled.CompiledEvaluation(keras_model, batched)
  mine = personalized.PersonalizedEvaluation(keras_model, batched)
  same = mine([initial_weights.trainable] * POPULATION, initial_weights.non_trainable)
  expected = plain(initial_weights)
  assert same.pooled == pytest.approx(expected.pooled, abs=1e-6)
  assert_close(list(same.per_client.values()), list(expected.per_client.values()), atol=1e-6)
  other = [np.asarray(w) + 0.3 for w in initial_weights.trainable]
  mixed = mine([initial_weights.trainable, other, initial_weights.trainable, other],
               initial_weights.non_trainable)
  shifted = plain(tff_model_weights(other, initial_weights.non_trainable))
  for name in mixed.per_client:
    np.testing.assert_allclose(mixed.per_client[name][[1, 3]], shifted.per_client[name][[1, 3]],
                               atol=1e-6)
    np.testing.assert_allclose(mixed.per_client[name][[0, 2]], expected.per_client[name][[0, 2]],
                               atol=1e-6)


def tff_model_weights(trainable, non_trainable):
  import tensorflow_federated as tff  # pylint: disable=import-outside-toplevel
  return tff.learning.models.ModelWeights(list(trainable), list(non_trainable))
