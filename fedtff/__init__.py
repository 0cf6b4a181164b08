"""fedtff: a thin federated-learning research toolkit over TensorFlow Federated.

The public API: builders that turn Keras model factories into TFF learning
processes, federated data helpers, the round loop, the experiment runner (with
your own task, `UserTask`, and your own learning process), the run-directory
pieces a round loop of your own can write with (`run_dir`, `checkpoints`,
`ProgressLine`, `privacy.RunPrivacy`; docs/research.md), and `fedtff.fast`,
the compiled-round backend of the FedAvg family.
"""

from fedtff import checkpoints
from fedtff import config
from fedtff import client_metrics
from fedtff import data
from fedtff import fast
from fedtff import models
from fedtff import outputs
from fedtff import privacy
from fedtff import progress
from fedtff import run_dir
from fedtff import runtime
from fedtff import sweeps
from fedtff import training
from fedtff import user_task
from fedtff import aggregators
from fedtff import callbacks
from fedtff.aggregators import AggregatorSpec
from fedtff.algorithms import ALGORITHMS
from fedtff.algorithms import build_evaluation
from fedtff.algorithms import build_fed_avg
from fedtff.algorithms import build_fed_prox
from fedtff.algorithms import build_fed_sgd
from fedtff.algorithms import build_learning_process
from fedtff.algorithms import build_mime_lite
from fedtff.algorithms import build_per_client_evaluation
from fedtff.algorithms import Schedule
from fedtff.evaluate import evaluate_checkpoint
from fedtff.experiment import run_experiment
from fedtff.optimizers import build as build_optimizer
from fedtff.optimizers import build_fn as build_optimizer_fn
from fedtff.progress import ProgressLine
from fedtff.runtime import local_runtime
from fedtff.runtime import restore_tff_context
from fedtff.tasks import batch_fn
from fedtff.training import RoundEnd
from fedtff.training import run_training
from fedtff.training import TrainingDivergedError
from fedtff.training import sample_clients
from fedtff.user_task import UserTask

__version__ = '0.1.0'

# TFF's own default runtime can leave its worker process running after Python
# exits; run computations on a worker that fedtff stops (see fedtff.runtime).
# `fedtff.restore_tff_context()` puts TFF's own default back.
runtime.install_default_context()
