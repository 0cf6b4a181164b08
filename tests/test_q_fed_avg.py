"""q-FedAvg on both engines against a float64 NumPy reference of Li et al. (ICLR 2020)."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from fedtff.algorithms import tff_model
from tests import conftest
from tests import test_compiled_engine
from tests import test_compiled_runner
from tests import test_experiment

NUM_FEATURES, NUM_CLASSES, LEARNING_RATE = 8, 3, 0.1
# Unequal clients: 12, 28 and 50 examples, batches of 8 (partial last batches), 2 epochs.
CLIENT_BOUNDS = (12, 40)


def keras_model():
  return fedtff.models.logistic_regression((NUM_FEATURES,), NUM_CLASSES)


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels,
                                        np.split(np.arange(90), CLIENT_BOUNDS))
  return [client_data.create_tf_dataset_for_client(i).batch(8).repeat(2)
          for i in client_data.client_ids]


@pytest.fixture(scope='module')
def initial_weights():
  return tff_model.initial_weights(keras_model, seed=1)


def _softmax_loss_and_gradient(kernel, bias, x, y):
  logits = x @ kernel + bias
  logits = logits - logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  loss = -log_probs[np.arange(len(y)), y].mean()
  probs = np.exp(log_probs)
  probs[np.arange(len(y)), y] -= 1.0
  probs /= len(y)
  return loss, x.T @ probs, probs.sum(axis=0)


def reference_q_fed_avg(weights, client_datasets, *, q, rounds):
  """q-FedAvg (Li et al. 2020, Algorithm 3) for softmax regression, in float64 NumPy.

  As litian96/fair_flearn's flearn/trainers/qffedavg.py: F_k is the mean
  cross-entropy over the client's training data at w_t (plus 1e-10); the
  client runs SGD (learning rate η) over its batches; Δw = L(w_t − w̄), L = 1/η;
  Δ_k = F^q Δw; h_k = q F^(q−1) ‖Δw‖² + L F^q, ‖·‖ over all weights flattened;
  w_{t+1} = w_t − Σ Δ_k / Σ h_k.
  """
  params = [np.asarray(w, np.float64) for w in weights]
  batches = [[(b['x'].astype(np.float64), b['y']) for b in ds.as_numpy_iterator()]
             for ds in client_datasets]
  lipschitz = 1.0 / LEARNING_RATE
  for _ in range(rounds):
    deltas, hs = [], []
    for client_batches in batches:
      x_all = np.concatenate([x for x, _ in client_batches])
      y_all = np.concatenate([y for _, y in client_batches])
      loss = _softmax_loss_and_gradient(*params, x_all, y_all)[0] + 1e-10
      kernel, bias = (p.copy() for p in params)
      for x, y in client_batches:
        _, grad_kernel, grad_bias = _softmax_loss_and_gradient(kernel, bias, x, y)
        kernel -= LEARNING_RATE * grad_kernel
        bias -= LEARNING_RATE * grad_bias
      grads = [lipschitz * (params[0] - kernel), lipschitz * (params[1] - bias)]
      norm_squared = sum(np.sum(g ** 2) for g in grads)
      deltas.append([loss ** q * g for g in grads])
      hs.append(q * loss ** (q - 1) * norm_squared + lipschitz * loss ** q)
    params = [p - sum(d[i] for d in deltas) / sum(hs) for i, p in enumerate(params)]
  return params


def _train(process, initial_weights, client_datasets, rounds, batches=None):
  state = process.set_model_weights(process.initialize(), initial_weights)
  for _ in range(rounds):
    state = process.next(state, batches or client_datasets).state
  return process.get_model_weights(state).trainable


def _options(q):
  return dict(algorithm='qfedavg', q=q, client_optimizer=fedtff.build_optimizer('sgd', LEARNING_RATE))


@pytest.fixture(scope='module')
def processes(client_datasets):
  """q -> (TFF process, compiled process) with `_options(q)`, each built once for this file."""
  spec = client_datasets[0].element_spec
  return functools.lru_cache(maxsize=None)(
      lambda q: (fedtff.build_learning_process(keras_model, spec, **_options(q)),
                 compiled.build_compiled_process(keras_model, spec, **_options(q))))


@pytest.mark.parametrize('q', [0.0, 1.0, 5.0])
def test_both_engines_match_the_reference_update(q, client_datasets, initial_weights, processes):
  expected = reference_q_fed_avg(initial_weights.trainable, client_datasets, q=q, rounds=2)
  tff_process, compiled_process = processes(q)
  tff_weights = _train(tff_process, initial_weights, client_datasets, 2)
  compiled_weights = _train(compiled_process, initial_weights, client_datasets, 2,
                            batches=compiled.from_datasets(client_datasets))
  moved = max(np.abs(e - w).max() for e, w in zip(expected, initial_weights.trainable))
  assert moved > 1e-2
  for ours in (tff_weights, compiled_weights):
    for a, b in zip(ours, expected):
      np.testing.assert_allclose(a, b, atol=1e-5)


def test_both_engines_give_the_same_weights_and_metrics():
  """test_compiled_engine's MLP and clients (13, 37, 40 examples; partial batches)."""
  datasets = test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))
  pairs = list(test_compiled_engine.run_both(dict(algorithm='qfedavg', q=2.0), datasets, rounds=3))
  for tff_weights, tff_metrics, compiled_weights, compiled_metrics in pairs:
    test_compiled_engine.assert_weights_close(tff_weights, compiled_weights)
    tff_train = tff_metrics['client_work']['train']
    compiled_train = compiled_metrics['client_work']['train']
    assert list(compiled_train) == list(tff_train)
    for name in ('loss', 'accuracy'):
      assert compiled_train[name] == pytest.approx(tff_train[name], abs=1e-5)
    # The training metrics count the SGD steps only, not the loss pass at w_t.
    assert (compiled_train['num_examples'], compiled_train['num_batches']) == (90, 12)
    assert (tff_train['num_examples'], tff_train['num_batches']) == (90, 12)
    assert tf.nest.map_structure(np.shape, compiled_metrics['aggregator']) == tf.nest.map_structure(
        np.shape, tff_metrics['aggregator'])


