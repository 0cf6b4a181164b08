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
* `scaffold_gradients`, `scaffold_control`, `scaffold_server_control`:
  SCAFFOLD's corrected gradient g − c_i + c and its option II control
  variates (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging
  for Federated Learning", ICML 2020, arXiv 1910.06378, Algorithm 1), which
  `fedtff.algorithms.scaffold` and the compiled engine's SCAFFOLD
  (`fedtff/compiled/scaffold.py`) both call.
* `add_loss` and `q_fair_update`: q-FedAvg's client loss F_k(w_t) and its
  update and weight (Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation
  in Federated Learning", ICLR 2020, arXiv 1905.10497, Algorithm 3).
* `ditto_initial_personal` and `ditto_row`: Ditto's personal model v_k from
  and to its client-state row `[v_k, seen]` (Li, Hu, Beirami and Smith, ICML
  2021, arXiv 2012.04221); its personal step's gradient g + λ(v − w^t) is
  `proximal_gradients` with μ = λ.
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


def scaffold_gradients(gradients: Sequence[tf.Tensor], client_control: Sequence[Any],
                       server_control: Sequence[Any]) -> List[tf.Tensor]:
  """SCAFFOLD's corrected gradient `g − c_i + c` for each tensor (Algorithm 1, line 10).

  Args:
    gradients: The loss's gradients g(y) at the client's current weights.
    client_control: The client's control variate c_i.
    server_control: The server's control variate c.
  """
  return [g - c_i + c for g, c_i, c in zip(gradients, client_control, server_control)]


def scaffold_control(client_control: Sequence[Any], server_control: Sequence[Any],
                     delta: Sequence[Any], num_steps: tf.Tensor, learning_rate: float,
                     non_finite: tf.Tensor) -> List[tf.Tensor]:
  """The client's next control variate, option II: `c_i⁺ = c_i − c + (x − y) / (K η_l)`.

  A client that took no step (K = 0) or whose delta was not finite (and was
  zeroed, `zero_non_finite`) keeps its c_i: its Δc_i = c_i⁺ − c_i is then 0.

  Args:
    client_control: c_i.
    server_control: c.
    delta: `x − y`, the round's server weights minus the client's trained ones
      (`model_delta`).
    num_steps: K, the number of local steps taken (an integer scalar).
    learning_rate: η_l, the client's SGD learning rate.
    non_finite: Whether the delta was not finite (a bool scalar).
  """
  steps = tf.cast(num_steps, tf.float32)
  keep = tf.logical_or(non_finite, steps <= 0.0)
  scale = tf.math.divide_no_nan(1.0, steps * learning_rate)
  return [tf.where(keep, c_i, c_i - c + d * scale)
          for c_i, c, d in zip(client_control, server_control, delta)]


def scaffold_server_control(server_control: Sequence[Any], control_delta_sum: Sequence[Any],
                            population_size: int) -> List[tf.Tensor]:
  """The server's next control variate `c + (|S| / N) · mean Δc_i = c + Σ Δc_i / N` (line 17).

  Args:
    server_control: c.
    control_delta_sum: Σ over the round's clients S of Δc_i = c_i⁺ − c_i.
    population_size: N, the number of clients in the population.
  """
  return [c + s / float(population_size) for c, s in zip(server_control, control_delta_sum)]


# q-FedAvg's 1e-10, added to F_k before the powers (the reference code,
# litian96/fair_flearn, flearn/trainers/qffedavg.py: `np.float_power(loss+1e-10, q)`).
Q_FAIR_EPSILON = 1e-10


def add_loss(sums: Tuple[tf.Tensor, tf.Tensor], loss: tf.Tensor,
             num_examples: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Adds a batch to `(Σ loss_b·n_b, Σ n_b)`, the sums behind q-FedAvg's F_k(w_t).

  F_k(w_t) is the client's mean loss over its training data at the server
  model (`get_loss` on the whole training set in the reference code); over
  batches, the example-weighted mean of the batch losses.
  """
  examples = tf.cast(num_examples, tf.float32)
  return sums[0] + tf.cast(loss, tf.float32) * examples, sums[1] + examples


def q_fair_update(delta: Sequence[tf.Tensor], loss_sums: Tuple[tf.Tensor, tf.Tensor],
                  q: float, learning_rate: float) -> Tuple[List[tf.Tensor], tf.Tensor]:
  """q-FedAvg's client contribution, as a weighted-mean input: `(Δ_k / h_k, h_k)`.

  Li et al., ICLR 2020 (arXiv 1905.10497), Algorithm 3, with L = 1/η:
  Δw_k = L·(w_t − w̄_k) (`delta` is w_t − w̄_k), F = F_k(w_t) + 1e-10,
  Δ_k = F^q·Δw_k and h_k = q·F^(q−1)·‖Δw_k‖² + L·F^q, ‖·‖ the norm of all
  tensors flattened into one vector (`norm_grad` in the reference code,
  flearn/utils/tf_utils.py). The server's step w_t − Σ_k Δ_k / Σ_k h_k is the
  h-weighted mean of Δ_k / h_k, applied by SGD with learning rate 1, so both
  engines run it with their mean aggregator and SGD finalizer.

  The scalars are computed in float64 (as the reference code's NumPy);
  an h_k of 0 (F^q underflowing) gives a zero update of weight 0.

  Args:
    delta: The model delta w_t − w̄_k after the client's local SGD epochs.
    loss_sums: `(Σ loss·n, Σ n)` over the client's batches at w_t (`add_loss`).
    q: q ≥ 0; q = 0 is FedAvg with every client weighted equally.
    learning_rate: η, the client SGD learning rate.

  Returns:
    `(update, weight)`: Δ_k / h_k (float32 tensors) and h_k (float32 scalar).
  """
  lipschitz = 1.0 / learning_rate
  loss = tf.cast(tf.math.divide_no_nan(loss_sums[0], loss_sums[1]), tf.float64) + Q_FAIR_EPSILON
  gradient = [lipschitz * tf.cast(d, tf.float64) for d in delta]
  norm_squared = tf.add_n([tf.reduce_sum(tf.square(g)) for g in gradient])
  scale = tf.pow(loss, q)
  h = q * tf.pow(loss, q - 1.0) * norm_squared + lipschitz * scale
  update = [tf.cast(tf.math.divide_no_nan(scale * g, h), d.dtype)
            for g, d in zip(gradient, delta)]
  return update, tf.cast(h, tf.float32)


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


def batch_examples(output: tff.learning.models.BatchOutput) -> tf.Tensor:
  """A forward pass's examples (int64): its `num_examples`, or its predictions' rows."""
  if output.num_examples is None:
    return tf.shape(output.predictions, out_type=tf.int64)[0]
  return tf.cast(output.num_examples, tf.int64)


def train_locally(model: tff.learning.models.VariableModel, optimizer, trainable: Sequence[Any],
                  dataset: tf.data.Dataset,
                  correct: Callable[[List[tf.Tensor]], List[tf.Tensor]] = lambda g: g,
                 ) -> Tuple[tf.Tensor, tf.Tensor]:
  """The TFF engine's local loop of fedtff's own client works (FedProx, FedNova,
  SCAFFOLD, q-FedAvg, Ditto): per batch, the forward pass, the loss's gradients,
  `correct(gradients)` (FedProx's and Ditto's proximal term, SCAFFOLD's control variates),
  and one `local_step` from a fresh optimizer state.

  Returns:
    `(examples, steps)`: the examples and batches trained on (int64).
  """

  def step(loop_state, batch):
    num_examples, num_steps, optimizer_state = loop_state
    with tf.GradientTape() as tape:
      output = model.forward_pass(batch, training=True)
    gradients = correct(tape.gradient(output.loss, trainable))
    optimizer_state = local_step(optimizer, optimizer_state, trainable, gradients)
    return num_examples + batch_examples(output), num_steps + 1, optimizer_state

  specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
  num_examples, num_steps, _ = dataset.reduce(
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64), optimizer.initialize(specs)), step)
  return num_examples, num_steps


def ditto_initial_personal(row: tf.Tensor, server_trainable: Sequence[tf.Tensor]) -> List[tf.Tensor]:
  """Ditto's personal model v_k from its state row `[v_k flattened, seen]`.

  A row whose last value (the 'seen' flag) is 0 was never written (the store's
  rows start at zero): v_k is then the round's global model w^t, the model the
  client first meets (Li, Hu, Beirami and Smith, "Ditto: Fair and Robust
  Federated Learning Through Personalization", ICML 2021, arXiv 2012.04221).

  Args:
    row: The client's float32 row, `[size + 1]`.
    server_trainable: The round's global trainable weights w^t.
  """
  seen = row[-1] > 0.0
  out, start = [], 0
  for w in server_trainable:
    size = tf.size(w)
    part = tf.reshape(row[start:start + size], tf.shape(w))
    out.append(tf.where(seen, part, w))
    start += size
  return out


def ditto_row(personal: Sequence[Any], previous: Sequence[tf.Tensor]) -> tf.Tensor:
  """The client's next state row `[v_k flattened, 1]`; a non-finite v_k keeps `previous`
  (the v_k the personal steps started from), as a non-finite delta is zeroed."""
  new = tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in personal]
                  + [tf.ones([1], tf.float32)], 0)
  old = tf.concat([tf.reshape(v, [-1]) for v in previous] + [tf.ones([1], tf.float32)], 0)
  return tf.where(tf.reduce_all(tf.math.is_finite(new)), new, old)
