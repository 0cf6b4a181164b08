"""The fast backend: a whole FedAvg-family round as one compiled TensorFlow graph.

TFF executes a round as a federated computation: its runtime serializes the
client datasets and model, runs one TensorFlow session per client and
aggregates across them, which costs far more than the arithmetic on small
models. Like FedJAX's `for_each_client` (Ro et al., "FedJAX: Federated
learning simulation with JAX", 2021, arXiv 2108.02117), this backend holds the
round's client data as padded tensors (`fedtff.fast.ClientBatches`) and runs
every client's training, the aggregation and the server step in one
`tf.function`, using TFF's own optimizer objects for the client and server
steps, so that the weights match the TFF process's.

Algorithms: FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629),
FedAvgM / FedAdagrad / FedAdam / FedYogi (the FedAvg family with a server
optimizer, Reddi et al., ICLR 2021, arXiv 2003.00295), FedProx (Li et al.,
MLSys 2020, arXiv 1812.06127) and FedSGD.

    process = fedtff.fast.build_fast_process(model_fn, element_spec, algorithm='fedadam')
    data = fedtff.fast.PaddedClientData(client_data)
    state = process.initialize()
    state, metrics = process.next(state, data.batches(client_ids))

`to_tff_state` / `from_tff_state` convert the state to and from the state of
the TFF process `fedtff.build_learning_process` builds from the same
arguments, so checkpoints and evaluation work on either backend.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from typing import Any, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning import tensor_utils

from fedtff import optimizers
from fedtff.algorithms import builder
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from fedtff.fast import aggregation as aggregation_lib
from fedtff.fast import batches as batches_lib
from fedtff.fast import client_work

Weights = tff.learning.models.ModelWeights
SUPPORTED_ALGORITHMS = tuple(name for name in registry.ALGORITHMS if name != 'mimelite')
_USE_TFF = "use backend='tff'"


class FastState(NamedTuple):
  """The fast backend's server state; the fields are TFF's `LearningAlgorithmState`'s.

  Attributes:
    global_model_weights: The server model, a `tff.learning.models.ModelWeights`.
    client_work: The client optimizer's hyperparameters (FedAvg family), or ().
    finalizer: The server optimizer's state.
    aggregator: The aggregator's state: with adaptive DP clipping the clip
      norm (a float32 scalar), otherwise ().
  """
  global_model_weights: Weights
  client_work: Any
  finalizer: Any
  aggregator: Any = ()


# The fields converted leaf for leaf to and from TFF's state; `aggregator` is
# converted by fedtff.fast.aggregation.
_COPIED_FIELDS = ('global_model_weights', 'client_work', 'finalizer')


@dataclasses.dataclass(frozen=True)
class _Algorithm:
  """How an algorithm's clients work, as TFF 0.87 builds it."""
  name: str
  proximal_strength: Optional[float]

  @property
  def sends_gradients(self) -> bool:  # FedSGD: the update is a gradient, not a model delta.
    return self.name == 'fedsgd'

  @property
  def is_fed_avg(self) -> bool:  # model_delta_client_work: hparams in the state, metric reset.
    return registry.get(self.name).fed_avg_family


def _check_supported(algorithm: str, client_learning_rate_schedule, proximal_strength) -> None:
  if proximal_strength is not None and proximal_strength < 0:
    raise ValueError(f'proximal_strength (mu) must be non-negative, got {proximal_strength}.')
  if algorithm == 'mimelite':
    raise ValueError(f'The fast backend does not implement Mime Lite; {_USE_TFF}.')
  if client_learning_rate_schedule is not None:
    raise ValueError(f'The fast backend does not implement client learning-rate schedules; '
                     f'{_USE_TFF}.')


def _check_element_spec(element_spec: Any) -> None:
  for spec in tf.nest.flatten(element_spec):
    if not spec.shape[1:].is_fully_defined():
      raise ValueError(
          f'Padded batches need fixed per-example shapes, got {spec}; pad or truncate the '
          f"examples in preprocessing, or {_USE_TFF}.")


