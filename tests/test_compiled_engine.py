"""The compiled engine: the same weights and metrics as the TFF process, round after round."""

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff.runner import checkpoints
from fedtff import compiled
from tests import conftest

NUM_FEATURES = 8
ROUNDS = 5
# Clients of 13, 37 and 40 examples in batches of 8: every last batch is partial.
CLIENT_SIZES = (13, 37, 40)


def keras_model():
  return fedtff.models.mlp((NUM_FEATURES,), 3, hidden_units=(6,))


def client_datasets(features, labels):
  bounds = np.cumsum((0,) + CLIENT_SIZES)
  client_data = fedtff.data.from_arrays(
      features, labels, [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
  return [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]


@pytest.fixture(scope='module')
def datasets():
  return client_datasets(*conftest.tiny_classification_arrays(num_features=NUM_FEATURES))


CASES = {
    'fedavg': dict(algorithm='fedavg'),
    'fedavg_unweighted': dict(algorithm='fedavg', weighted=False),
    'fedavgm': dict(algorithm='fedavgm'),
    'fedadagrad': dict(algorithm='fedadagrad'),
    'fedadam': dict(algorithm='fedadam',
                    client_optimizer=fedtff.build_optimizer('sgd', 0.1, momentum=0.5)),
    'fedyogi': dict(algorithm='fedyogi'),
    'fedprox': dict(algorithm='fedprox', proximal_strength=0.5),
    'fedsgd': dict(algorithm='fedsgd', server_optimizer=fedtff.build_optimizer('sgd', 0.5)),
    'robust_fixed_clip': dict(
        algorithm='fedavg', client_optimizer=fedtff.build_optimizer('sgd', 0.3),
        aggregator=fedtff.AggregatorSpec('robust', clip_norm=0.05, zeroing=True,
                                         zeroing_norm=100.0)),
    'dp_fixed_no_noise': dict(
        algorithm='fedavg', weighted=False,
        aggregator=fedtff.AggregatorSpec('dp', clip_norm=0.05, noise_multiplier=0.0,
                                         clients_per_round=3)),
}


def build_both(options, element_spec, **compiled_options):
  """The TFF and the compiled process of `keras_model` with the builder `options`."""
  return (fedtff.build_learning_process(keras_model, element_spec, **options),
          compiled.build_compiled_process(keras_model, element_spec, **options,
                                          **compiled_options))


def build_cases(cases, element_spec):
  """`cases` name -> (TFF process, compiled process), each built once: the tests of a
  file share them (a round changes no process, only its state)."""
  return functools.lru_cache(maxsize=None)(
      lambda name: build_both(cases[name], element_spec))


@pytest.fixture(scope='module')
def built(datasets):
  return build_cases(CASES, datasets[0].element_spec)


def run_both(options, datasets, rounds=ROUNDS, *, processes=None, **compiled_options):
  """Runs the TFF and the compiled process (`processes`, or built from `options`) from
  the same weights; yields per-round pairs."""
  tff_process, compiled_process = processes or build_both(options, datasets[0],
                                                          **compiled_options)
  tff_state = tff_process.initialize()
  compiled_state = compiled_process.set_model_weights(compiled_process.initialize(),
                                              tff_process.get_model_weights(tff_state))
  for tff_output, compiled_state, compiled_metrics in step_both(
      tff_process, compiled_process, tff_state, compiled_state, datasets, rounds):
    yield (tff_process.get_model_weights(tff_output.state), tff_output.metrics,
           compiled_process.get_model_weights(compiled_state), compiled_metrics)


def step_both(tff_process, compiled_process, tff_state, compiled_state, datasets, rounds):
  """Both processes' rounds from the given states; yields (TFF output, compiled state, metrics)."""
  batches = compiled.from_datasets(datasets)
  for _ in range(rounds):
    tff_output = tff_process.next(tff_state, datasets)
    tff_state = tff_output.state
    compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
    yield tff_output, compiled_state, compiled_metrics


def assert_weights_close(expected, actual, atol=1e-5):
  for a, b in zip(expected.trainable, actual.trainable):
    np.testing.assert_allclose(a, b, atol=atol)


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_the_tff_process(name, datasets, built):
  for tff_weights, tff_metrics, compiled_weights, compiled_metrics in run_both(
      CASES[name], datasets, processes=built(name)):
    tff_train = tff_metrics['client_work']['train']
    compiled_train = compiled_metrics['client_work']['train']
    assert list(compiled_train) == list(tff_train)
    assert compiled_train['loss'] == pytest.approx(tff_train['loss'], abs=1e-5)
    assert compiled_train['accuracy'] == pytest.approx(tff_train['accuracy'], abs=1e-6)
    assert (compiled_train['num_examples'], compiled_train['num_batches']) == (90, 12)
    assert tf.nest.map_structure(np.shape, compiled_metrics['aggregator']) == tf.nest.map_structure(
        np.shape, tff_metrics['aggregator'])
  assert_weights_close(tff_weights, compiled_weights)


def test_matches_without_xla(datasets):
  *_, (tff_weights, _, compiled_weights, _) = run_both(CASES['fedavgm'], datasets, rounds=2,
                                                    jit_compile=False)
  assert_weights_close(tff_weights, compiled_weights)


def test_a_non_finite_client_is_dropped_as_in_tff(built):
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  features[20, 0] = np.inf  # In the second client.
  datasets = client_datasets(features, labels)
  *_, (tff_weights, tff_metrics, compiled_weights, compiled_metrics) = run_both(
      CASES['fedavg'], datasets, rounds=2, processes=built('fedavg'))
  assert_weights_close(tff_weights, compiled_weights)
  assert compiled_metrics['client_work']['train'] == pytest.approx(
      tff_metrics['client_work']['train'], abs=1e-6)
  assert compiled_metrics['client_work']['train']['num_examples'] == 13 + 40


def test_state_converts_to_and_from_the_tff_state(datasets, built):
  tff_process, compiled_process = built('fedadam')
  batches = compiled.from_datasets(datasets)
  compiled_state = compiled_process.initialize()
  for _ in range(2):
    compiled_state, _ = compiled_process.next(compiled_state, batches)
  tff_state = compiled_process.to_tff_state(compiled_state, tff_process)
  assert tff_state.finalizer['step'] == 2
  tff_state = tff_process.next(tff_state, datasets).state
  compiled_state, _ = compiled_process.next(compiled_state, batches)
  assert_weights_close(tff_process.get_model_weights(tff_state),
                       compiled_process.get_model_weights(compiled_state))
  back = compiled_process.from_tff_state(tff_state)
  tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                        back, compiled_state)
  # A TFF state serves as the template as well as the process does (no TFF call).
  tf.nest.map_structure(np.testing.assert_array_equal,
                        compiled_process.to_tff_state(compiled_state, tff_state),
                        compiled_process.to_tff_state(compiled_state, tff_process))
  with pytest.raises(TypeError, match='a TFF LearningProcess or one of its states'):
    compiled_process.to_tff_state(compiled_state, compiled_state.global_model_weights)


def test_checkpoints_of_the_fast_state_restore_on_either_engine(datasets, built, tmp_path):
  tff_process, compiled_process = built('fedavgm')
  state, _ = compiled_process.next(compiled_process.initialize(), compiled.from_datasets(datasets))
  checkpoints.save(str(tmp_path), 1, compiled_process.to_tff_state(state, tff_process),
                          elapsed_s=0.0)
  restored, round_num = checkpoints.restore_latest(str(tmp_path), tff_process.initialize())[:2]
  assert round_num == 1
  tf.nest.map_structure(np.testing.assert_array_equal,
                        compiled_process.from_tff_state(restored), state)


def test_padded_client_data_gives_the_datasets_batches(datasets):
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  bounds = np.cumsum((0,) + CLIENT_SIZES)
  client_data = fedtff.data.from_arrays(
      features, labels, [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
  batched = client_data.preprocess(lambda d: d.batch(8))
  expected = compiled.from_datasets(datasets)
  for resident in (False, True):
    padded = compiled.PaddedClientData(batched, resident=resident).batches(['2', '0'])
    np.testing.assert_array_equal(padded.num_batches, [5, 2])
    for k, position in enumerate([2, 0]):
      got = range(padded.first_batch[k], padded.first_batch[k] + padded.num_batches[k])
      want = range(expected.first_batch[position],
                   expected.first_batch[position] + expected.num_batches[position])
      for name in ('x', 'y'):
        np.testing.assert_array_equal(tf.gather(padded.data[name], list(got)),
                                      tf.gather(expected.data[name], list(want)))
      np.testing.assert_array_equal(tf.gather(padded.mask, list(got)),
                                    tf.gather(expected.mask, list(want)))


def test_padded_client_data_shuffles_as_tff_whatever_the_global_seed():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels, [np.arange(40), np.arange(40, 90)])
  client_data = client_data.preprocess(fedtff.batch_fn(batch_size=8, shuffle_buffer=100, seed=1))
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:  # As TFF: a graph, no seed.
    expected = session.run(client_data.serializable_dataset_fn('1').map(
        lambda batch: batch['y']).unbatch().batch(100).get_single_element())
  for seed in (0, 7):
    tf.keras.utils.set_random_seed(seed)
    padded = compiled.PaddedClientData(client_data).batches(['1'])
    own = slice(int(padded.first_batch[0]), int(padded.first_batch[0] + padded.num_batches[0]))
    np.testing.assert_array_equal(tf.boolean_mask(padded.data['y'][own], padded.mask[own]),
                                  expected)


def test_padding_masks_partial_batches(datasets):
  batches = compiled.from_datasets(datasets[:1])  # 13 examples: batches of 8 and 5.
  np.testing.assert_array_equal(tf.reduce_sum(tf.cast(batches.mask, tf.int32), axis=1), [8, 5])
  np.testing.assert_array_equal(batches.data['y'][1, 5:], batches.data['y'][1, :3])


def test_selected_clients_train_in_the_given_order(datasets, built):
  _, process = built('fedavg')  # The builder's defaults.
  initial = process.initialize()
  batches = compiled.from_datasets(datasets)
  _, whole = process.next(initial, compiled.from_datasets([datasets[2], datasets[0]]))
  _, selected = process.next(initial, compiled.select(batches, [2, 0]))
  assert selected['client_work']['train'] == whole['client_work']['train']
  assert selected['client_work']['train']['num_examples'] == 53


def batch_norm_model():
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(NUM_FEATURES,)),
      tf.keras.layers.Dense(5), tf.keras.layers.BatchNormalization(momentum=0.5),
      tf.keras.layers.Dense(3)])


