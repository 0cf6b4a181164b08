"""Padded batches: both engines give the loss and metrics of the real rows.

The compiled engine pads every batch to one size; the TFF engine iterates the
unpadded batches. The references are NumPy computations on the real rows.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from fedtff import compiled
from fedtff import tasks

VOCAB, LENGTH, DIM = 7, 5, 3
EOS = VOCAB - 1
MASKED_IDS = (0, EOS)  # Pad and end of sentence, as the sequence tasks mask them.
REAL_ROWS, BATCH = 3, 10


def embedding_model():
  """Logits `E[x] @ W + b` at every position: small enough to recompute in NumPy."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(LENGTH,), dtype='int32'),
      tf.keras.layers.Embedding(VOCAB, DIM), tf.keras.layers.Dense(VOCAB)])


def sequence_options():
  return dict(loss=tasks.MaskedSparseCrossEntropy(),
              metrics=[tasks.MaskedAccuracy(masked_ids=MASKED_IDS)])


def padded_batch():
  """3 real rows padded to 10 with other (unmasked) rows; pads and EOS among the targets."""
  rng = np.random.default_rng(3)
  x = rng.integers(1, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
  y = rng.integers(1, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
  y[0, 3:] = 0  # Padded targets.
  y[1, 4] = 0
  y[2, 1] = EOS
  mask = np.arange(BATCH) < REAL_ROWS
  return x, y, mask


def numpy_loss_and_accuracy(weights, x, y):
  """Masked cross-entropy (mean over non-pad targets) and masked accuracy, in NumPy."""
  embedding, kernel, bias = [np.asarray(w, np.float64) for w in weights.trainable]
  logits = embedding[x] @ kernel + bias
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  cross_entropy = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
  not_pad = y != 0
  loss = cross_entropy[not_pad].sum() / not_pad.sum()
  counted = ~np.isin(y, MASKED_IDS)
  accuracy = (logits.argmax(-1) == y)[counted].mean()
  return loss, accuracy


def test_masked_accuracy_honours_sample_weight():
  x, y, mask = padded_batch()
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(BATCH, LENGTH, VOCAB)).astype(np.float32)
  metric = tasks.MaskedAccuracy(masked_ids=MASKED_IDS)
  metric.update_state(y, logits, sample_weight=mask.astype(np.float32))
  counted = ~np.isin(y[:REAL_ROWS], MASKED_IDS)
  expected = (logits[:REAL_ROWS].argmax(-1) == y[:REAL_ROWS])[counted].mean()
  assert float(metric.result()) == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope='module')
def initial_weights():
  return fedtff.algorithms.tff_model.initial_weights(embedding_model, seed=5)


def first_round_metrics(metrics):
  train = metrics['client_work']['train']
  return train['loss'], train['accuracy'], train['num_examples']


def test_compiled_engine_loss_and_accuracy_are_those_of_the_real_rows(initial_weights):
  x, y, mask = padded_batch()
  process = compiled.build_compiled_process(embedding_model, (tf.TensorSpec([None, LENGTH], tf.int32),) * 2,
                                    **sequence_options())
  state = process.set_model_weights(process.initialize(), initial_weights)
  batches = compiled.ClientBatches(data=(x[None], y[None]), mask=mask[None],
                               first_batch=np.array([0], np.int32),
                               num_batches=np.array([1], np.int32))
  _, metrics = process.next(state, batches)
  loss, accuracy, num_examples = first_round_metrics(metrics)
  expected_loss, expected_accuracy = numpy_loss_and_accuracy(
      initial_weights, x[:REAL_ROWS], y[:REAL_ROWS])
  assert num_examples == REAL_ROWS
  assert loss == pytest.approx(expected_loss, abs=1e-5)
  assert accuracy == pytest.approx(expected_accuracy, abs=1e-6)


def test_tff_engine_loss_and_accuracy_are_those_of_the_real_rows(initial_weights):
  x, y, _ = padded_batch()
  dataset = tf.data.Dataset.from_tensor_slices((x[:REAL_ROWS], y[:REAL_ROWS])).batch(BATCH)
  process = fedtff.build_learning_process(embedding_model, dataset, **sequence_options())
  state = process.set_model_weights(process.initialize(), initial_weights)
  loss, accuracy, num_examples = first_round_metrics(process.next(state, [dataset]).metrics)
  expected_loss, expected_accuracy = numpy_loss_and_accuracy(
      initial_weights, x[:REAL_ROWS], y[:REAL_ROWS])
  assert num_examples == REAL_ROWS
  assert loss == pytest.approx(expected_loss, abs=1e-5)
  assert accuracy == pytest.approx(expected_accuracy, abs=1e-6)


