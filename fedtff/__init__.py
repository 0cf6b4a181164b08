"""fedtff: a thin federated-learning research toolkit over TensorFlow Federated.

The public API: builders that turn Keras model factories into TFF learning
processes (`fedtff.algorithms`), federated data helpers (`fedtff.data`), the
round loop and the experiment runner with your own task (`UserTask`) or
learning process (`fedtff.runner`; the run-directory pieces a round loop of
your own can write with are `fedtff.runner.run_dir`, `.checkpoints`,
`ProgressLine` and `privacy.RunPrivacy`, docs/research.md), privacy
(`fedtff.privacy`), the compiled engine (`fedtff.compiled`), where TFF
computations execute (`fedtff.execution`) and the research tools
(`fedtff.research`). The layout is drawn in docs/algorithms.md.
"""

from fedtff import algorithms
from fedtff import compiled
from fedtff import data
from fedtff import execution
from fedtff import models
from fedtff import privacy
from fedtff import research
from fedtff import runner
from fedtff import tasks
from fedtff.algorithms.aggregators import AggregatorSpec
from fedtff.algorithms.attacks import AttackSpec
from fedtff.algorithms import ALGORITHMS
from fedtff.algorithms import build_evaluation
from fedtff.algorithms import build_fed_avg
from fedtff.algorithms import build_fed_nova
from fedtff.algorithms import build_fed_prox
from fedtff.algorithms import build_fed_sgd
from fedtff.algorithms import build_learning_process
from fedtff.algorithms import build_mime_lite
from fedtff.algorithms import build_q_fed_avg
from fedtff.algorithms import build_per_client_evaluation
from fedtff.algorithms import Schedule
from fedtff.runner.checkpoint_eval import evaluate_checkpoint
from fedtff.runner.experiment import run_experiment
from fedtff.algorithms.optimizers import build as build_optimizer
from fedtff.algorithms.optimizers import build_fn as build_optimizer_fn
from fedtff.runner.progress import ProgressLine
from fedtff.execution.runtime import local_runtime
from fedtff.execution.runtime import restore_tff_context
from fedtff.tasks import batch_fn
from fedtff.runner.training import RoundEnd
from fedtff.runner.training import run_training
from fedtff.runner.training import TrainingDivergedError
from fedtff.runner.training import sample_clients
from fedtff.runner.user_task import UserTask

__version__ = '0.1.0'

# TFF's own default runtime can leave its worker process running after Python
# exits; run computations on a worker that fedtff stops (see fedtff.execution.runtime).
# `fedtff.restore_tff_context()` puts TFF's own default back.
execution.runtime.install_default_context()
