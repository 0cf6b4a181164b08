"""The compiled engine: a whole round as one compiled TensorFlow graph.

TFF executes a round as a federated computation: its runtime serializes the
client datasets and model, runs one TensorFlow session per client and
aggregates across them, which costs far more than the arithmetic on small
models. Like FedJAX's `for_each_client` (Ro et al., "FedJAX: Federated
learning simulation with JAX", 2021, arXiv 2108.02117), this engine holds the
round's client data as padded tensors (`fedtff.compiled.ClientBatches`) and runs
every client's training, the aggregation and the server step in one
`tf.function`, using TFF's own optimizer objects for the client and server
steps, so that the weights match the TFF process's.

Algorithms: all of `fedtff.algorithms.registry.ALGORITHMS`: FedAvg (McMahan
et al., AISTATS 2017, arXiv 1602.05629), FedAvgM / FedAdagrad / FedAdam /
FedYogi (the FedAvg family with a server optimizer, Reddi et al., ICLR 2021,
arXiv 2003.00295), each with or without a client learning-rate schedule
(`fedtff.Schedule`, Reddi et al.), FedProx (Li et al., MLSys 2020, arXiv
1812.06127), FedSGD, Mime Lite (Karimireddy et al., NeurIPS 2021, arXiv
2008.03606), q-FedAvg (Li et al., ICLR 2020, arXiv 1905.10497), and FedNova (Wang
et al., NeurIPS 2020, arXiv 2007.07481).

    process = fedtff.compiled.build_compiled_process(model_fn, element_spec, algorithm='fedadam')
    data = fedtff.compiled.PaddedClientData(client_data)
    state = process.initialize()
    state, metrics = process.next(state, data.batches(client_ids))

`to_tff_state` / `from_tff_state` convert the state to and from the state of
the TFF process `fedtff.build_learning_process` builds from the same
arguments, so checkpoints and evaluation work on either engine.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning import tensor_utils

from fedtff.algorithms import optimizers
from fedtff.algorithms import builder
from fedtff.algorithms import fed_avg
from fedtff.algorithms import fed_nova
from fedtff.algorithms import local_steps
from fedtff.algorithms import q_fed_avg
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from fedtff.compiled import aggregation as aggregation_lib
from fedtff.compiled import batches as batches_lib
from fedtff.compiled import client_work
from fedtff.compiled import cohorts

Weights = tff.learning.models.ModelWeights
SUPPORTED_ALGORITHMS = registry.ALGORITHMS
_USE_TFF = "use engine='tff'"


class CompiledState(NamedTuple):
  """The compiled engine's server state; the fields are TFF's `LearningAlgorithmState`'s.

  Attributes:
    global_model_weights: The server model, a `tff.learning.models.ModelWeights`.
    client_work: As TFF's client work state: the client optimizer's
      hyperparameters (FedAvg family); with a client learning-rate schedule,
      the 0-based round number (int32) the schedule reads; for Mime Lite,
      `(base optimizer state, full-gradient mean state)` (the second item
      holds no tensors); otherwise ().
    finalizer: The server optimizer's state.
    aggregator: The aggregator's state: with adaptive DP clipping the clip
      norm (a float32 scalar); with DP-FTRL the tree's state
      (`fedtff.compiled.tree`); for the distributed Skellam mean the rotation
      seed (int64 [2]); otherwise () (`fedtff.compiled.aggregation`).
  """
  global_model_weights: Weights
  client_work: Any
  finalizer: Any
  aggregator: Any = ()


# The fields converted leaf for leaf to and from TFF's state; `aggregator` is
# converted by fedtff.compiled.aggregation.
_COPIED_FIELDS = ('global_model_weights', 'client_work', 'finalizer')


@dataclasses.dataclass(frozen=True)
class _Algorithm:
  """How an algorithm's clients work, as TFF 0.87 builds it."""
  name: str
  proximal_strength: Optional[float]
  schedule: Optional[schedules.Schedule] = None  # FedAvg family: the client learning rate.
  q: Optional[float] = None  # q-FedAvg: q, and η of L = 1/η.
  learning_rate: Optional[float] = None
  adaptive: bool = False  # FedProx: mu is the state's client_work (fed_prox.AdaptiveStrength).

  @property
  def sends_gradients(self) -> bool:  # FedSGD: the update is a gradient, not a model delta.
    return self.name == 'fedsgd'

  @property
  def is_fed_avg(self) -> bool:  # model_delta_client_work: hparams in the state, metric reset.
    return registry.get(self.name).fed_avg_family

  @property
  def is_mime_lite(self) -> bool:  # The server's base-optimizer state, frozen on the clients.
    return self.name == 'mimelite'

  @property
  def is_fed_nova(self) -> bool:  # Updates normalized by their local steps (fedtff.algorithms.fed_nova).
    return self.name == 'fednova'