def shakespeare_shaped_clients(client_sizes=(3, 7, 12), batch_size=4, seed=0):
  """Next-character clients: sequences shifted by one, zero-padded tails, an EOS each."""
  rng = np.random.default_rng(seed)
  datasets = []
  for size in client_sizes:
    tokens = rng.integers(1, EOS, size=(size, LENGTH + 1)).astype(np.int32)
    ends = rng.integers(2, LENGTH + 1, size=size)
    for row, end in zip(tokens, ends):
      row[end] = EOS
      row[end + 1:] = 0
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (tokens[:, :-1], tokens[:, 1:])).batch(batch_size))
  return datasets


def small_char_lstm():
  return fedtff.models.char_lstm(VOCAB, sequence_length=LENGTH, embedding_dim=4, lstm_units=5,
                                 num_layers=1)


def test_one_round_on_a_sequence_task_gives_the_tff_weights():
  datasets = shakespeare_shaped_clients()
  options = dict(algorithm='fedavg', client_optimizer=fedtff.build_optimizer('sgd', 0.5),
                 **sequence_options())
  tff_process = fedtff.build_learning_process(small_char_lstm, datasets[0], **options)
  compiled_process = compiled.build_compiled_process(small_char_lstm, datasets[0], **options)
  weights = fedtff.algorithms.tff_model.initial_weights(small_char_lstm, seed=1)
  tff_output = tff_process.next(
      tff_process.set_model_weights(tff_process.initialize(), weights), datasets)
  compiled_state, compiled_metrics = compiled_process.next(
      compiled_process.set_model_weights(compiled_process.initialize(), weights),
      compiled.from_datasets(datasets))
  expected = tff_process.get_model_weights(tff_output.state)
  actual = compiled_process.get_model_weights(compiled_state)
  moved = max(np.abs(a - w).max() for a, w in zip(expected.trainable, weights.trainable))
  assert moved > 1e-2  # The round trained.
  for a, b in zip(expected.trainable, actual.trainable):
    np.testing.assert_allclose(a, b, atol=1e-5)
  tff_train = tff_output.metrics['client_work']['train']
  compiled_train = compiled_metrics['client_work']['train']
  assert compiled_train['num_examples'] == tff_train['num_examples'] == 22
  for name in ('loss', 'accuracy'):
    assert compiled_train[name] == pytest.approx(tff_train[name], abs=1e-5)


def test_fedtff_tff_model_trains_as_tffs_keras_model():
  """The shared forward pass on TFF gives `tff.learning.models.from_keras_model`'s round,
  Keras masks (`Embedding(mask_zero=True)`) included."""
  datasets = shakespeare_shaped_clients()
  optimizer = fedtff.build_optimizer('sgd', 0.5)
  fedtff_process = fedtff.build_learning_process(small_char_lstm, datasets[0],
                                                 algorithm='fedavg', client_optimizer=optimizer,
                                                 **sequence_options())
  tff_process = tff.learning.algorithms.build_weighted_fed_avg(
      lambda: tff.learning.models.from_keras_model(
          small_char_lstm(), loss=tasks.MaskedSparseCrossEntropy(),
          input_spec=datasets[0].element_spec,
          metrics=[tasks.MaskedAccuracy(masked_ids=MASKED_IDS)]),
      optimizer, fedtff.build_optimizer('sgd', 1.0))
  weights = fedtff.algorithms.tff_model.initial_weights(small_char_lstm, seed=1)
  outputs = [process.next(process.set_model_weights(process.initialize(), weights), datasets)
             for process in (fedtff_process, tff_process)]
  for a, b in zip(*[p.get_model_weights(o.state).trainable
                    for p, o in zip((fedtff_process, tff_process), outputs)]):
    np.testing.assert_allclose(a, b, atol=1e-6)
  fedtff_train, tff_train = [o.metrics['client_work']['train'] for o in outputs]
  for name in ('loss', 'accuracy', 'num_examples', 'num_batches'):
    assert fedtff_train[name] == pytest.approx(tff_train[name], abs=1e-6)