@pytest.mark.parametrize('options, message', [
    (dict(), 'q is required by qfedavg'),
    (dict(q=-1.0), 'q >= 0'),
    (dict(q=1.0, client_optimizer=fedtff.build_optimizer('sgd', 0.1, momentum=0.9)),
     'plain SGD client optimizer'),
    (dict(q=1.0, client_optimizer=fedtff.build_optimizer('adam', 0.1)),
     'plain SGD client optimizer'),
    (dict(q=1.0, server_optimizer=fedtff.build_optimizer('sgd', 0.5)), "server step"),
    (dict(q=1.0, server_optimizer=fedtff.build_optimizer('adam', 1.0)), "server step"),
    (dict(q=1.0, weighted=False), 'drop weighted=False'),
    (dict(q=1.0, aggregator=fedtff.AggregatorSpec('robust', clip_norm=1.0)), 'drop the aggregator'),
    (dict(q=1.0, aggregator=fedtff.AggregatorSpec('dp', clip_norm=1.0, noise_multiplier=1.0,
                                                  clients_per_round=3)), 'drop the aggregator'),
    (dict(q=1.0, client_learning_rate_schedule=fedtff.Schedule('exp_decay', 0.1)),
     'not with qfedavg'),
], ids=['no_q', 'negative_q', 'client_momentum', 'client_adam', 'server_lr', 'server_adam',
        'unweighted', 'robust', 'dp', 'schedule'])
@pytest.mark.parametrize('build', [fedtff.build_learning_process, compiled.build_compiled_process],
                         ids=['tff', 'compiled'])
def test_refuses_what_does_not_fit(build, options, message):
  spec = (tf.TensorSpec([None, NUM_FEATURES], tf.float32), tf.TensorSpec([None], tf.int32))
  with pytest.raises(ValueError, match=message):
    build(keras_model, spec, algorithm='qfedavg', **options)


def test_q_is_refused_by_other_algorithms():
  spec = (tf.TensorSpec([None, NUM_FEATURES], tf.float32), tf.TensorSpec([None], tf.int32))
  with pytest.raises(ValueError, match='used by no other algorithm'):
    fedtff.build_learning_process(keras_model, spec, algorithm='fedavg', q=1.0)


def _config(**algorithm):
  config = test_experiment.small_config(total_rounds=2, rounds_per_eval=1)
  config.algorithm.name = 'qfedavg'
  config.algorithm.update(algorithm)
  return config


@pytest.mark.parametrize('changes, message', [
    (dict(), 'algorithm.q must be set'),
    (dict(q=-0.5), 'algorithm.q must be set'),
    (dict(name='fedavg', q=1.0), 'used only by qfedavg'),
    (dict(q=1.0, weighted=False), 'algorithm.weighted'),
], ids=['no_q', 'negative_q', 'q_with_fedavg', 'unweighted'])
def test_config_refusals(changes, message):
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(_config(**changes))


@pytest.mark.parametrize('group, key, value, message', [
    ('client', 'momentum', 0.9, "client.optimizer='sgd' without momentum"),
    ('client', 'optimizer', 'adam', "client.optimizer='sgd' without momentum"),
    ('server', 'learning_rate', 0.5, 'server.learning_rate must be 1.0'),
    ('server', 'optimizer', 'adam', "needs server.optimizer='sgd'"),
    ('aggregator', 'kind', 'robust', "aggregator.kind='mean'"),
])
def test_config_refuses_optimizers_and_aggregators(group, key, value, message):
  config = _config(q=1.0)
  config[group][key] = value
  with pytest.raises(fedtff.runner.config.ConfigError, match=message):
    fedtff.runner.config.validate(config)