def _jit_compile(element_spec: Any, jit_compile: Optional[bool]) -> bool:
  """Whether to compile the round with XLA: by default when every example has a
  fixed shape (XLA compiles fixed shapes); refuses anything but dense tensors."""
  for spec in tf.nest.flatten(element_spec):
    if not isinstance(spec, tf.TensorSpec):
      raise ValueError(f'Padded batches hold dense tensors, got {spec}; give batches of dense '
                       f"tensors (e.g. padded_batch), or {_USE_TFF}.")
  fixed = batches_lib.has_fixed_shapes(element_spec)
  if jit_compile and not fixed:
    raise ValueError('jit_compile=True needs examples of one fixed shape (XLA compiles fixed '
                     f'shapes), got {element_spec}; pass jit_compile=None (XLA only when '
                     'shapes are fixed) or pad the examples to one shape in preprocessing.')
  return fixed if jit_compile is None else bool(jit_compile)


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
  if not all(hasattr(value, field) for field in CompiledState._fields):
    raise TypeError(f'Expected {expected}, got {type(value).__name__}.')


# Subclasses of CompiledProcess for algorithms whose rounds take more than the
# batches, by algorithm name; each registers itself when `fedtff.compiled`
# imports it (fedtff/compiled/scaffold.py: SCAFFOLD's control variates).
PROCESS_CLASSES: Dict[str, type] = {}


class _ClientOutput(NamedTuple):
  """One client's contribution to the round."""
  update: List[tf.Tensor]  # The model delta (FedSGD: the gradient), zeroed if non-finite.
  weight: tf.Tensor        # Its weight: 0 if non-finite.
  stats: client_work.TrainStats
  non_finite: tf.Tensor    # bool: whether the update was non-finite.
  gradient: Any            # Mime Lite: the full-batch gradient at the server model;
                           # FedNova: [τ], the local steps; else ().


