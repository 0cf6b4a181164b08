"""The round loop: sample clients, run a round, evaluate, record metrics.

The loop is independent of files and flags: it takes a learning process, a
client-selection function, an evaluation function and metric writers
(cf. `tff.simulation.run_training_process`).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

Metrics = Dict[str, float]
MetricsWriter = Callable[[Mapping[str, Any]], None]


class RoundEnd(NamedTuple):
  """What a per-round callback sees after round `round_num` (`run_training`).

  Attributes:
    round_num: The round that just ended.
    metrics: Its metrics row, as the metric writers got it.
    model_weights: The server model after the round, a
      `tff.learning.models.ModelWeights` of NumPy arrays.
    history: Every metrics row of the run so far, this one last (rows of
      rounds before a resume included), so a callback need keep no state.
  """
  round_num: int
  metrics: Mapping[str, Any]
  model_weights: Any
  history: Sequence[Mapping[str, Any]]


# Called after every round; returns None to go on, or a reason (a sentence) to
# stop the run after this round (`run_training`).
Callback = Callable[[RoundEnd], Optional[str]]


SAMPLINGS = ('fixed', 'poisson', 'cyclic')


def sample_clients(client_ids: Sequence[str], clients_per_round: int, *,
                   round_num: int, seed: int, sampling: str = 'fixed') -> list:
  """The clients of round `round_num`, drawn from `(seed, round_num)` only.

  The draw depends only on `(seed, round_num)` (and, for 'cyclic', `seed`), so a
  resumed run samples the same clients as an uninterrupted one.

  Args:
    client_ids: The `N` training clients.
    clients_per_round: `m`: the cohort size ('fixed', 'cyclic') or the
      expected cohort size ('poisson').
    round_num: The round, from 1.
    seed: The run's sampling seed.
    sampling: 'fixed': `m` distinct clients uniformly without replacement.
      'poisson': each client independently with probability `q = m / N`
      (Poisson sampling, McMahan et al. 2018), so the cohort's size varies
      and may be 0; the ids keep `client_ids`' order. 'cyclic': one random
      permutation (from `seed`) cut into `N // m` disjoint cohorts of `m`,
      used in turn, so every client joins once every `N // m` rounds (DP-FTRL,
      Kairouz et al. 2021); the `N mod m` clients left over never join.
  """
  if not 1 <= clients_per_round <= len(client_ids):
    raise ValueError(
        f'clients_per_round must be in [1, {len(client_ids)}] (the number of '
        f'training clients), got {clients_per_round}.')
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}.')
  if sampling == 'cyclic':
    cohorts = len(client_ids) // clients_per_round
    order = np.random.default_rng([seed, 0]).permutation(len(client_ids))
    start = ((round_num - 1) % cohorts) * clients_per_round
    return [client_ids[i] for i in order[start:start + clients_per_round]]
  rng = np.random.default_rng([seed, round_num])
  if sampling == 'poisson':
    joins = rng.random(len(client_ids)) < clients_per_round / len(client_ids)
    return [client_id for client_id, join in zip(client_ids, joins) if join]
  chosen = rng.choice(len(client_ids), size=clients_per_round, replace=False)
  return [client_ids[i] for i in chosen]


def scalar_metrics(metrics: Mapping[str, Any], prefix: str) -> Metrics:
  """Flattens nested metrics to `{prefix}/{name}` floats."""
  flat = {}
  for name, value in metrics.items():
    if isinstance(value, Mapping):
      flat.update(scalar_metrics(value, f'{prefix}/{name}'))
    elif np.ndim(value) == 0:
      flat[f'{prefix}/{name}'] = float(value)
  return flat


def train_metrics(output_metrics: Mapping[str, Any]) -> Metrics:
  """The client training metrics of a FedAvg-family round output."""
  return scalar_metrics(output_metrics['client_work']['train'], 'train')


def metric_names(process: tff.templates.IterativeProcess, extract: Callable) -> list:
  """The metric names `extract` yields for `process`, read off its type signature."""
  return list(extract(_zeros_like(process.next.type_signature.result.metrics.member)))


def _zeros_like(type_spec):
  if isinstance(type_spec, tff.StructType):
    return {name: _zeros_like(t) for name, t in tff.structure.to_elements(type_spec)}
  return 0.0


class TrainingDivergedError(RuntimeError):
  """A round diverged: a non-finite metric, update or weight, or every client dropped."""


# The finalizer's measurement that the aggregated update was not finite and not
# applied (TFF's `apply_optimizer_finalizer.reject_non_finite_update`).
UPDATE_NON_FINITE = 'update_non_finite'
_NUM_EXAMPLES = 'train/num_examples'


def _model_weights(process, state):
  weights = getattr(state, 'global_model_weights', None)
  return weights if weights is not None else process.get_model_weights(state)


def has_examples(clients: Any) -> bool:
  """Whether any of a round's client datasets yields an element; client ids count as data.

  A round with no clients at all (an empty Poisson cohort) has none.
  """
  if isinstance(clients, (list, tuple)) and not clients:
    return False
  datasets = [c for c in clients if isinstance(c, tf.data.Dataset)] if isinstance(
      clients, (list, tuple)) else []
  if not datasets:
    return True
  return any(next(iter(d.take(1)), None) is not None for d in datasets)


def divergence(process, state, row: Mapping[str, Any], *, update_non_finite: bool = False,
               clients_have_data: Callable[[], bool] = lambda: True) -> Optional[str]:
  """Why the round of `row` diverged, or None if it did not.

  TFF's client work zeroes a client's update that is not finite and weights it
  0; the FedAvg family also resets that client's metrics
  (`templates/model_delta_client_work.py`). A round in which every client was
  dropped so leaves the model as it was and reports loss 0 over 0 examples. So
  a round diverged if any metric or model weight is not finite, if the server
  rejected the aggregated update as not finite (`update_non_finite`), or if
  it counted 0 training examples while its clients had data.

  Args:
    process: The learning process (for its model weights).
    state: The state after the round.
    row: The round's metrics row.
    update_non_finite: The finalizer's `update_non_finite` measurement.
    clients_have_data: Whether the round's clients hold any examples; called
      only when the round counted none.
  """
  for name, value in row.items():
    if isinstance(value, (int, float, np.number)) and not np.isfinite(value):
      return f'{name} is {value}'
  if row.get(_NUM_EXAMPLES, 1) == 0 and clients_have_data():
    return ("every sampled client's update was not finite and was dropped "
            f'({_NUM_EXAMPLES} is 0 while the clients hold data)')
  if update_non_finite:
    return 'the aggregated model update is not finite (the server did not apply it)'
  if not all(np.all(np.isfinite(w)) for w in tf.nest.flatten(_model_weights(process, state))):
    return 'the model weights are no longer finite'
  return None


def check_finite(process, state, row: Mapping[str, Any], **kwargs) -> None:
  """Raises `TrainingDivergedError` naming the round and the cause if the round
  diverged (`divergence`; `kwargs` are its keyword arguments)."""
  cause = divergence(process, state, row, **kwargs)
  if cause:
    raise TrainingDivergedError(f"Training diverged at round {row['round']}: {cause}.")


def run_training(process: tff.learning.templates.LearningProcess,
                 client_selection_fn: Callable[[int], Any],
                 *,
                 total_rounds: int,
                 state: Any = None,
                 start_round: int = 1,
                 evaluation_fn: Optional[Callable[[Any, int], Metrics]] = None,
                 rounds_per_eval: int = 1,
                 metrics_writers: Sequence[MetricsWriter] = (),
                 checkpoint_fn: Optional[Callable[[int, Any], None]] = None,
                 rounds_per_checkpoint: int = 1,
                 round_metrics_fn: Optional[Callable[[int], Metrics]] = None,
                 has_examples_fn: Callable[[Any], bool] = has_examples,
                 callbacks: Sequence[Callback] = (),
                 history: Sequence[Mapping[str, Any]] = ()) -> Any:
  """Runs rounds `start_round..total_rounds` and returns the final state.

  Args:
    process: The learning process; `process.next(state, clients)` takes what
      `client_selection_fn` returns (datasets, or client ids for a process
      composed with a dataset computation).
    client_selection_fn: Maps a round number to that round's client data.
    total_rounds: The last round to run.
    state: The state to start from; `process.initialize()` when `None`.
    start_round: The first round to run (after a resume, one past the last).
    evaluation_fn: Maps `(state, round_num)` to `eval/<name>` metrics.
    rounds_per_eval: Evaluate after every this many rounds, and after the last.
    metrics_writers: Each is called with every round's metrics row.
    checkpoint_fn: Called as `(round_num, state)` every `rounds_per_checkpoint`
      rounds and after the last.
    rounds_per_checkpoint: See `checkpoint_fn`.
    round_metrics_fn: Maps a round number to metrics added to its row, e.g.
      the privacy spent so far.
    has_examples_fn: Whether a round's clients (what `client_selection_fn`
      returns) hold any examples; asked only of a round that counted none.
      The default reads datasets, and takes client ids to hold data.
    callbacks: Each is called after every round (after its row is written)
      with a `RoundEnd`; one that returns a reason (a non-empty string) stops
      the loop after that round, which is then checkpointed whether or not
      a checkpoint was due. Callbacks after the one that stopped are not called.
    history: The metrics rows of the rounds before `start_round` (after a
      resume), passed on to callbacks in `RoundEnd.history`.

  Raises:
    TrainingDivergedError: At the first round that diverged (`divergence`): a
      non-finite metric (training or evaluation), update or model weight, or
      every sampled client's update dropped as non-finite. Nothing of that
      round is written or checkpointed.
  """
  if state is None:
    state = process.initialize()
  history = list(history)
  for round_num in range(start_round, total_rounds + 1):
    clients = client_selection_fn(round_num)
    state, row, update_non_finite = _run_round(process, state, clients, round_num)
    check = lambda: check_finite(process, state, row, update_non_finite=update_non_finite,
                                 clients_have_data=lambda: has_examples_fn(clients))
    check()  # Before evaluating: evaluation of a diverged model is wasted.
    if evaluation_fn and _due(round_num, rounds_per_eval, total_rounds):
      row.update(evaluation_fn(state, round_num))
      check()
    if round_metrics_fn:
      row.update(round_metrics_fn(round_num))
    for write in metrics_writers:
      write(row)
    history.append(row)
    stop = _stop_reason(callbacks, process, state, history) if callbacks else None
    if checkpoint_fn and (stop or _due(round_num, rounds_per_checkpoint, total_rounds)):
      checkpoint_fn(round_num, state)
    if stop:
      break
  return state


def _stop_reason(callbacks: Sequence[Callback], process, state,
                 history: Sequence[Mapping[str, Any]]) -> Optional[str]:
  """The first reason a callback gives to stop after the newest round of `history`."""
  weights = tf.nest.map_structure(np.asarray, _model_weights(process, state))
  end = RoundEnd(int(history[-1]['round']), history[-1], weights, tuple(history))
  for callback in callbacks:
    reason = callback(end)
    if reason:
      return reason if isinstance(reason, str) else f'{_name(callback)} asked to stop'
  return None


def _name(callback: Callback) -> str:
  return getattr(callback, '__name__', type(callback).__name__)


def _due(round_num: int, every: int, total_rounds: int) -> bool:
  return round_num % every == 0 or round_num == total_rounds


def _run_round(process, state, clients, round_num: int):
  start = time.perf_counter()
  output = process.next(state, clients)
  seconds = time.perf_counter() - start
  metrics = train_metrics(output.metrics)
  row = collections.OrderedDict(round=round_num, round_time_s=seconds,
                                examples_per_s=metrics.get('train/num_examples', 0.0) / seconds)
  row.update(metrics)
  finalizer = output.metrics.get('finalizer', {})
  update_non_finite = bool(np.any(finalizer.get(UPDATE_NON_FINITE, 0))) if isinstance(
      finalizer, Mapping) else False
  return output.state, row, update_non_finite
