"""The compiled engine's client learning-rate schedules and Mime Lite: TFF's weights,
metrics and state, round after round, from the same state."""

import math

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff import compiled
from tests import conftest
from tests import test_compiled_engine

ROUNDS = 3
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def datasets():
  """Clients of 13, 37 and 40 examples in batches of 8 (test_compiled_engine's)."""
  arrays = conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES)
  return test_compiled_engine.client_datasets(*arrays)


@pytest.fixture(scope='module')
def processes(datasets):
  """`processes(case)`: the case's TFF and compiled processes, built once per module."""
  built = {}

  def get(case):
    if case not in built:
      options = {**SCHEDULES, **MIME}[case]
      spec = datasets[0].element_spec
      built[case] = (
          fedtff.build_learning_process(test_compiled_engine.keras_model, spec, **options),
          compiled.build_compiled_process(test_compiled_engine.keras_model, spec, **options))
    return built[case]

  return get


def run_both(tff_process, compiled_process, datasets, rounds=ROUNDS):
  """Both processes from TFF's initial state; yields `(tff_state, tff_metrics,
  compiled_state, compiled_metrics)` per round."""
  tff_state = tff_process.initialize()
  compiled_state = compiled_process.from_tff_state(tff_state)
  batches = compiled.from_datasets(datasets)
  for _ in range(rounds):
    tff_state, tff_metrics = tff_process.next(tff_state, datasets)
    compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
    yield tff_state, tff_metrics, compiled_state, compiled_metrics


def assert_close(expected, actual, what):
  """Same structure, every leaf within TOLERANCE (NaN equals NaN)."""
  tf.nest.assert_same_structure(expected, actual, check_types=False)
  for path, (want, got) in enumerate(zip(tf.nest.flatten(expected), tf.nest.flatten(actual))):
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=f'{what}, leaf {path}')


def assert_round_matches(tff_state, tff_metrics, compiled_state, compiled_metrics):
  assert_close(tff_metrics, compiled_metrics, 'metrics')
  for field in ('global_model_weights', 'client_work', 'finalizer'):
    assert_close(getattr(tff_state, field), getattr(compiled_state, field), f'state {field}')


# Client learning-rate schedules (Reddi et al., ICLR 2021), each kind; the decay
# counts whole rounds (decay_steps=1), so the rate changes within ROUNDS rounds.
SCHEDULES = {
    'constant_warmup': dict(algorithm='fedavg', client_learning_rate_schedule=fedtff.Schedule(
        'constant', learning_rate=0.3, warmup_rounds=2)),
    'exp_decay_staircase_warmup': dict(
        algorithm='fedadam', client_optimizer=fedtff.build_optimizer_fn('sgd', momentum=0.5),
        client_learning_rate_schedule=fedtff.Schedule(
            'exp_decay', learning_rate=0.3, decay_rate=0.5, decay_steps=1, staircase=True,
            warmup_rounds=1)),
    'inv_lin_decay': dict(algorithm='fedavgm', client_learning_rate_schedule=fedtff.Schedule(
        'inv_lin_decay', learning_rate=0.3, decay_rate=2.0, decay_steps=1)),
    'inv_sqrt_decay': dict(
        algorithm='fedadagrad', client_optimizer=fedtff.build_optimizer_fn('adam'),
        client_learning_rate_schedule=fedtff.Schedule(
            'inv_sqrt_decay', learning_rate=0.03, decay_rate=3.0, decay_steps=1)),
}

# The client learning rates of rounds 0, 1, 2, by hand from Reddi et al.'s formulas.
EXPECTED_RATES = {
    'constant_warmup': [0.3 * 1 / 2, 0.3 * 2 / 2, 0.3],
    'exp_decay_staircase_warmup': [0.3, 0.3, 0.3 * 0.5],
    'inv_lin_decay': [0.3, 0.3 / 3, 0.3 / 5],
    'inv_sqrt_decay': [0.03, 0.03 / 2, 0.03 / math.sqrt(7)],
}


