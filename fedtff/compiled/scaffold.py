"""SCAFFOLD on the compiled engine: the round graph takes and returns the clients' c_i.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020 (arXiv 1910.06378), Algorithm 1, option II; the TFF
engine's build is `fedtff.algorithms.scaffold`. The round graph takes the
sampled clients' control variates as float32 rows `[clients, state_size]`
(each row the flattened trainable weights' shapes, in the clients' order) and
returns their c_i⁺ the same way, so the runner can gather them from and write
them back to its `fedtff.runner.client_states.ClientStateStore`. The
corrected gradient, c_i⁺ and c's update are `fedtff.algorithms.local_steps`'s
functions, which the TFF engine's client work calls too; the state's
`client_work` is c, as in the TFF process's state.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import local_steps
from fedtff.algorithms import scaffold as scaffold_lib
from fedtff.compiled import aggregation as aggregation_lib
from fedtff.compiled import batches as batches_lib
from fedtff.compiled import client_work
from fedtff.compiled import cohorts
from fedtff.compiled import process as process_lib


class CompiledScaffold(process_lib.CompiledProcess):
  """SCAFFOLD's compiled process; `next_with_controls` runs a round.

  Args:
    population_size: N.
    (The rest: `fedtff.compiled.CompiledProcess`'s.)
  """

  def __init__(self, model_fn, element_spec, *, population_size: int, **kwargs):
    self.population_size = scaffold_lib.check_population_size(population_size)
    self._learning_rate = scaffold_lib.sgd_learning_rate(kwargs['client_optimizer'])
    super().__init__(model_fn, element_spec, **kwargs)

  @property
  def state_size(self) -> int:
    """The number of float32 values in one client's control variate."""
    return int(sum(t.size for t in self.control_template))

  def _initial_client_work(self, specs: List[tf.TensorSpec]) -> Any:
    """c = 0; also sets `control_template`, a zero control variate (NumPy arrays)."""
    self.control_template = [np.zeros(spec.shape, np.float32) for spec in specs]
    return list(self.control_template)

  def _round_signature(self, round_template) -> list:
    size = sum(int(np.prod(t.shape)) for t in round_template.global_model_weights.trainable)
    return super()._round_signature(round_template) + [tf.TensorSpec([None, size], tf.float32)]

  def next(self, state, client_batches, *, noise_seed=None):
    raise TypeError('SCAFFOLD rounds take the clients\' control variates: call '
                    'next_with_controls(state, client_batches, control_rows).')

  def next_with_controls(
      self, state: process_lib.CompiledState,
      client_batches: Union[batches_lib.ClientBatches, Sequence[tf.data.Dataset]],
      control_rows: np.ndarray
  ) -> Tuple[tff.learning.templates.LearningProcessOutput, np.ndarray]:
    """Runs one round; returns `(LearningProcessOutput, the clients' c_i⁺ rows)`.

    Args:
      state: The current `CompiledState` (`client_work` is c).
      client_batches: The round's clients, as for `CompiledProcess.next`.
      control_rows: Their c_i, `[clients, state_size]` float32, in their order.
    """
    if not isinstance(client_batches, batches_lib.ClientBatches):
      client_batches = (batches_lib.from_datasets(list(client_batches)) if len(client_batches)
                        else cohorts.empty(self._element_spec))
    real = int(client_batches.num_batches.shape[0])
    control_rows = np.asarray(control_rows, np.float32)
    if control_rows.shape != (real, self.state_size):
      raise ValueError(f'control_rows must have shape ({real}, {self.state_size}) (one c_i per '
                       f'client), got {control_rows.shape}.')
    client_batches = cohorts.pad(client_batches)
    padded = np.zeros([cohorts.padded_size(real), self.state_size], np.float32)
    padded[:real] = control_rows
    new_state, metrics, rows = self._round(self._check_state(state), client_batches,
                                           tf.zeros([2], tf.int64), tf.constant(padded))
    metrics = process_lib._numpy(metrics)  # pylint: disable=protected-access
    return tff.learning.templates.LearningProcessOutput(new_state, metrics), rows.numpy()[:real]

  def _unflatten(self, row: tf.Tensor) -> List[tf.Tensor]:
    sizes = [t.size for t in self.control_template]
    return [tf.reshape(part, t.shape)
            for part, t in zip(tf.split(row, sizes), self.control_template)]

  def _scaffold_client(self, state, batches, index, rows, acc, totals, delta_sum):
    """Client `index`: corrected local steps, c_i⁺ into `rows`, Δy and Δc_i into the sums."""
    first, count = batches.first_batch[index], batches.num_batches[index]
    weights, server_control = state.global_model_weights, list(state.client_work)
    client_control = self._unflatten(rows[index])
    initial_state = client_work.fresh_optimizer_state(self._model, self._client_optimizer)
    update, stats = client_work.train_delta(
        self._model, self._client_optimizer, initial_state, weights, batches, first, count,
        control=(client_control, server_control))
    weight = local_steps.client_weight(stats.num_examples, weighted=self._aggregation.weighted)
    update, weight, non_finite = local_steps.zero_non_finite(update, weight)
    new_control = local_steps.scaffold_control(client_control, server_control, update,
                                               stats.num_batches, self._learning_rate,
                                               non_finite)
    delta_sum = [s + n - o for s, n, o in zip(delta_sum, new_control, client_control)]
    flat = tf.concat([tf.reshape(t, [-1]) for t in new_control], 0)
    rows = tf.tensor_scatter_nd_update(rows, [[index]], flat[tf.newaxis])
    acc = aggregation_lib.accumulate(self._aggregation, acc, update, weight, state.aggregator)
    return rows, acc, totals + stats, delta_sum

  def _round_graph(self, state, batches, noise_seed, control_rows):
    for variable in self._model.metric_variables:
      variable.assign(tf.zeros_like(variable))
    trainable = state.global_model_weights.trainable
    loop_vars = (control_rows, aggregation_lib.initial(trainable, self._aggregation, noise_seed),
                 client_work.TrainStats.zeros(), [tf.zeros_like(c) for c in state.client_work])
    _, (rows, acc, totals, delta_sum) = tf.while_loop(
        lambda c, _: c < cohorts.num_clients(batches),
        lambda c, v: (c + 1, self._scaffold_client(state, batches, c, *v)),
        (tf.constant(0, tf.int32), loop_vars))
    update, aggregator_state = aggregation_lib.result(self._aggregation, acc, noise_seed,
                                                      state.aggregator)
    new_state, non_finite = self._apply_server_update(state, update)
    new_state = new_state._replace(
        aggregator=aggregator_state,
        client_work=local_steps.scaffold_server_control(list(state.client_work), delta_sum,
                                                        self.population_size))
    metrics = self._stateful_round_metrics(totals, acc, aggregator_state, state, non_finite)
    return new_state, metrics, rows


process_lib.PROCESS_CLASSES['scaffold'] = CompiledScaffold
