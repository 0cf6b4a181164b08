"""Keras model factories shipped with fedtff.

Each function builds a new, uncompiled Keras model returning logits; pass
`functools.partial(fn, ...)` or a lambda as a builder's `model_fn`.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> tf.keras.Model:
  """Multinomial logistic regression: one dense layer on the flattened input."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=tuple(input_shape)),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(num_classes),
  ])


def mlp(input_shape: Sequence[int], num_classes: int,
        hidden_units: Sequence[int] = (200, 200)) -> tf.keras.Model:
  """A ReLU multilayer perceptron; the default is McMahan et al.'s 2NN."""
  layers = [tf.keras.layers.InputLayer(input_shape=tuple(input_shape)),
            tf.keras.layers.Flatten()]
  layers += [tf.keras.layers.Dense(units, activation='relu') for units in hidden_units]
  layers.append(tf.keras.layers.Dense(num_classes))
  return tf.keras.Sequential(layers)