@pytest.mark.parametrize('name', sorted(SCHEDULES))
def test_schedules_match_tff(name, datasets, processes):
  tff_process, compiled_process = processes(name)
  rates = []
  for round_num, outputs in enumerate(run_both(tff_process, compiled_process, datasets), 1):
    assert_round_matches(*outputs)
    tff_state, _, compiled_state, compiled_metrics = outputs
    assert int(compiled_state.client_work) == int(tff_state.client_work) == round_num
    assert compiled_metrics['client_work']['train']['num_examples'] == 90
    rates.append(compiled_metrics['client_work']['client_learning_rate'])
  np.testing.assert_allclose(rates, EXPECTED_RATES[name], rtol=1e-6)


def _two_compiled_rounds_then_one_on_each(processes, name, datasets, check_tff_state):
  """Runs 2 compiled rounds, converts the state to TFF's (checked by `check_tff_state`),
  then one more round on each engine; returns both rounds' states and metrics."""
  tff_process, compiled_process = processes(name)
  batches = compiled.from_datasets(datasets)
  compiled_state = compiled_process.initialize()
  for _ in range(2):
    compiled_state, _ = compiled_process.next(compiled_state, batches)
  tff_state = compiled_process.to_tff_state(compiled_state, tff_process)
  check_tff_state(tff_state)
  return (*tff_process.next(tff_state, datasets), *compiled_process.next(compiled_state, batches),
          compiled_process)


def test_a_scheduled_state_converts_to_and_from_tff(datasets, processes):
  """The round number the schedule reads survives a round trip through TFF's state."""
  def round_two(tff_state):
    assert int(tff_state.client_work) == 2
  tff_state, tff_metrics, compiled_state, compiled_metrics, compiled_process = (
      _two_compiled_rounds_then_one_on_each(processes, 'exp_decay_staircase_warmup', datasets,
                                        round_two))
  assert compiled_metrics['client_work']['client_learning_rate'] == pytest.approx(0.3 * 0.5)
  assert_round_matches(tff_state, tff_metrics, compiled_state, compiled_metrics)
  assert_close(compiled_process.from_tff_state(tff_state), compiled_state, 'state')


def test_schedule_options_are_refused_as_on_tff(datasets):
  schedule = fedtff.Schedule('exp_decay')
  spec = datasets[0].element_spec
  with pytest.raises(ValueError, match=r'^Client learning-rate schedules need weighted=True'):
    compiled.build_compiled_process(test_compiled_engine.keras_model, spec, weighted=False,
                            client_learning_rate_schedule=schedule)
  with pytest.raises(TypeError, match='pass the client optimizer as a function of the learning'):
    compiled.build_compiled_process(test_compiled_engine.keras_model, spec,
                            client_optimizer=fedtff.build_optimizer('sgd', 0.1),
                            client_learning_rate_schedule=schedule)
  with pytest.raises(ValueError, match='combine with the FedAvg family .* not with fedprox'):
    compiled.build_compiled_process(test_compiled_engine.keras_model, spec, algorithm='fedprox',
                            proximal_strength=0.1, client_learning_rate_schedule=schedule)


# Mime Lite (Karimireddy et al., NeurIPS 2021): the base optimizer's state is
# the client work state, updated at the server with the averaged full gradient.
MIME = {
    'weighted_sgdm': dict(algorithm='mimelite'),  # SGD 0.1, momentum 0.9 (the registry's).
    'weighted_adam': dict(algorithm='mimelite', client_optimizer=fedtff.build_optimizer('adam', 0.01)),
    'unweighted_adam_server_adam': dict(
        algorithm='mimelite', weighted=False, client_optimizer=fedtff.build_optimizer('adam', 0.01),
        server_optimizer=fedtff.build_optimizer('adam', 0.05)),
}


@pytest.mark.parametrize('name', sorted(MIME))
def test_mime_lite_matches_tff(name, datasets, processes):
  tff_process, compiled_process = processes(name)
  for outputs in run_both(tff_process, compiled_process, datasets):
    assert_round_matches(*outputs)
    _, tff_metrics, _, compiled_metrics = outputs
    assert list(compiled_metrics['client_work']) == ['train']
    assert compiled_metrics['client_work']['train']['num_batches'] == 12  # The training pass's.
  base_state = outputs[2].client_work[0]  # The learning rate lives in the base state.
  assert float(base_state['learning_rate']) == pytest.approx(0.01 if 'adam' in name else 0.1)
  if 'adam' in name:
    assert int(base_state['step']) == ROUNDS  # One server update of the base state per round.


