"""A fast simulation backend: a whole round of any fedtff algorithm as one TensorFlow graph.

`build_fast_process` takes the arguments of `fedtff.build_learning_process`
and returns a process whose `next(state, client_batches)` runs every client's
training, the aggregation and the server step in one `tf.function` over
padded client batches (`ClientBatches`, built by `PaddedClientData`,
`RoundBatches` for clients whose batches differ by round, or `from_datasets`). Its weights match the TFF process's; its state converts to
and from the TFF process's state. `run_experiment` uses it with
`config.backend='fast'`. See docs/performance.md.
"""

from fedtff.fast.batches import ClientBatches
from fedtff.fast.batches import PaddedClientData
from fedtff.fast.batches import RoundBatches
from fedtff.fast.batches import from_datasets
from fedtff.fast.batches import select
from fedtff.fast.process import FastLearningProcess
from fedtff.fast.process import FastState
from fedtff.fast.process import SUPPORTED_ALGORITHMS
from fedtff.fast.process import build_fast_process
from fedtff.fast.evaluation import FastEvaluation
