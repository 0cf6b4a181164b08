"""The compiled engine on examples of varying shape: TFF's weights and metrics.

Clients hold token sequences of varying length, or images of varying size,
batched with `padded_batch`, so that each batch has its own shape; the
compiled engine cuts each batch back to that shape in its graph
(`fedtff.compiled.batch_at`). Every comparison is against the TFF-built
process or TFF's federated evaluation, over several rounds.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import compiled
from fedtff.algorithms import evaluation as tff_evaluation

ROUNDS = 3
VOCAB, NUM_CLASSES, BATCH_SIZE = 12, 3, 4
TRAIN_SIZES = {'a': 9, 'b': 4, 'c': 11}  # Partial last batches; b has a single batch.
HELD_OUT_SIZES = {'d': 7, 'e': 5}


def _sequences(num, rng):
  """`num` sequences of 1 to 9 tokens (1 .. VOCAB-1; 0 pads) and their labels."""
  tokens = [rng.integers(1, VOCAB, size=n).astype(np.int32) for n in rng.integers(1, 10, num)]
  return tokens, np.asarray([t[0] % NUM_CLASSES for t in tokens], np.int32)


def _images(num, rng):
  """`num` one-channel images of 3x3 to 7x6 pixels and their labels."""
  images = [rng.normal(size=(h, w, 1)).astype(np.float32)
            for h, w in zip(rng.integers(3, 8, num), rng.integers(3, 7, num))]
  return images, np.asarray([int(i.mean() > 0) + int(i.shape[0] > 5) for i in images], np.int32)


def _client_data(make, sizes, seed, batched=True, padded_shapes=None):
  """`make`'s examples as a `ClientData` whose clients are batched with `padded_batch`
  (to `padded_shapes` if given; unless not `batched`)."""
  rng = np.random.default_rng(seed)
  owners, examples, labels = [], [], []
  for client_id, n in sizes.items():
    client_examples, client_labels = make(n, rng)
    owners += [client_id] * n
    examples += client_examples
    labels.append(client_labels)
  ragged = tf.ragged.constant([e.tolist() for e in examples], dtype=examples[0].dtype,
                              ragged_rank=min(examples[0].ndim, 2))
  every = tf.data.Dataset.from_tensor_slices((tf.constant(owners), ragged,
                                              tf.constant(np.concatenate(labels))))

  def dense(owner, x, y):
    del owner
    return (x.to_tensor() if isinstance(x, tf.RaggedTensor) else x), y

  def dataset_fn(client_id):
    def owned(owner, x, y):
      del x, y
      return tf.equal(owner, client_id)
    examples = every.filter(owned).map(dense)
    return examples.padded_batch(BATCH_SIZE, padded_shapes) if batched else examples

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(list(sizes), dataset_fn)


def sequence_model(mask_zero):
  """Embedding, average over the sequence (Keras's mask skips padding), Dense."""
  return tf.keras.Sequential([
      tf.keras.Input([None], dtype=tf.int32),
      tf.keras.layers.Embedding(VOCAB, 5, mask_zero=mask_zero),
      tf.keras.layers.GlobalAveragePooling1D(),
      tf.keras.layers.Dense(NUM_CLASSES)])


def image_model():
  """A convolution over images of any size, pooled to one vector per image."""
  return tf.keras.Sequential([
      tf.keras.Input([None, None, 1]),
      tf.keras.layers.Conv2D(4, 3, padding='same', activation='relu'),
      tf.keras.layers.GlobalMaxPooling2D(),
      tf.keras.layers.Dense(NUM_CLASSES)])


TASKS = {
    'masked_sequences': (lambda: sequence_model(True), _sequences),
    'sequences': (lambda: sequence_model(False), _sequences),
    'images': (image_model, _images),
}


def _assert_weights_close(expected, actual):
  assert len(expected.trainable) == len(actual.trainable)
  for a, b in zip(expected.trainable, actual.trainable):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _assert_metrics_close(expected, actual, path=''):
  if isinstance(expected, dict):
    assert list(expected) == list(actual), path
    for key in expected:
      _assert_metrics_close(expected[key], actual[key], f'{path}/{key}')
  elif isinstance(expected, (tuple, list)):
    assert len(expected) == len(actual), path
    for k, (a, b) in enumerate(zip(expected, actual)):
      _assert_metrics_close(a, b, f'{path}/{k}')
  else:
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               atol=1e-5, err_msg=path)


def _run_both(model_fn, client_data, options, batches):
  """ROUNDS rounds of the TFF and the compiled process from the same weights."""
  datasets = [client_data.create_tf_dataset_for_client(c) for c in client_data.client_ids]
  tff_process = fedtff.build_learning_process(model_fn, datasets[0], **options)
  process = compiled.build_compiled_process(model_fn, datasets[0], **options)
  tff_state = tff_process.initialize()
  state = process.set_model_weights(process.initialize(), tff_process.get_model_weights(tff_state))
  for _ in range(ROUNDS):
    tff_output = tff_process.next(tff_state, datasets)
    tff_state = tff_output.state
    state, metrics = process.next(state, batches)
    _assert_weights_close(tff_process.get_model_weights(tff_state), process.get_model_weights(state))
    _assert_metrics_close(tff_output.metrics, metrics)
  return process.get_model_weights(state)


