"""Keras model factories shipped with fedtff.

Each function builds a new, uncompiled Keras model returning logits; pass
`functools.partial(fn, ...)` or a lambda as a builder's `model_fn`, or look a
factory up by name with `build(name, **kwargs)`.

The architectures follow TensorFlow Federated's baseline models (the TFF
function each one matches is named in its docstring): the layer sizes, kernels,
activations and dropout are the same, so the parameter counts are too. Unlike
TFF's, every classifier here ends in a linear layer, so train with a loss built
with `from_logits=True` (fedtff's default loss is; for multi-label targets use
binary cross-entropy on logits). The one exception is `autoencoder`, whose
sigmoid output is the reconstruction itself, as in TFF.

References:
  McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
    Decentralized Data, arXiv 1602.05629 (2NN, CNN, Shakespeare LSTM).
  Reddi et al. 2021, Adaptive Federated Optimization, arXiv 2003.00295 (EMNIST
    CNN, Stack Overflow LSTM, ResNet-18 with group norm on CIFAR-100).
  Hinton & Salakhutdinov 2006, Reducing the Dimensionality of Data with Neural
    Networks, Science 313(5786) (the EMNIST autoencoder).
  Hsieh et al. 2020, The Non-IID Data Quagmire of Decentralized Machine
    Learning, arXiv 1910.00189 (group norm in place of batch norm).
  He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv 1603.05027.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import tensorflow as tf

_layers = tf.keras.layers


def _check_positive(**values: Optional[int]) -> None:
  """Raises a ValueError naming the first argument that is not positive."""
  for name, value in values.items():
    if value is not None and value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value}.')


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> tf.keras.Model:
  """Multinomial logistic regression: one dense layer on the flattened input.

  On 28x28 images this is the 784-10 model of TFF's
  `simulation.models.mnist.create_simple_keras_model` (7,850 parameters).
  With `input_shape=(10000,)` and 500 outputs it is the Stack Overflow
  tag-prediction model of Reddi et al. (2021), TFF's
  `baselines.stackoverflow.tag_prediction_tasks._build_logistic_regression_model`
  without its sigmoid (5,000,500 parameters): one logit per tag, trained with
  binary cross-entropy on logits (`fedtff.tasks`).
  """
  return tf.keras.Sequential([
      _layers.InputLayer(input_shape=tuple(input_shape)),
      _layers.Flatten(),
      _layers.Dense(num_classes),
  ])


def mlp(input_shape: Sequence[int], num_classes: int,
        hidden_units: Sequence[int] = (200, 200)) -> tf.keras.Model:
  """A ReLU multilayer perceptron; the default is McMahan et al.'s 2NN.

  With 28x28 inputs and 10 classes this is the 784-200-200-10 network of TFF's
  `baselines.emnist.emnist_models.create_two_hidden_layer_model` (199,210
  parameters).
  """
  model_layers = [_layers.InputLayer(input_shape=tuple(input_shape)), _layers.Flatten()]
  model_layers += [_layers.Dense(units, activation='relu') for units in hidden_units]
  model_layers.append(_layers.Dense(num_classes))
  return tf.keras.Sequential(model_layers)


def autoencoder(input_size: int = 784,
                hidden_units: Sequence[int] = (1000, 500, 250, 30)) -> tf.keras.Model:
  """The EMNIST bottleneck autoencoder of Reddi et al. (2021).

  Hinton and Salakhutdinov's MNIST autoencoder: sigmoid dense layers of the
  `hidden_units` sizes down to a linear code layer (the last size), the same
  sizes back up with sigmoid, and a sigmoid output of `input_size` values, the
  reconstruction (pixels in [0, 1]; train with mean squared error). The
  default is TFF's `baselines.emnist.emnist_models.create_autoencoder_model`,
  784-1000-500-250-30-250-500-1000-784 (2,837,314 parameters), Glorot-uniform
  kernels and zero biases as there.

  Args:
    input_size: Length of the flattened input and of the output.
    hidden_units: Encoder layer sizes, the code size last.

  Returns:
    An uncompiled `tf.keras.Model` mapping [batch, input_size] to
    [batch, input_size] in (0, 1).
  """
  hidden_units = tuple(hidden_units)
  if not hidden_units:
    raise ValueError('hidden_units must name at least the code size.')
  _check_positive(input_size=input_size, **{f'hidden_units[{i}]': u
                                            for i, u in enumerate(hidden_units)})
  *encoder, code = hidden_units
  sigmoid = functools.partial(_layers.Dense, activation='sigmoid')
  return tf.keras.Sequential(
      [_layers.InputLayer(input_shape=(input_size,))]
      + [sigmoid(units) for units in encoder] + [_layers.Dense(code)]
      + [sigmoid(units) for units in reversed(encoder)] + [sigmoid(input_size)])


def _image_input(input_shape: Sequence[int]) -> list:
  """An input layer for (height, width, channels) or (height, width) images."""
  input_shape = tuple(input_shape)
  if len(input_shape) not in (2, 3):
    raise ValueError('input_shape must be (height, width) or (height, width, channels), '
                     f'got {input_shape}.')
  image_layers = [_layers.InputLayer(input_shape=input_shape)]
  if len(input_shape) == 2:
    image_layers.append(_layers.Reshape(input_shape + (1,)))
  return image_layers


def _dropout(rate: float, enabled: bool) -> list:
  return [_layers.Dropout(rate)] if enabled else []


def emnist_cnn(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 62, *,
               dropout: bool = True) -> tf.keras.Model:
  """The EMNIST character-recognition CNN of Reddi et al. (2021).

  Two valid 3x3 ReLU convolutions (32, 64 filters), 2x2 max pooling, a
  128-unit ReLU layer and a linear output, with dropout 0.25 after the pooling
  and 0.5 after the dense layer. This is TFF's
  `baselines.emnist.emnist_models.create_conv_dropout_model` (1,206,590
  parameters for 28x28x1 inputs and 62 classes).

  Args:
    input_shape: Image shape, (height, width) or (height, width, channels).
    num_classes: Number of output logits (62 for EMNIST, 10 for digits only).
    dropout: If False, leaves out the two dropout layers and nothing else.

  Returns:
    An uncompiled `tf.keras.Model`.
  """
  return tf.keras.Sequential(
      _image_input(input_shape) + [
          _layers.Conv2D(32, 3, activation='relu'),
          _layers.Conv2D(64, 3, activation='relu'),
          _layers.MaxPool2D(2),
      ] + _dropout(0.25, dropout) + [
          _layers.Flatten(),
          _layers.Dense(128, activation='relu'),
      ] + _dropout(0.5, dropout) + [_layers.Dense(num_classes)])


def fedavg_cnn(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10) -> tf.keras.Model:
  """The MNIST CNN of McMahan et al. (2017).

  conv5x5(32)-pool-conv5x5(64)-pool-dense512-dense(num_classes), 'same'
  padding and 2x2 max pooling. This is TFF's
  `baselines.emnist.emnist_models.create_original_fedavg_cnn_model`
  (1,663,370 parameters for 28x28x1 inputs and 10 classes, as in the paper).

  Args:
    input_shape: Image shape, (height, width) or (height, width, channels).
    num_classes: Number of output logits.

  Returns:
    An uncompiled `tf.keras.Model`.
  """
  conv = functools.partial(_layers.Conv2D, kernel_size=5, padding='same', activation='relu')
  pool = functools.partial(_layers.MaxPool2D, pool_size=2, padding='same')
  return tf.keras.Sequential(_image_input(input_shape) + [
      conv(32), pool(), conv(64), pool(),
      _layers.Flatten(),
      _layers.Dense(512, activation='relu'),
      _layers.Dense(num_classes),
  ])


def _token_input(vocab_size: int, embedding_dim: int,
                 sequence_length: Optional[int]) -> list:
  """Integer token ids, embedded; id 0 is padding and masked."""
  return [_layers.InputLayer(input_shape=(sequence_length,), dtype='int32'),
          _layers.Embedding(vocab_size, embedding_dim, mask_zero=True)]


def char_lstm(vocab_size: int, *, sequence_length: Optional[int] = 80,
              embedding_dim: int = 8, lstm_units: int = 256,
              num_layers: int = 2) -> tf.keras.Model:
  """The Shakespeare next-character LSTM of McMahan et al. (2017).

  An 8-dimensional embedding, two 256-unit LSTM layers and a dense layer with
  one logit per token, at every position. This is TFF's
  `baselines.shakespeare.char_prediction_models.create_recurrent_model`
  (820,522 parameters for vocab_size 90).

  Args:
    vocab_size: Number of token ids, special tokens included. TFF's Shakespeare
      task uses 90: its 86 characters, plus padding (id 0), out-of-vocabulary,
      beginning- and end-of-sentence.
    sequence_length: Input length (80 in TFF's task), or None for any length.
    embedding_dim: Size of the character embedding.
    lstm_units: Units in each LSTM layer.
    num_layers: Number of stacked LSTM layers.

  Returns:
    An uncompiled `tf.keras.Model` mapping [batch, length] ids to
    [batch, length, vocab_size] logits.
  """
  _check_positive(vocab_size=vocab_size, sequence_length=sequence_length,
                  embedding_dim=embedding_dim, lstm_units=lstm_units, num_layers=num_layers)
  lstm = functools.partial(_layers.LSTM, lstm_units, return_sequences=True,
                           kernel_initializer='he_normal')
  return tf.keras.Sequential(
      _token_input(vocab_size, embedding_dim, sequence_length)
      + [lstm() for _ in range(num_layers)] + [_layers.Dense(vocab_size)])


def word_lstm(vocab_size: int, *, num_oov_buckets: int = 1, embedding_dim: int = 96,
              lstm_units: int = 670, num_layers: int = 1,
              sequence_length: Optional[int] = None) -> tf.keras.Model:
  """The Stack Overflow next-word LSTM of Reddi et al. (2021).

  Embeds the extended vocabulary in 96 dimensions, then each LSTM layer (670
  units) is followed by a dense projection back to 96; a last dense layer gives
  one logit per extended-vocabulary id. This is TFF's
  `baselines.stackoverflow.word_prediction_models.create_recurrent_model`
  (4,050,748 parameters for a 10,000-word vocabulary and one OOV bucket).

  Args:
    vocab_size: Number of words in the vocabulary (10,000 in Reddi et al.). The
      model sizes its embedding and output for `vocab_size + num_oov_buckets +
      3` ids, TFF's convention: padding (id 0), the words, the OOV buckets, then
      beginning- and end-of-sentence.
    num_oov_buckets: Number of out-of-vocabulary buckets.
    embedding_dim: Size of the word embedding and of each projection.
    lstm_units: Units in each LSTM layer.
    num_layers: Number of LSTM-plus-projection layers.
    sequence_length: Input length (20 in Reddi et al.), or None for any length.

  Returns:
    An uncompiled `tf.keras.Model` mapping [batch, length] ids to
    [batch, length, vocab_size + num_oov_buckets + 3] logits.
  """
  _check_positive(vocab_size=vocab_size, num_oov_buckets=num_oov_buckets,
                  embedding_dim=embedding_dim, lstm_units=lstm_units, num_layers=num_layers,
                  sequence_length=sequence_length)
  extended_vocab_size = vocab_size + num_oov_buckets + 3
  model_layers = _token_input(extended_vocab_size, embedding_dim, sequence_length)
  for _ in range(num_layers):
    model_layers += [_layers.LSTM(lstm_units, return_sequences=True), _layers.Dense(embedding_dim)]
  model_layers.append(_layers.Dense(extended_vocab_size))
  return tf.keras.Sequential(model_layers)


class GroupNormalization(_layers.GroupNormalization):
  """Keras's group normalization, with unmasked inputs normalized by their plain moments.

  Without a mask, Keras weighs every element by a tensor of ones
  (`tf.nn.weighted_moments`); when XLA compiles a round with fixed shapes those
  ones are a constant that it folds element by element (one ResNet-18 round on
  the CIFAR-100 stand-in: 107 s of CPU with Keras's layer, 88 s with this one;
  docs/performance.md). `tf.nn.moments` gives the same mean and variance (to
  float rounding) and the same variables, so checkpoints and masked calls are
  unchanged. Wu & He 2018, Group Normalization,
  arXiv 1803.08494.
  """

  def call(self, inputs, mask=None):
    if mask is not None:
      return super().call(inputs, mask=mask)
    grouped = self._reshape_into_groups(inputs)
    axes = list(range(1, grouped.shape.rank))
    axes.pop(self.axis - 1)  # The groups' axis, as Keras finds it.
    mean, variance = tf.nn.moments(grouped, axes=axes, keepdims=True)
    gamma, beta = self._get_reshaped_weights(tf.shape(inputs))
    normalized = tf.nn.batch_normalization(grouped, mean=mean, variance=variance, scale=gamma,
                                           offset=beta, variance_epsilon=self.epsilon)
    return tf.reshape(normalized, tf.shape(inputs))


class _ResNetLayers:
  """Makes the convolution and normalization layers of one ResNet."""

  def __init__(self, norm_groups: int, weight_decay: float):
    self._norm_groups = norm_groups
    self.regularizer = tf.keras.regularizers.l2(weight_decay) if weight_decay else None

  def conv(self, filters: int, kernel_size: int, strides: int = 1,
           padding: str = 'same') -> _layers.Layer:
    return _layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                          use_bias=False, kernel_initializer='he_normal',
                          kernel_regularizer=self.regularizer)

  def norm(self) -> _layers.Layer:
    return GroupNormalization(groups=self._norm_groups)

  def norm_relu(self, x: tf.Tensor) -> tf.Tensor:
    return _layers.ReLU()(self.norm()(x))


def _shortcut(make: _ResNetLayers, inputs: tf.Tensor, residual: tf.Tensor) -> tf.Tensor:
  """Adds `inputs` to `residual`, through a 1x1 convolution if shapes differ."""
  strides = inputs.shape[1] // residual.shape[1]
  if strides > 1 or inputs.shape[-1] != residual.shape[-1]:
    inputs = make.conv(residual.shape[-1], 1, strides=strides, padding='valid')(inputs)
    inputs = make.norm()(inputs)
  return _layers.Add()([inputs, residual])


def _basic_block(make: _ResNetLayers, inputs: tf.Tensor, filters: int,
                 normalize_first: bool) -> tf.Tensor:
  """A pre-activation block: [norm-ReLU-]conv3x3, norm-ReLU-conv3x3, shortcut."""
  x = make.norm_relu(inputs) if normalize_first else inputs
  x = make.conv(filters, 3)(x)
  x = make.conv(filters, 3)(make.norm_relu(x))
  return _shortcut(make, inputs, x)


def resnet18_group_norm(input_shape: Sequence[int] = (24, 24, 3), num_classes: int = 100, *,
                        norm_groups: int = 2, weight_decay: float = 1e-4) -> tf.keras.Model:
  """ResNet-18 (v2, pre-activation) with group normalization.

  The CIFAR-100 model of Reddi et al. (2021), with group norm in place of batch
  norm as Hsieh et al. (2020) recommend for federated training. A 7x7 stride-2
  convolution (64 filters) and 3x3 stride-2 max pooling, then four stages of two
  basic blocks with 64, 128, 256 and 512 filters, a final norm-ReLU, global
  average pooling and a linear output. As in TFF's
  `simulation.models.resnet_models.create_resnet18` (11,227,812 parameters for
  24x24x3 inputs and 100 classes), the stages keep the resolution of the
  pooled input: a 1x1 convolution only matches channels on the shortcut.

  Args:
    input_shape: Image shape (height, width, channels).
    num_classes: Number of output logits.
    norm_groups: Groups per normalization layer. Reddi et al.'s code used 2
      (the tensorflow-addons default then); TFF 0.87 uses Keras' default, 32.
      The parameter count does not depend on it.
    weight_decay: L2 penalty on the kernels (and the output bias), added to
      `model.losses` as in TFF; 0 adds none.

  Returns:
    An uncompiled `tf.keras.Model`.
  """
  make = _ResNetLayers(norm_groups, weight_decay)
  inputs = tf.keras.Input(shape=tuple(input_shape))
  x = make.norm_relu(make.conv(64, 7, strides=2)(inputs))
  x = _layers.MaxPool2D(3, strides=2, padding='same')(x)
  for stage, filters in enumerate((64, 128, 256, 512)):
    for block in range(2):
      x = _basic_block(make, x, filters, normalize_first=stage + block > 0)
  x = _layers.GlobalAveragePooling2D()(make.norm_relu(x))
  outputs = _layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01),
      kernel_regularizer=make.regularizer, bias_regularizer=make.regularizer)(x)
  return tf.keras.Model(inputs, outputs)


_FACTORIES: dict[str, Callable[..., tf.keras.Model]] = {
    'logistic_regression': logistic_regression,
    'mlp': mlp,
    'autoencoder': autoencoder,
    'emnist_cnn': emnist_cnn,
    'fedavg_cnn': fedavg_cnn,
    'char_lstm': char_lstm,
    'word_lstm': word_lstm,
    'resnet18_group_norm': resnet18_group_norm,
}
MODEL_NAMES = tuple(_FACTORIES)
# The models with dropout layers; their factory takes `dropout=False` to leave them out
# (config key model.dropout).
DROPOUT_MODELS = ('emnist_cnn',)


def build(name: str, **kwargs) -> tf.keras.Model:
  """Builds the model factory `name` with keyword arguments `kwargs`.

  Raises:
    ValueError: If `name` is not one of `MODEL_NAMES`.
  """
  if name not in _FACTORIES:
    raise ValueError(f'Unknown model {name!r}; expected one of: {", ".join(MODEL_NAMES)}.')
  return _FACTORIES[name](**kwargs)