@pytest.mark.parametrize('algorithm', ['fedavg', 'fedsgd'])
def test_batch_normalization_runs_as_in_tff(algorithm, datasets):
  """Batch statistics of the real rows only; the server keeps its non-trainable
  weights (TFF's apply_optimizer_finalizer updates the trainable ones)."""
  tff_process = fedtff.build_learning_process(batch_norm_model, datasets[0], algorithm=algorithm)
  compiled_process = compiled.build_compiled_process(batch_norm_model, datasets[0], algorithm=algorithm)
  weights = fedtff.algorithms.tff_model.initial_weights(batch_norm_model, seed=2)
  # Non-default moving statistics, to see that the server keeps them.
  weights = tff.learning.models.ModelWeights(
      weights.trainable, [w + 0.25 * (k + 1) for k, w in enumerate(weights.non_trainable)])
  tff_state = tff_process.set_model_weights(tff_process.initialize(), weights)
  compiled_state = compiled_process.set_model_weights(compiled_process.initialize(), weights)
  batches = compiled.from_datasets(datasets)
  for _ in range(3):
    tff_output = tff_process.next(tff_state, datasets)
    tff_state = tff_output.state
    compiled_state, compiled_metrics = compiled_process.next(compiled_state, batches)
    expected = tff_process.get_model_weights(tff_state)
    actual = compiled_process.get_model_weights(compiled_state)
    assert_weights_close(expected, actual)
    assert len(actual.non_trainable) == 2
    for a, b, initial in zip(expected.non_trainable, actual.non_trainable, weights.non_trainable):
      np.testing.assert_allclose(a, b, atol=1e-5)
      np.testing.assert_array_equal(b, initial)
    for name in ('loss', 'accuracy', 'num_examples'):
      assert compiled_metrics['client_work']['train'][name] == pytest.approx(
          tff_output.metrics['client_work']['train'][name], abs=1e-5)
  moved = max(np.abs(a - w).max() for a, w in zip(actual.trainable, weights.trainable))
  assert moved > 1e-2


