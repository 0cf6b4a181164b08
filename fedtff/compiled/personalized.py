"""Personalized evaluation: every client's own model on that client's held-out examples.

Ditto (Li, Hu, Beirami and Smith, ICML 2021, arXiv 2012.04221) reports the
accuracy of each client's personal model v_k on its own test examples (the
reference code's `self.test(tmp_models)` with the list of local models), as
TFF's personalization evaluation and FedJAX's personalized metrics evaluate a
personalized model per client. `PersonalizedEvaluation` is
`fedtff.compiled.CompiledEvaluation` with one model per client: the graph
assigns client c's weights before running its batches, so the per-client
metrics and the pooled ones (TFF's sum-then-finalize over the clients'
metric variables) are those of `CompiledEvaluation` run with each client's
model on its own batches.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.compiled import batches as batches_lib
from fedtff.compiled import evaluation as evaluation_lib


class PersonalizedEvaluation(evaluation_lib.CompiledEvaluation):
  """Evaluates one model per client, each on its own client's batches.

  Args: as `fedtff.compiled.CompiledEvaluation`'s (`client_ids` the clients,
    in the order of the weights `__call__` takes).
  """

  def __init__(self, model_fn, client_data, **kwargs):
    super().__init__(model_fn, client_data, **kwargs)
    model = self._model
    stacked = tff.learning.models.ModelWeights(
        trainable=[tf.TensorSpec([None] + v.shape.as_list(), v.dtype) for v in model.trainable],
        non_trainable=[tf.TensorSpec(v.shape, v.dtype)
                       for v in model.keras_model.non_trainable_variables])
    self._evaluate = tf.function(
        self._personalized_graph, autograph=False,
        input_signature=[stacked, batches_lib.signature(self._data.element_spec)])
    self._evaluate.get_concrete_function()

  def __call__(self, trainable: Sequence[Sequence[np.ndarray]],
               non_trainable: Sequence[np.ndarray] = ()) -> evaluation_lib.EvalResult:
    """Evaluates client c's `trainable[c]` (a list of arrays) on client c's batches.

    Args:
      trainable: One list of trainable arrays per client, in `client_ids`' order.
      non_trainable: The non-trainable weights all clients share (the global model's).
    """
    if len(trainable) != len(self._client_ids):
      raise ValueError(f'Expected one model per client ({len(self._client_ids)}), got '
                       f'{len(trainable)}.')
    weights = tff.learning.models.ModelWeights(
        trainable=[tf.constant(np.stack([np.asarray(t[j], np.float32) for t in trainable]))
                   for j in range(len(self._model.trainable))],
        non_trainable=[tf.convert_to_tensor(w) for w in non_trainable])
    pooled, per_client = self._evaluate(weights, self._batches)
    return evaluation_lib.EvalResult(
        collections.OrderedDict((n, float(pooled[n])) for n in self._names),
        collections.OrderedDict((n, per_client[n].numpy()) for n in self._names))

  def _personalized_graph(self, weights, batches: batches_lib.ClientBatches):
    model = self._model
    for variable, value in zip(model.keras_model.non_trainable_variables, weights.non_trainable):
      variable.assign(value)

    def set_client(c):
      for variable, value in zip(model.trainable, weights.trainable):
        variable.assign(value[c])

    return self._evaluate_clients(batches, set_client)
