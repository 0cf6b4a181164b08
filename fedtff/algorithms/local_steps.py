"""The local steps of client training, written once for both engines.

fedtff's TFF client work (FedProx, `fedtff.algorithms.fed_prox`) and the
compiled engine's client work (`fedtff/compiled/client_work.py`, every
algorithm) call these functions instead of each restating the arithmetic:

* `proximal_gradients`: FedProx's gradient g + μ·(w − w_t), the gradient of
  the loss plus (μ/2)·‖w − w_t‖² (Li et al., "Federated Optimization in
  Heterogeneous Networks", MLSys 2020, arXiv 1812.06127).
* `local_step`: one client-optimizer step applied to the model's variables.
* `model_delta`: the update a client sends, initial − trained (FedAvg,
  McMahan et al., AISTATS 2017, arXiv 1602.05629).
* `client_weight`: the number of examples (weighted) or 1 (uniform).
* `zero_non_finite`: a delta with a non-finite value is zeroed and weighted 0.
* `normalized_update` and `normalized_server_update`: FedNova's normalized
  averaging (Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective
  Inconsistency Problem in Heterogeneous Federated Optimization", NeurIPS
  2020, arXiv 2007.07481): client i sends d_i = Δ_i / τ_i (plain local SGD:
  a_i is τ_i ones, ‖a_i‖₁ = τ_i) and its τ_i; the server applies
  τ_eff · Σ p_i d_i with τ_eff = Σ p_i τ_i, the p_i the aggregation weights.

Where fedtff calls TFF's own builders (FedAvg and its server-optimizer
variants, FedSGD, Mime Lite), TFF's client work runs on the TFF engine and
these functions state the same arithmetic as TFF 0.87's source:
`learning/templates/model_delta_client_work.py` (`reduce_fn`, `client_update`,
`_choose_client_weight`), `learning/algorithms/fed_sgd.py` and
`learning/algorithms/mime.py` (the same weight rule), all zeroing with
`learning/tensor_utils.py`'s `zero_all_if_any_non_finite`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import tensorflow as tf
import tensorflow_federated as tff

from tensorflow_federated.python.learning import tensor_utils


def proximal_gradients(gradients: Sequence[tf.Tensor], weights: Sequence[Any],
                       anchor: Sequence[Any], proximal_strength: float) -> List[tf.Tensor]:
  """FedProx's gradients: `g + μ·(w − w_t)` for each tensor.

  Args:
    gradients: The loss's gradients at `weights`.
    weights: The client's current trainable weights (variables or tensors).
    anchor: The round's server weights w_t.
    proximal_strength: μ ≥ 0.
  """
  return [g + proximal_strength * (w - w_t) for g, w, w_t in zip(gradients, weights, anchor)]


def local_step(optimizer: tff.learning.optimizers.Optimizer, optimizer_state: Any,
               variables: Sequence[tf.Variable], gradients: Sequence[tf.Tensor], *,
               as_structure: Callable = tuple) -> Any:
  """One optimizer step on `variables`, assigned in place; returns the optimizer's next state.

  Args:
    optimizer: A TFF optimizer.
    optimizer_state: Its state before the step.
    variables: The trainable variables the step updates.
    gradients: Their gradients.
    as_structure: The structure the optimizer sees: `tuple` as
      `model_delta_client_work` flattens the weights, `list` as Mime Lite keeps them.
  """
  next_state, updated = optimizer.next(optimizer_state, as_structure(variables),
                                       as_structure(gradients))
  for variable, value in zip(variables, updated):
    variable.assign(value)
  return next_state


def model_delta(initial: Any, trained: Any) -> Any:
  """The client's update, `initial − trained` leaf by leaf (TFF's `client_update`)."""
  return tf.nest.map_structure(tf.subtract, initial, trained, check_types=False)


def client_weight(num_examples: tf.Tensor, *, weighted: bool) -> tf.Tensor:
  """The client's float32 weight: its number of examples, or 1 (uniform weighting)."""
  if weighted:
    return tf.cast(num_examples, tf.float32)
  return tf.constant(1.0, tf.float32)


def zero_non_finite(delta: Any, weight: tf.Tensor) -> Tuple[Any, tf.Tensor, tf.Tensor]:
  """TFF's rule: a delta with any non-finite value is zeroed and weighted 0.

  Returns:
    `(delta, weight, non_finite)`, `non_finite` a bool scalar.
  """
  delta, has_non_finite = tensor_utils.zero_all_if_any_non_finite(delta)
  non_finite = has_non_finite > 0
  weight = tf.where(non_finite, tf.constant(0.0, tf.float32), weight)
  return delta, weight, non_finite


def normalized_update(delta: Any, num_steps: tf.Tensor) -> Tuple[Any, tf.Tensor]:
  """FedNova's client message: `(Δ / τ leaf by leaf, τ as float32)`.

  For plain local SGD, G_i a_i / ‖a_i‖₁ = Δ_i / (η τ_i) (Wang et al. 2020, eq. 7);
  the learning rate η stays in Δ_i. A client with no step sends zeros (0/0 := 0).

  Args:
    delta: The model delta, initial − trained.
    num_steps: τ_i, the client's local steps (its batches).
  """
  steps = tf.cast(num_steps, tf.float32)
  return tf.nest.map_structure(lambda d: tf.math.divide_no_nan(d, steps), delta), steps


def normalized_server_update(mean_normalized: Any, mean_steps: tf.Tensor) -> Any:
  """FedNova's server update, τ_eff · Σ p_i d_i: the weighted means of the
  clients' `normalized_update`s, the second (τ_eff = Σ p_i τ_i) times the first."""
  return tf.nest.map_structure(lambda d: mean_steps * d, mean_normalized)
