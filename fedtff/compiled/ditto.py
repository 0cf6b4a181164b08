"""Ditto on the compiled engine: the round graph takes and returns the clients' rows.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021 (arXiv 2012.04221), Algorithm 1; the TFF engine's
build is `fedtff.algorithms.ditto`, whose docstring states the update. The
round graph takes the sampled clients' rows `[clients, state_size]` (v_k
flattened, then the 'seen' flag) and returns their new rows the same way, as
SCAFFOLD's (`fedtff/compiled/scaffold.py`) takes its control variates; the
runner keeps them in its `fedtff.runner.client_states.ClientStateStore`. The
global model's training is FedAvg's `client_work.train_delta`; the personal
steps are `fedtff.algorithms.local_steps.proximal_gradients` (μ = λ, anchor
w^t) and `local_step`, the functions the TFF engine's client work calls.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np
import tensorflow as tf

from fedtff.algorithms import ditto as ditto_lib
from fedtff.algorithms import local_steps
from fedtff.compiled import aggregation as aggregation_lib
from fedtff.compiled import batches as batches_lib
from fedtff.compiled import client_work
from fedtff.compiled import cohorts
from fedtff.compiled import process as process_lib
from fedtff.compiled import scaffold as scaffold_compiled


class CompiledDitto(scaffold_compiled.CompiledScaffold):
  """Ditto's compiled process; `next_with_controls(state, batches, rows)` runs a round.

  It shares SCAFFOLD's stateful-round protocol (`next_with_controls`, rows in
  and out, padding); its state's `client_work` is empty, as the TFF process's.

  Args:
    ditto_lambda: λ.
    (The rest: `fedtff.compiled.CompiledProcess`'s.)
  """

  def __init__(self, model_fn, element_spec, *, ditto_lambda: float, **kwargs):  # pylint: disable=super-init-not-called
    self.ditto_lambda = ditto_lib.check_lambda(ditto_lambda)
    ditto_lib.check_client_optimizer(kwargs['client_optimizer'])
    process_lib.CompiledProcess.__init__(self, model_fn, element_spec, **kwargs)  # pylint: disable=non-parent-init-called

  @property
  def state_size(self) -> int:
    """The number of float32 values in one client's row: v_k and the 'seen' flag."""
    return ditto_lib.personal_size(self.control_template) + 1

  def _initial_client_work(self, specs: List[tf.TensorSpec]) -> Any:
    """Empty; also sets `control_template`, the trainable weights' shapes (zeros)."""
    self.control_template = [np.zeros(spec.shape, np.float32) for spec in specs]
    return ()

  def _round_signature(self, round_template) -> list:
    return process_lib.CompiledProcess._round_signature(self, round_template) + [  # pylint: disable=protected-access
        tf.TensorSpec([None, self.state_size], tf.float32)]

  def next(self, state, client_batches, *, noise_seed=None):
    raise TypeError("Ditto rounds take the clients' personal-model rows: call "
                    'next_with_controls(state, client_batches, rows).')

  def _personal_steps(self, weights, batches, first, count, personal):
    """v_k ← v_k − η(∇F_k(v_k) + λ(v_k − w^t)) over the client's batches; returns v_k."""
    for variable, value in zip(self._model.trainable, personal):
      variable.assign(value)

    def step(index, optimizer_state):
      batch, mask = batches_lib.batch_at(batches, index)
      with tf.GradientTape() as tape:
        output = self._model.forward(batch, mask, metrics=[])  # The global model's metrics only.
      gradients = tape.gradient(output.loss, self._model.trainable)
      gradients = local_steps.proximal_gradients(gradients, self._model.trainable,
                                                 weights.trainable, self.ditto_lambda)
      return local_steps.local_step(self._client_optimizer, optimizer_state,
                                    self._model.trainable, gradients)

    initial_state = client_work.fresh_optimizer_state(self._model, self._client_optimizer)
    client_work._loop_over_batches(first, count, step, client_work._as_tensors(initial_state))  # pylint: disable=protected-access
    return [v.read_value() for v in self._model.trainable]

  def _ditto_client(self, state, batches, index, rows, acc, totals):
    """Client `index`: FedAvg's local steps from w^t, then the personal steps from v_k."""
    first, count = batches.first_batch[index], batches.num_batches[index]
    weights = state.global_model_weights
    initial_state = client_work.fresh_optimizer_state(self._model, self._client_optimizer)
    update, stats = client_work.train_delta(self._model, self._client_optimizer, initial_state,
                                            weights, batches, first, count)
    weight = local_steps.client_weight(stats.num_examples, weighted=self._aggregation.weighted)
    update, weight, _ = local_steps.zero_non_finite(update, weight)
    personal = local_steps.ditto_initial_personal(rows[index], list(weights.trainable))
    trained = self._personal_steps(weights, batches, first, count, personal)
    new_row = local_steps.ditto_row(trained, personal)
    rows = tf.tensor_scatter_nd_update(rows, [[index]], new_row[tf.newaxis])
    acc = aggregation_lib.accumulate(self._aggregation, acc, update, weight, state.aggregator)
    return rows, acc, totals + stats

  def _round_graph(self, state, batches, noise_seed, rows):
    for variable in self._model.metric_variables:
      variable.assign(tf.zeros_like(variable))
    trainable = state.global_model_weights.trainable
    loop_vars = (rows, aggregation_lib.initial(trainable, self._aggregation, noise_seed),
                 client_work.TrainStats.zeros())
    _, (rows, acc, totals) = tf.while_loop(
        lambda c, _: c < cohorts.num_clients(batches),
        lambda c, v: (c + 1, self._ditto_client(state, batches, c, *v)),
        (tf.constant(0, tf.int32), loop_vars))
    update, aggregator_state = aggregation_lib.result(self._aggregation, acc, noise_seed,
                                                      state.aggregator)
    new_state, non_finite = self._apply_server_update(state, update)
    new_state = new_state._replace(aggregator=aggregator_state)
    metrics = self._stateful_round_metrics(totals, acc, aggregator_state, state, non_finite)
    return new_state, metrics, rows


process_lib.PROCESS_CLASSES['ditto'] = CompiledDitto