@pytest.mark.parametrize('task', sorted(TASKS))
def test_rounds_and_held_out_evaluation_match_tff(task):
  model_fn, make = TASKS[task]
  train = _client_data(make, TRAIN_SIZES, seed=1)
  held_out = _client_data(make, HELD_OUT_SIZES, seed=2)
  options = dict(algorithm='fedavg', client_optimizer=fedtff.build_optimizer('sgd', 0.5))
  weights = _run_both(model_fn, train, options,
                      compiled.PaddedClientData(train).batches(train.client_ids))

  tff_eval = tff_evaluation.build_evaluation(model_fn, held_out.element_type_structure)
  tff_eval_state = tff_eval.set_model_weights(tff_eval.initialize(), weights)
  expected = tff_eval.next(tff_eval_state, [held_out.create_tf_dataset_for_client(c)
                                            for c in held_out.client_ids])
  expected = expected.metrics['client_work']['eval']['current_round_metrics']
  result = compiled.CompiledEvaluation(model_fn, held_out)(weights)
  assert list(result.pooled) == list(expected)
  for name, value in expected.items():
    assert result.pooled[name] == pytest.approx(float(value), abs=1e-5), name
  assert result.pooled['num_examples'] == sum(HELD_OUT_SIZES.values())


@pytest.mark.parametrize('options', [
    dict(algorithm='fedadam', client_optimizer=fedtff.build_optimizer('sgd', 0.5)),
    dict(algorithm='fedprox', proximal_strength=0.3),
    dict(algorithm='fedsgd', server_optimizer=fedtff.build_optimizer('sgd', 1.0)),
    dict(algorithm='mimelite'),
], ids=lambda options: options['algorithm'])
def test_other_algorithms_match_tff_on_sequences(options):
  train = _client_data(_sequences, TRAIN_SIZES, seed=3)
  datasets = [train.create_tf_dataset_for_client(c) for c in train.client_ids]
  _run_both(lambda: sequence_model(True), train, options, compiled.from_datasets(datasets))


def test_clients_read_on_demand_pad_to_the_largest_shape_so_far():
  train = _client_data(_images, TRAIN_SIZES, seed=4)
  data = compiled.PaddedClientData(train, resident=False, batch_size=BATCH_SIZE)
  first = data.batches(['b'])
  both = data.batches(['b', 'a'])
  for batches, ids in ((first, ['b']), (both, ['b', 'a'])):
    _assert_batches_are(batches, [train.create_tf_dataset_for_client(c) for c in ids])


def _assert_batches_are(batches, datasets):
  """`batch_at` gives the datasets' batches, in order, on the real rows."""
  expected = [(x.numpy(), y.numpy()) for d in datasets for x, y in d]
  got = [compiled.batch_at(batches, tf.constant(first + k))
         for first, count in zip(batches.first_batch.numpy(), batches.num_batches.numpy())
         for k in range(count)]
  assert len(got) == len(expected)
  for ((x, y), mask), (ex, ey) in zip(got, expected):
    np.testing.assert_array_equal(x.numpy()[mask.numpy()], ex)
    np.testing.assert_array_equal(y.numpy()[mask.numpy()], ey)


def test_sequences_padded_to_one_length_are_read_in_one_pipeline():
  train = _client_data(_sequences, TRAIN_SIZES, seed=7, padded_shapes=([9], []))
  assert compiled.batches.has_fixed_shapes(train.element_type_structure)
  batches = compiled.PaddedClientData(train).batches(['c', 'a', 'b'])
  assert batches.batch_shapes == ()
  _assert_batches_are(batches, [train.create_tf_dataset_for_client(c) for c in ['c', 'a', 'b']])


def test_round_batches_are_the_rounds_shuffled_batches():
  raw = _client_data(_sequences, TRAIN_SIZES, seed=6, batched=False)

  def preprocess(dataset, seed):
    return dataset.shuffle(16, seed=fedtff.data.rounds.shuffle_seed(seed)).padded_batch(BATCH_SIZE)

  train = fedtff.data.RoundClientData(raw, preprocess, seed=3)
  reader = compiled.RoundBatches(train, batch_size=BATCH_SIZE)
  for round_num, ids in ((1, ['c', 'a']), (2, ['b', 'c'])):
    _assert_batches_are(reader.batches(round_num, ids),
                        [train.create_tf_dataset_for_client(c, round_num=round_num) for c in ids])


def test_xla_on_examples_of_varying_shape_is_refused():
  train = _client_data(_sequences, TRAIN_SIZES, seed=5)
  with pytest.raises(ValueError, match='jit_compile=True needs examples of one fixed shape'):
    compiled.build_compiled_process(lambda: sequence_model(True), train.element_type_structure,
                                    jit_compile=True)