def _tensors(structure: Any) -> Any:
  return tf.nest.map_structure(tf.convert_to_tensor, structure)


def _numpy(structure: Any) -> Any:
  return tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, structure)


def _pack_like(template: Any, values: Any, what: str) -> Any:
  """`values`' leaves in `template`'s structure, with the template's dtypes."""
  template_leaves, leaves = tf.nest.flatten(template), tf.nest.flatten(values)
  shapes = lambda ls: [tuple(np.shape(leaf)) for leaf in ls]
  if shapes(template_leaves) != shapes(leaves):
    raise ValueError(f'The {what} does not fit this process: leaf shapes {shapes(leaves)}, '
                     f'expected {shapes(template_leaves)}.')
  return tf.nest.pack_sequence_as(template, [
      np.asarray(leaf, dtype=np.asarray(like).dtype)[()]
      for like, leaf in zip(template_leaves, leaves)])


def _check_tff_state(value: Any, expected: str) -> None:
  if not all(hasattr(value, field) for field in FastState._fields):
    raise TypeError(f'Expected {expected}, got {type(value).__name__}.')


class FastLearningProcess:
  """A FedAvg-family learning process whose `next` is one compiled graph.

  Built by `build_fast_process`; the methods mirror
  `tff.learning.templates.LearningProcess`'s.
  """

  def __init__(self, model_fn, element_spec, *, algorithm: _Algorithm,
               client_optimizer: Optional[optimizers.TffOptimizer],
               server_optimizer: optimizers.TffOptimizer,
               aggregation: aggregation_lib.Aggregation, loss, metrics, jit_compile: bool):
    self._model_fn = model_fn
    self._element_spec = element_spec
    self._algorithm = algorithm
    self._client_optimizer = client_optimizer
    self._server_optimizer = server_optimizer
    self._aggregation = aggregation
    self._model = client_work.PaddedModel(model_fn(), loss, metrics)
    self._template = self.initialize()
    self._round = tf.function(
        self._round_graph, jit_compile=jit_compile, autograph=False,
        input_signature=[tf.nest.map_structure(tf.TensorSpec.from_tensor, self._template),
                         batches_lib.signature(element_spec), tf.TensorSpec([2], tf.int64)])
    # Trace now, while the Keras classes are in their eager (v2) form: Keras swaps
    # the base classes of Sequential and friends to its v1 ones whenever a model
    # is built in a graph, as TFF's tracing does, and an eager-built model called
    # in that state fails ("Your Layer or Model is in an invalid state").
    self._round.get_concrete_function()

  @property
  def algorithm(self) -> str:
    return self._algorithm.name

  def initialize(self) -> FastState:
    """A new state: fresh Keras initial weights, optimizers' initial states."""
    model = self._model_fn()
    weights = Weights(trainable=[v.numpy() for v in model.trainable_variables],
                      non_trainable=[v.numpy() for v in model.non_trainable_variables])
    specs = [tf.TensorSpec(w.shape, w.dtype) for w in weights.trainable]
    client_hparams = ()
    if self._algorithm.is_fed_avg:  # As TFF's model_delta_client_work: a whimsy spec.
      whimsy = self._client_optimizer.initialize(tf.TensorSpec([], tf.float32))
      client_hparams = self._client_optimizer.get_hparams(whimsy)
    return _tensors(FastState(weights, client_hparams, self._server_optimizer.initialize(specs),
                              self._aggregation.initial_state()))

  def get_model_weights(self, state: FastState) -> Weights:
    """The server model weights, as numpy arrays."""
    return _numpy(self._check_state(state).global_model_weights)

  def set_model_weights(self, state: FastState, weights: Weights) -> FastState:
    """`state` with the server model set to `weights` (a `ModelWeights`)."""
    weights = Weights(list(weights.trainable), list(weights.non_trainable))
    packed = _pack_like(self._template.global_model_weights, weights, 'model weights')
    return self._check_state(state)._replace(global_model_weights=_tensors(packed))

  def next(self, state: FastState,
           client_batches: Union[batches_lib.ClientBatches, Sequence[tf.data.Dataset]],
           *, noise_seed: Optional[Sequence[int]] = None
          ) -> tff.learning.templates.LearningProcessOutput:
    """Runs one round; returns `(state, metrics)` with TFF's metric names.

    Args:
      state: The current `FastState`.
      client_batches: The round's clients: a `fedtff.fast.ClientBatches`, or a
        list of batched datasets (read each call; for speed build
        `ClientBatches` once, e.g. with `fedtff.fast.PaddedClientData`).
      noise_seed: Two integers that seed this round's DP noise (stateless).
        `None` draws them from the OS, so the noise cannot be predicted; the
        runner passes seeds derived from a per-run secret kept in the
        checkpoint, so that a resumed run repeats the same noise.
    """
    if not isinstance(client_batches, batches_lib.ClientBatches):
      client_batches = batches_lib.from_datasets(list(client_batches))
    aggregation_lib.check_round(self._aggregation, int(client_batches.num_batches.shape[0]))
    if noise_seed is None:
      noise_seed = [secrets.randbits(63), secrets.randbits(63)]
    new_state, metrics = self._round(self._check_state(state), client_batches,
                                     tf.constant(noise_seed, tf.int64))
    return tff.learning.templates.LearningProcessOutput(new_state, _numpy(metrics))

  def to_tff_state(self, state: FastState,
                   tff_process: Union[tff.learning.templates.LearningProcess, Any]) -> Any:
    """`state` as a state of `tff_process`, built by `fedtff.build_learning_process`
    from the same arguments.

    The fields the fast state lacks (`distributor`, and the `aggregator`
    state except an adaptive clip norm) come from `tff_process.initialize()`;
    pass a state of that process instead (e.g. the checkpoint a run resumed
    from) to take them from it without running TFF.
    """
    template = (tff_process.initialize()
                if isinstance(tff_process, tff.learning.templates.LearningProcess)
                else tff_process)
    _check_tff_state(template, 'a TFF LearningProcess or one of its states')
    state = _numpy(self._check_state(state))
    fields = {field: _pack_like(getattr(template, field), getattr(state, field), f'state {field}')
              for field in _COPIED_FIELDS}
    fields['aggregator'] = aggregation_lib.to_tff_state(
        self._aggregation, state.aggregator, template.aggregator)
    return template._replace(**fields)

  def from_tff_state(self, tff_state: Any) -> FastState:
    """The `FastState` of a state of the matching TFF process (e.g. a checkpoint)."""
    _check_tff_state(tff_state, 'a TFF LearningAlgorithmState')
    copied = [_pack_like(_numpy(getattr(self._template, field)), getattr(tff_state, field),
                         f'TFF state {field}') for field in _COPIED_FIELDS]
    return _tensors(FastState(
        *copied, aggregation_lib.from_tff_state(self._aggregation, tff_state.aggregator)))

  def _check_state(self, state: Any) -> FastState:
    if not isinstance(state, FastState):
      raise TypeError(f'Expected a fedtff.fast.FastState, got {type(state).__name__}; convert '
                      'a TFF state with from_tff_state(state).')
    return state

  # The round graph.

  def _client(self, state: FastState, batches, index):
    """One client's `(update, weight, stats, non_finite)`; a non-finite update is
    zeroed and weighted 0, as TFF's client work does."""
    first, count = batches.first_batch[index], batches.num_batches[index]
    weights = state.global_model_weights
    if self._algorithm.sends_gradients:
      update, weight, stats = client_work.sum_gradients(self._model, weights, batches, first, count)
    else:
      hparams = state.client_work if self._algorithm.is_fed_avg else None
      update, stats = client_work.train_delta(
          self._model, self._client_optimizer, hparams, weights, batches, first, count,
          self._algorithm.proximal_strength)
      weight = (tf.cast(stats.num_examples, tf.float32) if self._aggregation.weighted
                else tf.constant(1.0))
    update, non_finite = tensor_utils.zero_all_if_any_non_finite(update)
    weight = tf.cond(non_finite > 0, lambda: tf.constant(0.0), lambda: weight)
    return update, weight, stats, non_finite > 0

  def _client_step(self, state: FastState, batches, index, acc, totals):
    """Runs client `index` and adds it to the round's sums."""
    resets_metrics = self._algorithm.is_fed_avg  # TFF resets a non-finite client's metrics.
    snapshot = [v.read_value() for v in self._model.metric_variables] if resets_metrics else []
    update, weight, stats, non_finite = self._client(state, batches, index)
    if resets_metrics:
      stats = tf.cond(non_finite, client_work.TrainStats.zeros, lambda: stats)
      for variable, value in zip(self._model.metric_variables, snapshot):
        variable.assign(tf.where(non_finite, value, variable.read_value()))
    return (aggregation_lib.accumulate(self._aggregation, acc, update, weight, state.aggregator),
            totals + stats)

  def _apply_server_update(self, state: FastState, update: List[tf.Tensor]):
    """TFF's apply-optimizer finalizer: skip the step if the update is not finite."""
    trainable = list(state.global_model_weights.trainable)
    new_optimizer_state, new_trainable = self._server_optimizer.next(
        state.finalizer, trainable, update)
    _, non_finite = tensor_utils.zero_all_if_any_non_finite(update)
    optimizer_state, trainable = tf.cond(
        non_finite > 0, lambda: (state.finalizer, trainable),
        lambda: (new_optimizer_state, list(new_trainable)))
    weights = Weights(trainable, list(state.global_model_weights.non_trainable))
    return state._replace(global_model_weights=weights, finalizer=optimizer_state), non_finite

  def _train_metrics(self, totals: client_work.TrainStats) -> collections.OrderedDict:
    train = collections.OrderedDict((m.name, m.result()) for m in self._model.metrics)
    train['loss'] = tf.math.divide_no_nan(totals.loss_sum, totals.loss_count)
    train['num_examples'] = totals.num_examples
    train['num_batches'] = totals.num_batches
    return train

  def _round_graph(self, state: FastState, batches: batches_lib.ClientBatches,
                   noise_seed: tf.Tensor):
    for variable in self._model.metric_variables:
      variable.assign(tf.zeros_like(variable))
    loop_vars = (aggregation_lib.initial(state.global_model_weights.trainable, self._aggregation),
                 client_work.TrainStats.zeros())
    _, (acc, totals) = tf.while_loop(
        lambda c, _: c < tf.shape(batches.num_batches)[0],
        lambda c, v: (c + 1, self._client_step(state, batches, c, *v)),
        (tf.constant(0, tf.int32), loop_vars))
    update, clip_state = aggregation_lib.result(self._aggregation, acc, noise_seed,
                                                state.aggregator)
    new_state, non_finite = self._apply_server_update(state, update)
    new_state = new_state._replace(aggregator=clip_state)
    metrics = collections.OrderedDict(
        distributor=(), client_work=collections.OrderedDict(train=self._train_metrics(totals)),
        aggregator=aggregation_lib.measurements(self._aggregation, acc, clip_state,
                                                round_state=state.aggregator),
        finalizer=collections.OrderedDict(update_non_finite=non_finite))
    return new_state, metrics


