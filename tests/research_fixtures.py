"""A research task and algorithm of a user's own, for tests/test_user_task.py.

Named by import path in tests (e.g. 'tests.research_fixtures:model_fn'), as a
user's lab module would be.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import fedtff

NUM_FEATURES = 4
WIDTH = 3  # Not a model factory: model.factory naming it is refused.


def model_fn():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(NUM_FEATURES,)),
                              tf.keras.layers.Dense(3)])


def wide_model_fn():
  return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(NUM_FEATURES,)),
                              tf.keras.layers.Dense(8), tf.keras.layers.Dense(3)])


def returns_a_string():
  return 'not a model'


def _client_data(num_clients, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(12 * num_clients, NUM_FEATURES)).astype(np.float32)
  y = np.argmax(x[:, :3], axis=1).astype(np.int32)
  # Raw examples as a lab might store them: features under another name.
  return fedtff.data.from_arrays(x, y, np.array_split(np.arange(len(y)), num_clients))


def load():
  """(train, held-out) ClientData: 5 training clients, 2 held out."""
  return _client_data(5, seed=0), _client_data(2, seed=1)


def load_list():
  return [1, 2]


def scale(element):
  return collections.OrderedDict(x=element['x'] * 2.0, y=element['y'])


class ClippedSGD(tff.learning.optimizers.Optimizer):
  """SGD that clips every local step's gradient to global L2 norm `clip`."""

  def __init__(self, learning_rate, clip):
    self.learning_rate, self.clip = learning_rate, clip

  def initialize(self, specs):
    del specs
    return ()

  def next(self, state, weights, gradients):
    clipped, _ = tf.clip_by_global_norm(gradients, self.clip)
    return state, tuple(w - self.learning_rate * g for w, g in zip(weights, clipped))


def fed_avg_clipped(tff_model_fn):
  """FedAvg whose clients clip every step's gradient, composed from TFF's pieces."""

  @tff.tensorflow.computation
  def initial_weights():
    return tff.learning.models.ModelWeights.from_model(tff_model_fn())

  weights_type = initial_weights.type_signature.result
  return tff.learning.templates.compose_learning_process(
      initial_weights,
      tff.learning.templates.build_broadcast_process(weights_type),
      tff.learning.templates.build_model_delta_client_work(
          tff_model_fn, ClippedSGD(learning_rate=0.5, clip=0.1),
          client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES),
      tff.aggregators.MeanFactory().create(weights_type.trainable, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(
          tff.learning.optimizers.build_sgdm(learning_rate=1.0), weights_type))


def needs_z(element):
  return collections.OrderedDict(x=element['z'], y=element['y'])


def _one_hot_squared_error(y_true, y_pred):
  """Each example's mean over classes of (one_hot(y) - logits)^2."""
  labels = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.shape(y_pred)[-1])
  return tf.reduce_mean(tf.square(labels - y_pred), axis=-1)


class OneHotMeanSquaredError(tf.keras.losses.Loss):
  """A user's loss: mean squared error of the logits on one-hot labels."""

  def call(self, y_true, y_pred):
    return _one_hot_squared_error(y_true, y_pred)


def _one_hot_absolute_error(y_true, y_pred):
  """Each example's mean over classes of |one_hot(y) - logits|."""
  labels = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.shape(y_pred)[-1])
  return tf.reduce_mean(tf.abs(labels - y_pred), axis=-1)


class OneHotMAE(tf.keras.metrics.MeanMetricWrapper):
  """A user's metric: the mean of `_one_hot_absolute_error`, as `one_hot_mae`."""

  def __init__(self, name='one_hot_mae', dtype=None):
    super().__init__(_one_hot_absolute_error, name, dtype=dtype)


def one_hot_metrics():
  return [OneHotMAE(), MeanLogit(shift=5.0)]


class MeanLogit(tf.keras.metrics.Mean):
  """A user's metric with a constructor argument: the mean logit plus `shift`."""

  def __init__(self, shift=0.0, name='mean_logit', dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.shift = shift

  def update_state(self, y_true, y_pred, sample_weight=None):
    del y_true
    return super().update_state(tf.reduce_mean(y_pred, axis=-1) + self.shift, sample_weight)

  def get_config(self):
    return {**super().get_config(), 'shift': self.shift}


class ForgetfulMeanLogit(MeanLogit):
  """`MeanLogit` whose get_config() leaves out `shift`: rebuilt, it would lose it."""

  def get_config(self):
    return tf.keras.metrics.Mean.get_config(self)


def forgetful_metrics():
  return [ForgetfulMeanLogit(shift=5.0)]


def digits_linear():
  """A user's model for the built-in digits dataset (8x8 images, 10 classes)."""
  return tf.keras.Sequential([tf.keras.Input((64,)), tf.keras.layers.Dense(10)])


def tff_fed_avg_clipped(tff_model_fn):
  """`fed_avg_clipped` as TFF's own builder makes it (docs/research.md's claim)."""
  return tff.learning.algorithms.build_weighted_fed_avg(
      tff_model_fn, client_optimizer_fn=ClippedSGD(learning_rate=0.5, clip=0.1))


def scale_and_jitter(element, seed=None):
  """`scale`, plus in training (a stateless `seed`) Gaussian noise of stddev 0.5."""
  x = element['x'] * 2.0
  if seed is not None:
    x += 0.5 * tf.random.stateless_normal(tf.shape(x), seed=seed)
  return collections.OrderedDict(x=x, y=element['y'])