class CompiledProcess:
  """A learning process whose `next` is one compiled graph.

  Built by `build_compiled_process`; the methods mirror
  `tff.learning.templates.LearningProcess`'s.
  """

  def __init__(self, model_fn, element_spec, *, algorithm: _Algorithm,
               client_optimizer: Optional[optimizers.TffOptimizer],
               server_optimizer: optimizers.TffOptimizer,
               aggregation: aggregation_lib.Aggregation, loss, metrics, jit_compile: bool,
               client_optimizer_fn: Optional[Callable[[Any], optimizers.TffOptimizer]] = None):
    self._model_fn = model_fn
    self._element_spec = element_spec
    self._algorithm = algorithm
    self._client_optimizer = client_optimizer
    self._client_optimizer_fn = client_optimizer_fn  # With a schedule: learning rate -> optimizer.
    # Mime Lite's full gradients: TFF's default (unweighted) mean, whatever the model aggregator.
    self._gradient_mean = aggregation_lib.Aggregation(aggregation.weighted)
    self._server_optimizer = server_optimizer
    self._aggregation = aggregation
    self._model = client_work.PaddedModel(model_fn(), loss, metrics)
    self.jit_compile = jit_compile  # Whether XLA compiles the round.
    self._template = self._initial_state(self._model.keras_model)  # No second model to build.
    round_template = self._template._replace(aggregator=aggregation_lib.round_state_template(
        aggregation, self._template.aggregator))
    self._round = tf.function(
        self._round_graph, jit_compile=jit_compile, autograph=False,
        input_signature=self._round_signature(round_template))
    # Trace now, while the Keras classes are in their eager (v2) form: Keras swaps
    # the base classes of Sequential and friends to its v1 ones whenever a model
    # is built in a graph, as TFF's tracing does, and an eager-built model called
    # in that state fails ("Your Layer or Model is in an invalid state").
    self._round.get_concrete_function()

  def _round_signature(self, round_template: CompiledState) -> list:
    """The round graph's input signature: state, batches, noise seed."""
    return [tf.nest.map_structure(tf.TensorSpec.from_tensor, round_template),
            batches_lib.signature(self._element_spec), tf.TensorSpec([2], tf.int64)]

  @property
  def algorithm(self) -> str:
    return self._algorithm.name

  @property
  def state_template(self) -> CompiledState:
    """A state of this process built without a new Keras model: the initial state
    with the round's working model's first weights (`initialize` draws new ones)."""
    return self._template

  def train_metric_names(self) -> List[str]:
    """The `train/<name>` metrics of a round (`output.metrics['client_work']['train']`)."""
    outputs = self._round.get_concrete_function().structured_outputs[1]
    return [f'train/{name}' for name in outputs['client_work']['train']]

  def initialize(self) -> CompiledState:
    """A new state: fresh Keras initial weights, optimizers' initial states."""
    return self._initial_state(self._model_fn())

  def _initial_state(self, model: tf.keras.Model) -> CompiledState:
    """The initial state with `model`'s weights as the server model."""
    weights = Weights(trainable=[v.numpy() for v in model.trainable_variables],
                      non_trainable=[v.numpy() for v in model.non_trainable_variables])
    specs = [tf.TensorSpec(w.shape, w.dtype) for w in weights.trainable]
    return _tensors(CompiledState(weights, self._initial_client_work(specs),
                              self._server_optimizer.initialize(specs),
                              self._aggregation.initial_state()))

  def _gradient_mean_state(self) -> Any:
    """The (empty) state of Mime Lite's full-gradient mean, in TFF's nesting:
    `MeanFactory`'s, or `UnweightedMeanFactory`'s as a weighted aggregator."""
    if self._aggregation.weighted:
      return collections.OrderedDict(value_sum_process=(), weight_sum_process=())
    return ((), ())

  def _initial_client_work(self, specs: List[tf.TensorSpec]) -> Any:
    """TFF's initial client work state (see `CompiledState.client_work`)."""
    if self._algorithm.schedule is not None:  # build_scheduled_client_work: the round number.
      return np.int32(0)
    if self._algorithm.adaptive:  # fed_prox's adaptive client work: mu, float32.
      return np.float32(self._algorithm.proximal_strength)
    if self._algorithm.is_fed_avg:  # As TFF's model_delta_client_work: a whimsy spec.
      whimsy = self._client_optimizer.initialize(tf.TensorSpec([], tf.float32))
      return self._client_optimizer.get_hparams(whimsy)
    if self._algorithm.is_mime_lite:  # The base optimizer's state; the gradient mean's.
      return (self._client_optimizer.initialize(specs), self._gradient_mean_state())
    return ()

  def get_model_weights(self, state: CompiledState) -> Weights:
    """The server model weights, as numpy arrays."""
    return _numpy(self._check_state(state).global_model_weights)

  def set_model_weights(self, state: CompiledState, weights: Weights) -> CompiledState:
    """`state` with the server model set to `weights` (a `ModelWeights`)."""
    weights = Weights(list(weights.trainable), list(weights.non_trainable))
    packed = _pack_like(self._template.global_model_weights, weights, 'model weights')
    return self._check_state(state)._replace(global_model_weights=_tensors(packed))

  def next(self, state: CompiledState,
           client_batches: Union[batches_lib.ClientBatches, Sequence[tf.data.Dataset]],
           *, noise_seed: Optional[Sequence[int]] = None
          ) -> tff.learning.templates.LearningProcessOutput:
    """Runs one round; returns `(state, metrics)` with TFF's metric names.

    Args:
      state: The current `CompiledState`.
      client_batches: The round's clients: a `fedtff.compiled.ClientBatches`, or a
        list of batched datasets (read each call; for speed build
        `ClientBatches` once, e.g. with `fedtff.compiled.PaddedClientData`).
        Any number of clients, none included (`fedtff.compiled.cohorts`).
      noise_seed: Two integers that seed this round's DP noise (stateless).
        `None` draws them from the OS, so the noise cannot be predicted; the
        runner passes seeds derived from a per-run secret kept in the
        checkpoint, so that a resumed run repeats the same noise.
    """
    if not isinstance(client_batches, batches_lib.ClientBatches):
      client_batches = (batches_lib.from_datasets(list(client_batches)) if len(client_batches)
                        else cohorts.empty(self._element_spec))
    aggregation_lib.check_round(self._aggregation, int(client_batches.num_batches.shape[0]))
    client_batches = cohorts.pad(client_batches)
    if noise_seed is None:
      noise_seed = [secrets.randbits(63), secrets.randbits(63)]
    state = self._check_state(state)
    round_aggregator, decided = aggregation_lib.before_round(self._aggregation, state.aggregator)
    new_state, metrics = self._round(state._replace(aggregator=round_aggregator), client_batches,
                                     tf.constant(noise_seed, tf.int64))
    new_state = new_state._replace(
        aggregator=aggregation_lib.after_round(new_state.aggregator, decided))
    return tff.learning.templates.LearningProcessOutput(new_state, _numpy(metrics))

  def to_tff_state(self, state: CompiledState,
                   tff_process: Union[tff.learning.templates.LearningProcess, Any]) -> Any:
    """`state` as a state of `tff_process`, built by `fedtff.build_learning_process`
    from the same arguments.

    The fields the compiled state lacks (`distributor`, and the `aggregator`
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
    fields['aggregator'] = aggregation_lib.to_tff_state(self._aggregation, state.aggregator,
                                                        template.aggregator)
    return template._replace(**fields)

  def from_tff_state(self, tff_state: Any) -> CompiledState:
    """The `CompiledState` of a state of the matching TFF process (e.g. a checkpoint)."""
    _check_tff_state(tff_state, 'a TFF LearningAlgorithmState')
    copied = [_pack_like(_numpy(getattr(self._template, field)), getattr(tff_state, field),
                         f'TFF state {field}') for field in _COPIED_FIELDS]
    return _tensors(CompiledState(
        *copied, aggregation_lib.from_tff_state(self._aggregation, tff_state.aggregator)))

  def _check_state(self, state: Any) -> CompiledState:
    if not isinstance(state, CompiledState):
      raise TypeError(f'Expected a fedtff.compiled.CompiledState, got {type(state).__name__}; convert '
                      'a TFF state with from_tff_state(state).')
    return state

  # The round graph.

  def _client(self, state: CompiledState, client_optimizer, batches, index) -> '_ClientOutput':
    """One client's work; a non-finite update is zeroed and weighted 0, as TFF's
    client work does."""
    first, count = batches.first_batch[index], batches.num_batches[index]
    weights = state.global_model_weights
    gradient = ()
    if self._algorithm.sends_gradients:
      update, weight, stats = client_work.sum_gradients(self._model, weights, batches, first, count)
    else:
      if self._algorithm.is_mime_lite:  # The full-batch gradient at the server model first.
        gradient, _, _ = client_work.sum_gradients(
            self._model, weights, batches, first, count, no_nan_division=True,
            update_metrics=False)
        initial_state = state.client_work[0]
      else:
        holds_hparams = self._algorithm.is_fed_avg and self._algorithm.schedule is None
        hparams = state.client_work if holds_hparams else None
        initial_state = client_work.fresh_optimizer_state(self._model, client_optimizer, hparams)
      if self._algorithm.q is not None:  # q-FedAvg: F_k(w_t) before the local steps.
        loss_sums = client_work.loss_sums(self._model, weights, batches, first, count)
      update, stats = client_work.train_delta(
          self._model, client_optimizer, initial_state, weights, batches, first, count,
          proximal_strength=(state.client_work if self._algorithm.adaptive
                             else self._algorithm.proximal_strength),
          frozen_state=self._algorithm.is_mime_lite)
      weight = local_steps.client_weight(stats.num_examples, weighted=self._aggregation.weighted)
      if self._algorithm.q is not None:  # Δ_k / h_k with weight h_k.
        update, weight = local_steps.q_fair_update(update, loss_sums, self._algorithm.q,
                                                   self._algorithm.learning_rate)
    if self._algorithm.is_fed_nova:  # FedNova's message (Δ/τ, τ), zeroed as one (as on TFF).
      (update, steps), weight, non_finite = local_steps.zero_non_finite(
          local_steps.normalized_update(update, stats.num_batches), weight)
      return _ClientOutput(update, weight, stats, non_finite, [steps])
    update, weight, non_finite = local_steps.zero_non_finite(update, weight)
    return _ClientOutput(update, weight, stats, non_finite, gradient)

  def _client_step(self, state: CompiledState, client_optimizer, batches, index, acc, totals,
                   gradient_acc):
    """Runs client `index` and adds it to the round's sums."""
    resets_metrics = self._algorithm.is_fed_avg  # TFF resets a non-finite client's metrics.
    snapshot = [v.read_value() for v in self._model.metric_variables] if resets_metrics else []
    output = self._client(state, client_optimizer, batches, index)
    stats = output.stats
    if resets_metrics:
      stats = tf.cond(output.non_finite, client_work.TrainStats.zeros, lambda: stats)
      for variable, value in zip(self._model.metric_variables, snapshot):
        variable.assign(tf.where(output.non_finite, value, variable.read_value()))
    if self._algorithm.is_mime_lite or self._algorithm.is_fed_nova:
      # Mime Lite: TFF's full_gradient_aggregator, the model delta's weight. FedNova: τ's
      # mean, τ_eff = Σ p_i τ_i, with the update's weight (TFF means (Δ/τ, τ) as one).
      gradient_acc = aggregation_lib.accumulate(self._gradient_mean, gradient_acc,
                                                output.gradient, output.weight)
    return (aggregation_lib.accumulate(self._aggregation, acc, output.update, output.weight,
                                       state.aggregator),
            totals + stats, gradient_acc)

  def _round_client_optimizer(self, state: CompiledState):
    """The client optimizer of the round: with a schedule, TFF's
    `optimizer_fn(learning_rate_fn(round_num))`; and the learning rate, or None."""
    if self._algorithm.schedule is None:
      return self._client_optimizer, None
    learning_rate = self._algorithm.schedule(state.client_work)
    return self._client_optimizer_fn(learning_rate), learning_rate

  def _next_client_work(self, state: CompiledState, gradient_acc, noise_seed) -> Any:
    """The client work state after the round (TFF's client work `next`)."""
    if self._algorithm.schedule is not None:
      return state.client_work + 1
    if self._algorithm.is_mime_lite:  # TFF's update_optimizer_state, at whimsy zero weights.
      gradient, _ = aggregation_lib.result(self._gradient_mean, gradient_acc, noise_seed)
      optimizer_state, aggregator_state = state.client_work
      optimizer_state, _ = self._client_optimizer.next(
          optimizer_state, [tf.zeros_like(g) for g in gradient], gradient)
      return (optimizer_state, aggregator_state)
    return state.client_work

  def _apply_server_update(self, state: CompiledState, update: List[tf.Tensor]):
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

  def _stateful_round_metrics(self, totals: client_work.TrainStats, acc, aggregator_state,
                              state: CompiledState, non_finite) -> collections.OrderedDict:
    """The round metrics of the stateful-client rounds (SCAFFOLD, Ditto), in TFF's layout:
    the training metrics, the mean's measurements and the finalizer's."""
    return collections.OrderedDict(
        distributor=(), client_work=collections.OrderedDict(train=self._train_metrics(totals)),
        aggregator=aggregation_lib.measurements(self._aggregation, acc, aggregator_state,
                                                round_state=state.aggregator),
        finalizer=collections.OrderedDict(update_non_finite=non_finite))

  def _train_metrics(self, totals: client_work.TrainStats) -> collections.OrderedDict:
    return self._model.train_metrics(totals)

  def _round_graph(self, state: CompiledState, batches: batches_lib.ClientBatches,
                   noise_seed: tf.Tensor):
    for variable in self._model.metric_variables:
      variable.assign(tf.zeros_like(variable))
    client_optimizer, learning_rate = self._round_client_optimizer(state)
    trainable = state.global_model_weights.trainable
    loop_vars = (aggregation_lib.initial(trainable, self._aggregation, noise_seed),
                 client_work.TrainStats.zeros(),
                 aggregation_lib.initial(trainable) if self._algorithm.is_mime_lite else
                 aggregation_lib.initial([tf.zeros([])]) if self._algorithm.is_fed_nova else ())
    _, (acc, totals, gradient_acc) = tf.while_loop(
        lambda c, _: c < cohorts.num_clients(batches),
        lambda c, v: (c + 1, self._client_step(state, client_optimizer, batches, c, *v)),
        (tf.constant(0, tf.int32), loop_vars))
    update, clip_state = aggregation_lib.result(self._aggregation, acc, noise_seed,
                                                state.aggregator)
    if self._algorithm.is_fed_nova:  # τ_eff · Σ p_i d_i.
      (mean_steps,), _ = aggregation_lib.result(self._gradient_mean, gradient_acc, noise_seed)
      update = local_steps.normalized_server_update(update, mean_steps)
    new_state, non_finite = self._apply_server_update(state, update)
    new_state = new_state._replace(
        aggregator=clip_state,
        client_work=self._next_client_work(state, gradient_acc, noise_seed))
    client_metrics = collections.OrderedDict(train=self._train_metrics(totals))
    if learning_rate is not None:  # build_scheduled_client_work reports the round's rate.
      client_metrics['client_learning_rate'] = learning_rate
    metrics = collections.OrderedDict(
        distributor=(), client_work=client_metrics,
        aggregator=aggregation_lib.measurements(self._aggregation, acc, clip_state,
                                                round_state=state.aggregator),
        finalizer=collections.OrderedDict(update_non_finite=non_finite))
    return new_state, metrics