def build_fast_process(model_fn: tff_model.KerasModelFn,
                       element_spec: tff_model.ElementSpecLike,
                       *,
                       algorithm: str = 'fedavg',
                       client_optimizer: Optional[optimizers.TffOptimizer] = None,
                       server_optimizer: Optional[optimizers.TffOptimizer] = None,
                       client_learning_rate_schedule: Optional[schedules.Schedule] = None,
                       proximal_strength: Optional[float] = None,
                       loss: Optional[tf.keras.losses.Loss] = None,
                       metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                       weighted: bool = True,
                       aggregator: Optional[builder.Aggregator] = None,
                       jit_compile: bool = True) -> FastLearningProcess:
  """Builds the fast-backend process of `fedtff.build_learning_process`'s arguments.

  With the same initial weights and the same client batches in the same
  order, its rounds give the weights and metrics of the TFF process
  `fedtff.build_learning_process` builds from these arguments (to float32
  rounding). What it does not implement it refuses, naming the TFF backend.

  Args:
    model_fn: A no-argument function returning a new, uncompiled Keras model.
      Its non-trainable variables (BatchNormalization's moving statistics) are
      treated as TFF 0.87's FedAvg treats them: each client starts from the
      server's values and updates them while it trains, and the server keeps
      its own values (`apply_optimizer_finalizer` updates the trainable
      weights only). Padding rows never reach the model, so batch statistics
      are those of the real rows.
    element_spec: The batched client datasets' element spec, or one dataset.
    algorithm: One of `SUPPORTED_ALGORITHMS`: fedavg, fedavgm, fedadagrad,
      fedadam, fedyogi, fedprox, fedsgd.
    client_optimizer: A TFF optimizer (`fedtff.optimizer(...)`); none for fedsgd.
    server_optimizer: A TFF optimizer; the default depends on `algorithm`
      (`fedtff.algorithms.registry.REGISTRY`, as for the TFF builders).
    client_learning_rate_schedule: Must be None (refused otherwise).
    proximal_strength: FedProx's mu; required by, and only by, fedprox.
    loss: A Keras loss that gives a scalar (any reduction but 'none'); it sees
      the real rows of each batch (`fedtff.algorithms.batch_loss`); defaults to
      sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy.
    weighted: Whether client updates are weighted by their number of examples.
    aggregator: None (mean) or a `fedtff.AggregatorSpec`: 'mean', 'robust'
      with a fixed `clip_norm` (and fixed `zeroing_norm` if zeroing), or 'dp'
      with a fixed or adaptive (`clip_norm` None) clip norm.
    jit_compile: Compile the round with XLA (2.0-2.8x faster in
      scripts/bench.py here, docs/performance.md); False for models XLA cannot compile.

  Raises:
    ValueError, TypeError: On options that do not combine (the checks of
      `fedtff.build_learning_process`), or that the fast backend does not
      implement (Mime Lite, schedules, other aggregators, examples of varying
      shape, losses with reduction 'none').
  """
  _check_supported(algorithm, client_learning_rate_schedule, proximal_strength)
  builder._check_options(  # pylint: disable=protected-access  # The TFF builder's own checks.
      algorithm, server_optimizer=server_optimizer, client_optimizer=client_optimizer,
      client_learning_rate_schedule=None, proximal_strength=proximal_strength, weighted=weighted)
  aggregation = aggregation_lib.from_spec(aggregator, weighted=weighted)
  element_spec = tff_model.element_spec_of(element_spec)
  _check_element_spec(element_spec)
  tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)  # Checks the model.
  if registry.get(algorithm).client is not None:  # The defaults: fedtff.algorithms.registry.
    client_optimizer = optimizers.check(
        client_optimizer or registry.default_client_optimizer(algorithm), 'client')
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer(algorithm), 'server')
  metric_fns = [tff_model._metric_constructor(m)  # pylint: disable=protected-access
                for m in (tff_model.default_metrics() if metrics is None else metrics)]
  return FastLearningProcess(
      model_fn, element_spec,
      algorithm=_Algorithm(algorithm, proximal_strength if algorithm == 'fedprox' else None),
      client_optimizer=client_optimizer, server_optimizer=server_optimizer,
      aggregation=aggregation, loss=tff_model.default_loss() if loss is None else loss,
      metrics=[fn() for fn in metric_fns], jit_compile=jit_compile)