@pytest.mark.parametrize(
    'options, message',
    [
        (dict(aggregator=tff.aggregators.MeanFactory()), 'custom tff.aggregators factories'),
        (dict(element_spec=(tf.RaggedTensorSpec([None, None], tf.float32),
                            tf.TensorSpec([None], tf.int32))), 'hold dense tensors'),
        (dict(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                 reduction='none')),
         "reduction='none'"),
    ],
    ids=['tff_factory', 'ragged_examples',
         'loss_without_reduction'])
def test_refuses_what_it_does_not_implement(options, message, datasets):
  options = dict(options)
  model_fn = options.pop('model_fn', keras_model)
  element_spec = options.pop('element_spec', datasets[0].element_spec)
  with pytest.raises(ValueError, match=message) as raised:
    compiled.build_compiled_process(model_fn, element_spec, **options)
  assert "use engine='tff'" in str(raised.value)


def test_shares_the_tff_builders_checks(datasets):
  with pytest.raises(ValueError, match='required by fedprox'):
    compiled.build_compiled_process(keras_model, datasets[0], algorithm='fedprox')
  with pytest.raises(ValueError, match='dp aggregator is unweighted'):
    compiled.build_compiled_process(keras_model, datasets[0], aggregator=fedtff.AggregatorSpec(
        'dp', noise_multiplier=1.0, clients_per_round=3, clip_norm=1.0))


def test_building_makes_two_keras_models(datasets):
  """One checks that the factory and the data fit (as the TFF builder does); the
  round's working model also gives the state template, so there is no third (an
  LSTM of the Reddi et al. tasks takes ~2 s to build)."""
  models = []
  compiled.build_compiled_process(lambda: models.append(keras_model()) or models[-1],
                                  datasets[0], jit_compile=False)
  assert len(models) == 2


def test_a_tff_state_passed_to_next_is_refused(datasets, built):
  _, process = built('fedavg')
  with pytest.raises(TypeError, match='from_tff_state'):
    process.next(collections.OrderedDict(), compiled.from_datasets(datasets))
