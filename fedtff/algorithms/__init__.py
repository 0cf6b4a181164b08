"""Builders of TFF learning processes from Keras model factories."""

from fedtff.algorithms.evaluation import build_evaluation
from fedtff.algorithms.fed_avg import build_fed_avg