def build_compiled_process(model_fn: tff_model.KerasModelFn,
                           element_spec: tff_model.ElementSpecLike,
                           *,
                           algorithm: str = 'fedavg',
                           client_optimizer: Optional[fed_avg.ClientOptimizer] = None,
                           server_optimizer: Optional[optimizers.TffOptimizer] = None,
                           client_learning_rate_schedule: Optional[schedules.Schedule] = None,
                           proximal_strength: Optional[float] = None,
                           q: Optional[float] = None,
                           loss: Optional[tf.keras.losses.Loss] = None,
                           metrics: Optional[Sequence[tff_model.MetricLike]] = None,
                           weighted: bool = True,
                           aggregator: Optional[builder.Aggregator] = None,
                           jit_compile: Optional[bool] = None,
                           population_size: Optional[int] = None,
                           adaptive_proximal_strength: bool = False,
                           ditto_lambda: Optional[float] = None) -> CompiledProcess:
  """Builds the compiled process of `fedtff.build_learning_process`'s arguments.

  With the same initial weights and the same client batches in the same
  order, its rounds give the weights and metrics of the TFF process
  `fedtff.build_learning_process` builds from these arguments (to float32
  rounding). What it does not implement it refuses, naming the TFF engine.

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
      fedadam, fedyogi, fedprox, fedsgd, mimelite, qfedavg, scaffold, fednova, ditto.
      Mime Lite runs both its passes (the full gradient, then the training
      steps) over the same batches; TFF iterates a client's dataset twice, so
      the two match when the dataset gives one order on every iteration (the
      runner's round-seeded client data do; a `shuffle` that reshuffles on
      each iteration does not).
    client_optimizer: A TFF optimizer (`fedtff.build_optimizer(...)`); for mimelite
      the base optimizer; none for fedsgd. With a schedule, a function from
      learning rate to optimizer (`fedtff.build_optimizer_fn(...)`), or None for SGD.
    server_optimizer: A TFF optimizer; the default depends on `algorithm`
      (`fedtff.algorithms.registry.REGISTRY`, as for the TFF builders).
    client_learning_rate_schedule: A `fedtff.Schedule` (weighted FedAvg family
      only, as on TFF). As in TFF's `build_weighted_fed_avg_with_optimizer_schedule`,
      the state's `client_work` is the 0-based round number, each round's
      clients use `client_optimizer(schedule(round))`, and the metrics report
      it as `client_work/client_learning_rate`.
    proximal_strength: FedProx's mu; required by, and only by, fedprox.
    q: q-FedAvg's q >= 0; required by, and only by, qfedavg (its loss pass and
      local steps run over the same batches, as Mime Lite's two passes).
    loss: A Keras loss that gives a scalar (any reduction but 'none'); it sees
      the real rows of each batch (`fedtff.algorithms.batch_loss`); defaults to
      sparse categorical cross-entropy on logits.
    metrics: Keras metrics; defaults to accuracy.
    weighted: Whether client updates are weighted by their number of examples.
    aggregator: None (mean) or a `fedtff.AggregatorSpec`: 'mean', 'robust'
      with a fixed `clip_norm` (and fixed `zeroing_norm` if zeroing), or 'dp'
      with a fixed or adaptive (`clip_norm` None) clip norm; or TFF's
      `DifferentiallyPrivateFactory.tree_aggregation` (DP-FTRL,
      `fedtff.privacy.ftrl.ftrl_aggregator`; `fedtff.compiled.tree`).
    jit_compile: Compile the round with XLA (2.0-2.8x faster in
      scripts/bench.py here, docs/performance.md); False for models XLA cannot
      compile. None (the default): XLA when every example has a fixed shape;
      examples of varying shape (e.g. sequences batched with `padded_batch`)
      run without it, each batch cut to its own shape (`fedtff.compiled.batch_at`),
      and with them True is refused. The distributed Skellam mean always runs
      without XLA (no Poisson kernel).
    population_size: SCAFFOLD's N; required by, and only by, scaffold, whose
      process is a `fedtff.compiled.scaffold.CompiledScaffold`
      (`next_with_controls` takes and returns the clients' control variates).
    ditto_lambda: Ditto's λ; required by, and only by, ditto, whose process is a
      `fedtff.compiled.ditto.CompiledDitto` (`next_with_controls` takes and
      returns the clients' personal-model rows).
    adaptive_proximal_strength: fedprox: mu is the state's `client_work`
      (float32), as on TFF (`fedtff.build_learning_process`).

  Raises:
    ValueError, TypeError: On options that do not combine (the checks of
      `fedtff.build_learning_process`), or that the compiled engine does not
      implement (the aggregators `fedtff.compiled.aggregation` refuses, ragged
      or sparse examples, losses with reduction 'none'); jit_compile=True with
      examples of varying shape.
  """
  if algorithm == 'fednova':
    fed_nova.check_aggregator(aggregator)
  builder.check_adaptive(algorithm, adaptive_proximal_strength)
  builder._check_options(  # pylint: disable=protected-access  # The TFF builder's own checks.
      algorithm, server_optimizer=server_optimizer, client_optimizer=client_optimizer,
      client_learning_rate_schedule=client_learning_rate_schedule,
      proximal_strength=proximal_strength, weighted=weighted,
      population_size=population_size, q=q, aggregator=aggregator, ditto_lambda=ditto_lambda)
  client_optimizer_fn = None
  if client_learning_rate_schedule is not None:  # fed_avg's checks; a whimsy optimizer, as TFF.
    client_optimizer_fn = fed_avg.scheduled_optimizer_fn(client_optimizer, weighted=weighted)
    client_optimizer = client_optimizer_fn(1.0)
  aggregation = aggregation_lib.from_spec(aggregator, weighted=weighted)
  element_spec = tff_model.element_spec_of(element_spec)
  jit_compile = _jit_compile(element_spec, jit_compile)
  tff_model.tff_model_fn(model_fn, element_spec, loss=loss, metrics=metrics)  # Checks the model.
  if registry.get(algorithm).client is not None:  # The defaults: fedtff.algorithms.registry.
    client_optimizer = optimizers.check(
        client_optimizer or registry.default_client_optimizer(algorithm), 'client')
  if algorithm == 'fednova':
    fed_nova.check_client_optimizer(client_optimizer)
  server_optimizer = optimizers.check(
      server_optimizer or registry.default_server_optimizer(algorithm), 'server')
  metric_fns = [tff_model._metric_constructor(m)  # pylint: disable=protected-access
                for m in (tff_model.default_metrics() if metrics is None else metrics)]
  process_class, extra = PROCESS_CLASSES.get(algorithm, CompiledProcess), {}
  if registry.get(algorithm).needs_population_size:
    extra = dict(population_size=population_size)
  if algorithm == 'ditto':
    extra = dict(ditto_lambda=ditto_lambda)
  return process_class(
      model_fn, element_spec,
      algorithm=_Algorithm(algorithm, proximal_strength if algorithm == 'fedprox' else None,
                           client_learning_rate_schedule, q=q,
                           learning_rate=(q_fed_avg.client_learning_rate(client_optimizer)
                                          if q is not None else None),
                           adaptive=adaptive_proximal_strength),
      client_optimizer=client_optimizer, client_optimizer_fn=client_optimizer_fn,
      server_optimizer=server_optimizer,
      aggregation=aggregation, loss=tff_model.default_loss() if loss is None else loss,
      metrics=[fn() for fn in metric_fns],
      jit_compile=jit_compile and aggregation_lib.xla_compatible(aggregation), **extra)