def test_mime_lite_round_by_hand(datasets, processes):
  """One weighted round against NumPy: full gradients at the server model, local
  SGD steps with the server's momentum buffer frozen, the example-weighted means
  of the deltas and of the gradients, and the momentum buffer updated with the
  mean gradient."""
  learning_rate, momentum = 0.1, 0.9
  _, compiled_process = processes('weighted_sgdm')  # SGD 0.1, momentum 0.9; server SGD 1.0.
  state = compiled_process.initialize()
  buffer = [np.full(np.shape(w), 0.01, np.float32) for w in state.global_model_weights.trainable]
  optimizer_state = dict(state.client_work[0], accumulator=buffer)
  state = state._replace(client_work=(tf.nest.map_structure(tf.constant, optimizer_state),
                                      state.client_work[1]))
  new_state, _ = compiled_process.next(state, compiled.from_datasets(datasets))

  model = test_compiled_engine.keras_model()
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  start = [np.asarray(w) for w in state.global_model_weights.trainable]

  def gradient(weights, x, y):
    for variable, value in zip(model.trainable_variables, weights):
      variable.assign(value)
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

  deltas, gradients, sizes = [], [], []
  for dataset in datasets:
    batches = [(b['x'].numpy(), b['y'].numpy()) for b in dataset]
    size = sum(len(y) for _, y in batches)
    full = [sum(len(y) * g[i] for (x, y), g in zip(batches, [gradient(start, *b)
                                                            for b in batches])) / size
            for i in range(len(start))]
    weights = [w.copy() for w in start]
    for x, y in batches:  # SGD with momentum, the buffer frozen at the server's.
      grads = gradient(weights, x, y)
      weights = [w - learning_rate * (momentum * m + g) for w, m, g in zip(weights, buffer, grads)]
    deltas.append([w0 - w for w0, w in zip(start, weights)])
    gradients.append(full)
    sizes.append(size)
  mean = lambda values: [sum(s * v[i] for s, v in zip(sizes, values)) / sum(sizes)
                         for i in range(len(start))]
  expected_weights = [w - d for w, d in zip(start, mean(deltas))]  # Server SGD 1.0.
  expected_buffer = [momentum * m + g for m, g in zip(buffer, mean(gradients))]
  for want, got in zip(expected_weights, new_state.global_model_weights.trainable):
    np.testing.assert_allclose(got, want, atol=1e-5)
  for want, got in zip(expected_buffer, new_state.client_work[0]['accumulator']):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_mime_lite_state_converts_to_and_from_tff(datasets, processes):
  def step_two(tff_state):
    assert int(tff_state.client_work[0]['step']) == 2
  tff_state, tff_metrics, compiled_state, compiled_metrics, compiled_process = (
      _two_compiled_rounds_then_one_on_each(processes, 'unweighted_adam_server_adam', datasets,
                                        step_two))
  assert_round_matches(tff_state, tff_metrics, compiled_state, compiled_metrics)
  assert_close(compiled_process.from_tff_state(tff_state), compiled_state, 'state')


def test_a_non_finite_mime_lite_client_is_treated_as_in_tff(processes):
  """A client with an infinite feature: its delta is zeroed and weighted 0, its
  NaN gradient still enters the gradient mean (TFF zeroes only the delta), and
  (Mime Lite resets no metrics) its metrics still count, as in TFF.

  Without XLA: XLA's argmax of an all-NaN row is the last class, TensorFlow's
  the first, so the accuracy of NaN predictions differs under XLA
  (docs/performance.md).
  """
  features, labels = conftest.tiny_classification_arrays(
      num_features=test_compiled_engine.NUM_FEATURES)
  features[20, 0] = np.inf  # In the second client.
  datasets = test_compiled_engine.client_datasets(features, labels)
  tff_process, _ = processes('weighted_sgdm')
  compiled_process = compiled.build_compiled_process(test_compiled_engine.keras_model, datasets[0],
                                         **MIME['weighted_sgdm'], jit_compile=False)
  (outputs,) = run_both(tff_process, compiled_process, datasets, rounds=1)
  assert_round_matches(*outputs)
  compiled_state, compiled_metrics = outputs[2:]
  assert compiled_metrics['client_work']['train']['num_examples'] == 90
  assert np.isnan(compiled_metrics['client_work']['train']['loss'])
  assert np.isnan(compiled_state.client_work[0]['accumulator'][0]).all()
  assert np.isfinite(compiled_state.global_model_weights.trainable[0]).all()
