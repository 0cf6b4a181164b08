"""The compiled engine: a whole round of any fedtff algorithm as one TensorFlow graph.

`build_compiled_process` takes the arguments of `fedtff.build_learning_process`
and returns a process whose `next(state, client_batches)` runs every client's
training, the aggregation and the server step in one `tf.function` over
padded client batches (`ClientBatches`, built by `PaddedClientData`,
`RoundBatches` for clients whose batches differ by round, or `from_datasets`). Its weights match the TFF process's; its state converts to
and from the TFF process's state. `run_experiment` uses it with
`config.engine='compiled'`. See docs/performance.md.
"""

from fedtff.compiled.batches import ClientBatches
from fedtff.compiled.batches import batch_at
from fedtff.compiled.batches import PaddedClientData
from fedtff.compiled.batches import RoundBatches
from fedtff.compiled.batches import from_datasets
from fedtff.compiled.batches import select
from fedtff.compiled.process import CompiledProcess
from fedtff.compiled.process import CompiledState
from fedtff.compiled.process import SUPPORTED_ALGORITHMS
from fedtff.compiled.process import build_compiled_process
from fedtff.compiled.scaffold import CompiledScaffold  # Registers SCAFFOLD's process class.
from fedtff.compiled.ditto import CompiledDitto  # Registers Ditto's process class.
from fedtff.compiled.evaluation import CompiledEvaluation
