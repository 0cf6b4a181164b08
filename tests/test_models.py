"""The model factories: uncompiled, logits out, and the same size as TFF's baselines."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_federated.python.simulation.baselines.emnist import emnist_models
from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_models
from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_tasks
from tensorflow_federated.python.simulation.baselines.stackoverflow import tag_prediction_tasks
from tensorflow_federated.python.simulation.baselines.stackoverflow import word_prediction_models
from tensorflow_federated.python.simulation.baselines.stackoverflow import (
    word_prediction_preprocessing)
from tensorflow_federated.python.simulation.models import mnist
from tensorflow_federated.python.simulation.models import resnet_models

from fedtff import models
from fedtff.algorithms import tff_model

SHAKESPEARE_VOCAB = char_prediction_tasks.VOCAB_LENGTH  # 86 characters + pad, oov, bos, eos.
SO_WORDS = 10_000


def _so_extended_vocab(num_oov_buckets=1):
  special = word_prediction_preprocessing.get_special_tokens(SO_WORDS, num_oov_buckets)
  return SO_WORDS + special.get_number_of_special_tokens()


# name: (fedtff model kwargs, TFF baseline builder, input batch shape, logits shape).
CASES = {
    'logistic_regression': (
        dict(input_shape=(784,), num_classes=10), mnist.create_simple_keras_model,
        (2, 784), (2, 10)),
    'mlp': (
        dict(input_shape=(28, 28, 1), num_classes=62),
        lambda: emnist_models.create_two_hidden_layer_model(only_digits=False),
        (2, 28, 28, 1), (2, 62)),
    'autoencoder': (
        dict(), emnist_models.create_autoencoder_model, (2, 784), (2, 784)),
    'emnist_cnn': (
        dict(), lambda: emnist_models.create_conv_dropout_model(only_digits=False),
        (2, 28, 28, 1), (2, 62)),
    'fedavg_cnn': (
        dict(), lambda: emnist_models.create_original_fedavg_cnn_model(only_digits=True),
        (2, 28, 28, 1), (2, 10)),
    'char_lstm': (
        dict(vocab_size=SHAKESPEARE_VOCAB),
        lambda: char_prediction_models.create_recurrent_model(SHAKESPEARE_VOCAB, 80),
        (2, 80), (2, 80, SHAKESPEARE_VOCAB)),
    'word_lstm': (
        dict(vocab_size=SO_WORDS),
        lambda: word_prediction_models.create_recurrent_model(_so_extended_vocab()),
        (2, 20), (2, 20, SO_WORDS + 4)),
    'resnet18_group_norm': (
        dict(), lambda: resnet_models.create_resnet18((24, 24, 3), 100),
        (2, 24, 24, 3), (2, 100)),
}

# The same counts by hand (weights + biases per layer), so a change on both sides shows.
EXPECTED_PARAMS = {
    'logistic_regression': 784 * 10 + 10,  # 7,850
    'mlp': (784 * 200 + 200) + (200 * 200 + 200) + (200 * 62 + 62),  # 209,662
    # 784-1000-500-250-30-250-500-1000-784: 2,837,314, as TFF's docstring says.
    'autoencoder': sum(m * n + n for m, n in zip((784, 1000, 500, 250, 30, 250, 500, 1000),
                                                 (1000, 500, 250, 30, 250, 500, 1000, 784))),
    # conv3x3 1->32, conv3x3 32->64, dense 12*12*64 -> 128, dense 128 -> 62: 1,206,590.
    'emnist_cnn': ((9 * 32 + 32) + (9 * 32 * 64 + 64) + (9216 * 128 + 128)
                   + (128 * 62 + 62)),
    # conv5x5 1->32, conv5x5 32->64, dense 7*7*64 -> 512, dense 512 -> 10: 1,663,370.
    'fedavg_cnn': ((25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 512 + 512)
                   + (512 * 10 + 10)),
    # embedding 90x8; LSTM 4 gates x (units x (inputs + units) + units); dense 256 -> 90:
    # 820,522.
    'char_lstm': (90 * 8 + 4 * (256 * (8 + 256) + 256) + 4 * (256 * 512 + 256)
                  + (256 * 90 + 90)),
    # embedding 10004x96; LSTM 96->670; dense 670 -> 96; dense 96 -> 10004.
    'word_lstm': (10_004 * 96 + 4 * (670 * (96 + 670) + 670) + (670 * 96 + 96)
                  + (96 * 10_004 + 10_004)),  # 4,050,748
    'resnet18_group_norm': 11_227_812,  # TFF create_resnet18((24, 24, 3), 100).summary()
}


def _build(name):
  return models.build(name, **CASES[name][0])


def _weight_shapes(model):
  return sorted(tuple(w.shape) for w in model.weights)


def _layers_with_weights(model):
  """Per layer that has weights, in order: its weight shapes and activation name."""
  return [([tuple(w.shape) for w in layer.weights],
           getattr(getattr(layer, 'activation', None), '__name__', None))
          for layer in model.layers if layer.weights]


def test_registry_names_every_factory():
  assert set(models.MODEL_NAMES) == set(CASES)


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_tff_baseline_weights(name):
  model, tff_model = _build(name), CASES[name][1]()
  assert model.count_params() == tff_model.count_params() == EXPECTED_PARAMS[name]
  ours, theirs = _layers_with_weights(model), _layers_with_weights(tff_model)
  assert [shapes for shapes, _ in ours] == [shapes for shapes, _ in theirs]
  # Same activations, except that TFF's classifiers end in a softmax.
  assert [act for _, act in ours[:-1]] == [act for _, act in theirs[:-1]]
  if name == 'autoencoder':  # Its output is the reconstruction: sigmoid on both sides.
    assert ours[-1][1] == theirs[-1][1] == 'sigmoid'


def test_autoencoder_layers_are_tffs():
  ours, theirs = models.autoencoder(), emnist_models.create_autoencoder_model()
  assert [(l.units, l.activation.__name__) for l in ours.layers] == [
      (l.units, l.activation.__name__) for l in theirs.layers]
  assert [l.units for l in ours.layers] == [1000, 500, 250, 30, 250, 500, 1000, 784]
  assert [l.activation.__name__ for l in ours.layers].count('linear') == 1  # The code layer.


def test_tag_prediction_model_is_tffs_logistic_regression_without_the_sigmoid():
  ours = models.logistic_regression(input_shape=(10_000,), num_classes=500)
  theirs = tag_prediction_tasks._build_logistic_regression_model(10_000, 500)  # pylint: disable=protected-access
  assert ours.count_params() == theirs.count_params() == 10_000 * 500 + 500
  assert _layers_with_weights(ours)[0][0] == _layers_with_weights(theirs)[0][0]
  assert theirs.layers[-1].activation.__name__ == 'sigmoid'
  assert ours.layers[-1].activation is tf.keras.activations.linear


def test_emnist_cnn_has_tff_dropout_rates():
  rates = lambda m: [l.rate for l in m.layers if isinstance(l, tf.keras.layers.Dropout)]
  tff_rates = rates(emnist_models.create_conv_dropout_model())
  assert rates(models.emnist_cnn()) == tff_rates == [0.25, 0.5]


@pytest.mark.parametrize('name', sorted(CASES))
def test_builds_uncompiled_model_returning_logits(name):
  _, _, input_shape, logits_shape = CASES[name]
  model = _build(name)
  assert model.optimizer is None and getattr(model, 'compiled_loss', None) is None
  output_activation = (tf.keras.activations.sigmoid if name == 'autoencoder'
                       else tf.keras.activations.linear)
  assert model.layers[-1].activation is output_activation
  inputs = np.ones(input_shape, np.int64 if name.endswith('lstm') else np.float32)
  assert model(inputs).shape == logits_shape


def test_each_call_builds_new_variables():
  first, second = models.emnist_cnn(), models.emnist_cnn()
  assert not {id(v) for v in first.weights} & {id(v) for v in second.weights}


def _layer_types(model):
  return [type(layer).__name__ for layer in model.layers]


def test_emnist_cnn_without_dropout_only_drops_the_dropout_layers():
  with_dropout, without = models.emnist_cnn(), models.emnist_cnn(dropout=False)
  assert [t for t in _layer_types(with_dropout) if t != 'Dropout'] == _layer_types(without)
  assert _layer_types(with_dropout).count('Dropout') == 2
  assert _weight_shapes(with_dropout) == _weight_shapes(without)


def test_image_models_accept_images_without_a_channel_axis():
  for factory in (models.emnist_cnn, models.fedavg_cnn):
    model = factory(input_shape=(28, 28), num_classes=10)
    assert model(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)


def test_word_lstm_output_counts_oov_buckets_and_special_tokens():
  model = models.word_lstm(50, num_oov_buckets=3, embedding_dim=4, lstm_units=5, num_layers=2)
  assert model(np.ones((2, 7), np.int64)).shape == (2, 7, 50 + 3 + 3)
  assert _layer_types(model).count('LSTM') == 2


def test_resnet_uses_group_norm_and_tff_weight_decay():
  model = models.resnet18_group_norm()
  norms = [l for l in model.layers if isinstance(l, models.GroupNormalization)]
  assert norms and {l.groups for l in norms} == {2}
  assert not any(isinstance(l, tf.keras.layers.BatchNormalization) for l in model.layers)
  assert len(model.losses) == len(resnet_models.create_resnet18((24, 24, 3), 100).losses)
  assert not models.resnet18_group_norm(weight_decay=0.0).losses


@pytest.mark.parametrize('shape, groups', [((3, 6, 6, 32), 2), ((2, 4, 4, 8), 8), ((2, 5, 16), 4)])
def test_group_norm_gives_keras_outputs_and_gradients(shape, groups):
  inputs = tf.constant(np.random.RandomState(0).normal(3.0, 2.0, size=shape), tf.float32)
  ours, keras = models.GroupNormalization(groups=groups), tf.keras.layers.GroupNormalization(groups)
  for layer in (ours, keras):
    layer.build(shape)
    layer.set_weights([np.random.RandomState(i).normal(size=shape[-1]) for i in (1, 2)])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(inputs)
    outputs = [layer(inputs) for layer in (ours, keras)]
    losses = [tf.reduce_sum(tf.sin(y)) for y in outputs]
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-6)
  for ours_grad, keras_grad in zip(tape.gradient(losses[0], [inputs] + ours.weights),
                                   tape.gradient(losses[1], [inputs] + keras.weights)):
    np.testing.assert_allclose(ours_grad, keras_grad, rtol=0, atol=1e-5)
  mask = tf.constant(np.random.RandomState(3).rand(*shape) > 0.3)  # Masked calls are Keras's own.
  np.testing.assert_array_equal(ours(inputs, mask=mask), keras(inputs, mask=mask))


def test_token_models_fit_fedtff_model_fn():
  spec = (tf.TensorSpec([None, 80], tf.int64), tf.TensorSpec([None, 80], tf.int64))
  tff_model.tff_model_fn(lambda: models.char_lstm(SHAKESPEARE_VOCAB), spec)


def test_build_passes_keyword_arguments():
  model = models.build('mlp', input_shape=(4,), num_classes=3, hidden_units=(5,))
  assert model.count_params() == (4 * 5 + 5) + (5 * 3 + 3)


def test_build_rejects_unknown_name_listing_valid_names():
  with pytest.raises(ValueError, match=r"Unknown model 'cnn'; expected one of: .*emnist_cnn"):
    models.build('cnn')


@pytest.mark.parametrize('factory, kwargs, message', [
    (models.char_lstm, dict(vocab_size=0), 'vocab_size must be a positive integer, got 0'),
    (models.word_lstm, dict(vocab_size=10, num_oov_buckets=0), 'num_oov_buckets must be'),
    (models.emnist_cnn, dict(input_shape=(784,)), r'input_shape must be \(height, width\)'),
    (models.autoencoder, dict(hidden_units=(100, 0)), r'hidden_units\[1\] must be a positive'),
    (models.autoencoder, dict(hidden_units=()), 'at least the code size'),
], ids=['char_lstm_vocab', 'word_lstm_oov', 'emnist_cnn_flat_input', 'autoencoder_zero_units',
        'autoencoder_no_units'])
def test_rejects_bad_arguments(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**kwargs)
