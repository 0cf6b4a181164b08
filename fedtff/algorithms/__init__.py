"""Builders of TFF learning processes from Keras model factories."""

from fedtff.algorithms.builder import ALGORITHMS
from fedtff.algorithms.builder import build_learning_process
from fedtff.algorithms.evaluation import build_evaluation
from fedtff.algorithms.evaluation import build_per_client_evaluation
from fedtff.algorithms.fed_avg import build_fed_avg
from fedtff.algorithms.fed_nova import build_fed_nova
from fedtff.algorithms.fed_prox import build_fed_prox
from fedtff.algorithms.fed_sgd import build_fed_sgd
from fedtff.algorithms.mime_lite import build_mime_lite
from fedtff.algorithms.q_fed_avg import build_q_fed_avg
from fedtff.algorithms.schedules import Schedule