def test_a_config_runs_on_both_engines_with_the_same_rows(tmp_path):
  rows = {}
  for engine in ('tff', 'compiled'):
    config = _config(q=1.0)
    config.engine = engine
    fedtff.run_experiment(config, str(tmp_path / engine))
    rows[engine] = test_compiled_runner.rows_of(tmp_path / engine)
  assert len(rows['tff']) == 2
  test_compiled_runner.assert_same_rows(rows['tff'], rows['compiled'], tolerance=1e-5)


def test_larger_q_gives_more_uniform_client_losses(processes):
  """The paper's fairness property, qualitatively: one small client (12 of 90 examples)
  has its labels rotated (another task); after 30 rounds (compiled engine, fixed batches)
  the spread of the clients' losses shrinks as q grows, and the worst loss is lower at
  q=1 than at q=0 (FedAvg with equal weights). Measured: losses (1.029, 0.423, 0.405),
  (0.895, 0.555, 0.543), (1.031, 0.936, 0.883) for q = 0, 1, 5."""
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  indices = np.split(np.arange(90), CLIENT_BOUNDS)
  labels = labels.copy()
  labels[indices[0]] = (labels[indices[0]] + 1) % NUM_CLASSES
  client_data = fedtff.data.from_arrays(features, labels, indices)
  datasets = [client_data.create_tf_dataset_for_client(i).batch(8)
              for i in client_data.client_ids]
  batches = compiled.from_datasets(datasets)
  initial = tff_model.initial_weights(keras_model, seed=1)

  def client_losses(q):
    _, process = processes(q)  # Built for the same element spec.
    weights = _train(process, initial, None, 30, batches=batches)
    weights = [np.asarray(w, np.float64) for w in weights]
    return np.array([_softmax_loss_and_gradient(*weights, features[i].astype(np.float64),
                                                labels[i])[0] for i in indices])

  losses = {q: client_losses(q) for q in (0.0, 1.0, 5.0)}
  spread = {q: l.max() - l.min() for q, l in losses.items()}
  assert spread[0.0] > spread[1.0] > spread[5.0]
  assert losses[1.0].max() < losses[0.0].max() - 0.05


def test_a_non_finite_client_is_dropped_on_both_engines():
  """A client whose loss or update is not finite sends a zero update of weight 0, so
  the round is the round of the other clients (as FedProx's client work does)."""
  features, labels = conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES)
  clean = test_compiled_engine.client_datasets(features, labels)
  features = features.copy()
  features[20, 0] = np.inf  # In the second client.
  datasets = test_compiled_engine.client_datasets(features, labels)
  options = dict(algorithm='qfedavg', q=1.0)
  built = test_compiled_engine.build_both(options, clean[0].element_spec)
  *_, (tff_weights, tff_metrics, compiled_weights, compiled_metrics) = test_compiled_engine.run_both(
      options, datasets, rounds=2, processes=built)
  test_compiled_engine.assert_weights_close(tff_weights, compiled_weights)
  _, process = built  # The compiled process, again on the same or fewer clients.
  initial = tff_model.initial_weights(test_compiled_engine.keras_model, seed=1)
  with_it = _train(process, initial, None, 2, batches=compiled.from_datasets(datasets))
  without_it = _train(process, initial, None, 2, batches=compiled.from_datasets([clean[0], clean[2]]))
  for a, b in zip(with_it, without_it):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert compiled_metrics['client_work']['train']['num_examples'] == (
      tff_metrics['client_work']['train']['num_examples'])


def test_batch_normalization_runs_as_in_tff():
  """The loss pass at w_t runs in inference mode (moving statistics, which it leaves
  unchanged); both engines agree, and the server keeps its non-trainable weights."""
  model_fn = test_compiled_engine.batch_norm_model
  datasets = test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))
  options = dict(algorithm='qfedavg', q=1.0)
  tff_process = fedtff.build_learning_process(model_fn, datasets[0], **options)
  compiled_process = compiled.build_compiled_process(model_fn, datasets[0], **options)
  weights = tff_model.initial_weights(model_fn, seed=2)
  weights = weights._replace(
      non_trainable=[w + 0.25 * (k + 1) for k, w in enumerate(weights.non_trainable)])
  tff_state = tff_process.set_model_weights(tff_process.initialize(), weights)
  compiled_state = compiled_process.set_model_weights(compiled_process.initialize(), weights)
  batches = compiled.from_datasets(datasets)
  for _ in range(2):
    tff_output = tff_process.next(tff_state, datasets)
    tff_state = tff_output.state
    compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
    expected = tff_process.get_model_weights(tff_state)
    actual = compiled_process.get_model_weights(compiled_state)
    test_compiled_engine.assert_weights_close(expected, actual)
    for a, b in zip(expected.non_trainable, actual.non_trainable):
      np.testing.assert_allclose(a, b, atol=1e-5)
    for name in ('loss', 'accuracy', 'num_examples'):
      assert compiled_metrics['client_work']['train'][name] == pytest.approx(
          tff_output.metrics['client_work']['train'][name], abs=1e-5)
