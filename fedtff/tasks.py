"""Tasks: a federated dataset split into train and evaluation clients, plus a model.

`build_task(config)` turns the `data` and `model` groups of an experiment config
into a `Task`. Array sources (scikit-learn's digits, FedProx's synthetic data,
a directory of per-client `.npz` files) are partitioned over clients when they
are centralized, split into training and evaluation data (held-out clients, a
held-out share of every client's examples, or FedProx's own per-user test
split) and batched with the client preprocessing spec. docs/data.md describes
every source and partition.

TFF's hosted datasets (the tasks of Reddi et al. 2021, Adaptive Federated
Optimization, arXiv 2003.00295) are read from the local cache with
`fedtff.data.load_tff_dataset` (`data.cache_dir`, `data.allow_download`), or
replaced by TFF's tiny `get_synthetic()` clients with `data.synthetic_standin`.
They keep TFF's own train/test clients and get the baselines' preprocessing,
losses and metrics (`Task.loss_fn`, `Task.metrics_fn`): sequence tasks a
pad-masked loss and an accuracy without pad and end-of-sentence tokens; the
EMNIST autoencoder mean squared error (`mse`); Stack Overflow tag prediction
binary cross-entropy summed over the batch, `recall_at_5` and
`precision_at_5`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import data
from fedtff import models
from fedtff.algorithms import attacks
from fedtff.execution import runtime

ClientData = tff.simulation.datasets.ClientData
HOSTED_DATASETS = ('emnist_digits', 'emnist_full', 'emnist_autoencoder', 'cifar100',
                   'shakespeare', 'stackoverflow_word', 'stackoverflow_tag')
DATASETS = ('digits', 'synthetic_fedprox', 'synthetic_iid', 'npz_dir') + HOSTED_DATASETS
# The TFF file each hosted task reads, where its name differs. Reddi et al.'s
# autoencoder trains on all of EMNIST (62 classes), as their code does.
_HOSTED_FILE = {'emnist_autoencoder': 'emnist_full', 'stackoverflow_word': 'stackoverflow',
                'stackoverflow_tag': 'stackoverflow'}
# docs/data.md, "Partitioners": the fedtff function behind each and its Flower Datasets name.
CENTRALIZED_PARTITIONS = ('iid', 'dirichlet', 'dirichlet_prior', 'shards', 'quantity_skew',
                          'inner_dirichlet', 'pathological', 'size', 'linear', 'square',
                          'exponential', 'distribution', 'continuous')
# For sources with their own clients (npz_dir, synthetic_*): keep them, or group them.
NATURAL_PARTITIONS = ('natural_id', 'grouped_natural_id')
PARTITIONS = CENTRALIZED_PARTITIONS + NATURAL_PARTITIONS
CLASS_ASSIGNMENTS = data.CLASS_ASSIGNMENTS
GROUP_MODES = data.GROUP_MODES
# The data.* settings of NIID-Bench's partitions (Li et al. 2022, arXiv 2102.02079, and its
# code): IID, label skew Dir(0.5) (balanced, at least 10 examples per client) and #C = k.
NIID_BENCH_PARTITIONS = {
    'iid': dict(partition='iid'),
    'dirichlet_0.5': dict(partition='dirichlet', dirichlet_alpha=0.5,
                          dirichlet_self_balancing=True, dirichlet_min_examples=10),
    'label_1': dict(partition='pathological', classes_per_client=1,
                    class_assignment='first-deterministic'),
    'label_2': dict(partition='pathological', classes_per_client=2,
                    class_assignment='first-deterministic'),
}


@dataclasses.dataclass(frozen=True)
class Task:
  """Preprocessed train and evaluation clients and the Keras model factory."""
  train_data: ClientData
  test_data: ClientData
  model_fn: Callable[[], tf.keras.Model]
  num_classes: int
  loss_fn: Optional[Callable[[], tf.keras.losses.Loss]] = None
  metrics_fn: Optional[Callable[[], List[Any]]] = None

  def learning_kwargs(self) -> dict:
    """`loss` and `metrics` for the builders; None means the classification defaults."""
    return dict(loss=self.loss_fn() if self.loss_fn else None,
                metrics=self.metrics_fn() if self.metrics_fn else None)

  @property
  def element_spec(self) -> Any:
    return self.train_data.element_type_structure


def batch_fn(*, batch_size: int, epochs: int = 1, shuffle_buffer: int = 0,
             seed: int = 0) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Client preprocessing: shuffle, repeat for `epochs`, then batch."""
  return data.ClientPreprocessing(batch_size=batch_size, epochs=epochs,
                                  shuffle_buffer=shuffle_buffer, shuffle_seed=seed).build()


def _client_sizes(config: ml_collections.ConfigDict, num_examples: int) -> List[int]:
  """`data.client_sizes`, one per client; empty means an equal share each."""
  if not config.client_sizes:
    return [num_examples // config.num_clients] * config.num_clients
  if len(config.client_sizes) != config.num_clients:
    raise ValueError(f'Config key data.client_sizes must hold data.num_clients='
                     f'{config.num_clients} sizes, got {len(config.client_sizes)}.')
  return list(config.client_sizes)


def _class_distribution(config: ml_collections.ConfigDict) -> np.ndarray:
  shares = np.asarray(config.class_distribution, dtype=np.float64)
  if shares.ndim != 2 or len(shares) != config.num_clients:
    raise ValueError("data.partition='distribution' needs data.class_distribution: one tuple "
                     f'of class weights per client, {config.num_clients} tuples, got shape '
                     f'{shares.shape}.')
  return shares


def _partition(features, labels: np.ndarray, config: ml_collections.ConfigDict, seed: int):
  """The partition `config.partition` names (docs/data.md lists each one's paper)."""
  name, n, k = config.partition, len(labels), config.num_clients
  if name in NATURAL_PARTITIONS:
    raise ValueError(f"data.partition={name!r} needs a source with its own clients (npz_dir, "
                     f"synthetic_fedprox, synthetic_iid); {config.dataset} has none.")
  partitioners = {
      'iid': lambda: data.iid(n, k, seed=seed),
      'dirichlet': lambda: data.dirichlet_per_class(
          labels, k, alpha=config.dirichlet_alpha, seed=seed,
          min_examples=config.dirichlet_min_examples,
          self_balancing=config.dirichlet_self_balancing),
      'dirichlet_prior': lambda: data.dirichlet_prior(labels, k, alpha=config.dirichlet_alpha,
                                                      seed=seed),
      'shards': lambda: data.shards(labels, k, shards_per_client=config.shards_per_client,
                                    seed=seed),
      'quantity_skew': lambda: data.quantity_skew(n, k, seed=seed, sigma=config.quantity_sigma),
      'inner_dirichlet': lambda: data.inner_dirichlet(
          labels, _client_sizes(config, n), alpha=config.dirichlet_alpha, seed=seed),
      'pathological': lambda: data.pathological(
          labels, k, classes_per_client=config.classes_per_client, seed=seed,
          class_assignment=config.class_assignment),
      'size': lambda: data.iid(n, k, seed=seed, sizes=_client_sizes(config, n)),
      'linear': lambda: data.linear(n, k, seed=seed),
      'square': lambda: data.square(n, k, seed=seed),
      'exponential': lambda: data.exponential(n, k, seed=seed),
      'distribution': lambda: data.distribution(labels, _class_distribution(config), seed=seed),
      # The property is each example's mean feature value (for digits, its ink).
      'continuous': lambda: data.continuous(
          np.reshape(features, (n, -1)).mean(axis=1), k, strictness=config.strictness,
          seed=seed),
  }
  return partitioners[name]()


def _centralized(features, labels, config, seed) -> data.FederatedArrays:
  partition = _partition(features, labels, config, seed)
  return data.FederatedArrays(features, labels, partition,
                              [f'{k:05d}' for k in range(len(partition))])


def _natural(arrays: data.FederatedArrays, config: ml_collections.ConfigDict,
             seed: int) -> data.FederatedArrays:
  """A source's own clients ('natural_id' and the rest), or groups of them."""
  if config.partition != 'grouped_natural_id':
    return arrays
  # Each client is one "example" of its own id, so the groups are of client positions.
  groups = data.grouped_natural_id(np.arange(arrays.num_clients), config.group_size,
                                   mode=config.group_mode, seed=seed)
  partition = [np.concatenate([np.asarray(arrays.partition[c], dtype=np.int64) for c in group])
               for group in groups]
  ids = ['+'.join(arrays.client_ids[c] for c in group) for group in groups]
  return data.FederatedArrays(arrays.features, arrays.labels, partition, ids)


def check_num_test_clients(num_test_clients: int, num_clients: int) -> None:
  """Raises `ValueError` unless 0 <= num_test_clients < num_clients.

  `fedtff.runner.config` applies it when the config fixes the client count (digits);
  `arrays` when the data does.
  """
  if not 0 <= num_test_clients < num_clients:
    raise ValueError(f'Config key data.num_test_clients must be less than the {num_clients} '
                     f'clients (at most {num_clients - 1}), got {num_test_clients}.')


def _split(arrays: data.FederatedArrays, config, seed) -> Tuple[Any, Any]:
  """(train, eval) arrays: held-out clients, or each client's held-out share."""
  if config.num_test_clients == 0 and config.test_fraction == 0:
    raise ValueError('Set data.num_test_clients or data.test_fraction: the run needs '
                     'evaluation data.')
  check_num_test_clients(config.num_test_clients, len(arrays.client_ids))
  parts = data.split(arrays, seed=seed, num_heldout_clients=config.num_test_clients,
                     test_fraction=config.test_fraction or None)
  return parts.train, parts.heldout if parts.heldout is not None else parts.test


def arrays(config: ml_collections.ConfigDict, seed: int):
  """(train, eval) `FederatedArrays` of an array source (digits, synthetic, npz_dir)."""
  if config.dataset == 'digits':
    return _split(_centralized(*data.load_digits(), config, seed), config, seed)
  if config.dataset == 'npz_dir':
    if not config.path:
      raise ValueError("data.dataset='npz_dir' needs data.path, a directory of <client>.npz files.")
    return _split(_natural(data.load_npz_dir(config.path), config, seed), config, seed)
  if config.dataset == 'synthetic_iid':
    synthetic = data.synthetic_fedprox_iid(seed=seed)
  else:
    synthetic = data.synthetic_fedprox(config.synthetic_alpha, config.synthetic_beta, seed=seed)
  return _natural(synthetic.train, config, seed), _natural(synthetic.test, config, seed)


def _with_l2(model_fn: Callable[[], tf.keras.Model], scale: float) -> Callable[[], tf.keras.Model]:
  """Adds `scale * sum(w**2) / 2` per kernel to `model.losses` (TF's `l2_regularizer`).

  This is the L2 penalty of FedProx's multinomial logistic regression (Li et
  al. 2020, arXiv 1812.06127, `tf.contrib.layers.l2_regularizer(0.001)`).
  TFF adds `model.losses` to the training loss.
  """

  def build() -> tf.keras.Model:
    model = model_fn()
    for layer in model.layers:
      kernel = getattr(layer, 'kernel', None)
      if kernel is not None:
        layer.add_loss(lambda kernel=kernel: scale * tf.nn.l2_loss(kernel))
    return model

  return build


def _model_fn(config: ml_collections.ConfigDict, input_shape, num_classes: int,
              weight_decay: float = 0.0):
  kwargs = {'hidden_units': tuple(config.hidden_units)} if config.name == 'mlp' else {}
  if config.name in models.DROPOUT_MODELS:
    kwargs['dropout'] = config.dropout
  model_fn = functools.partial(models.build, config.name, input_shape=tuple(input_shape),
                               num_classes=num_classes, **kwargs)
  return _with_l2(model_fn, weight_decay) if weight_decay else model_fn


def _preprocessing(config: ml_collections.ConfigDict) -> data.ClientPreprocessing:
  """The training clients' iteration; `_by_round` seeds it per (seed, round, client)."""
  return data.ClientPreprocessing(
      batch_size=config.batch_size, epochs=config.client_epochs,
      shuffle_buffer=config.shuffle_buffer,
      max_elements=config.max_elements or None, drop_remainder=config.drop_remainder)


def _by_round(train: ClientData, preprocess_fn, config: ml_collections.ConfigDict
             ) -> data.RoundClientData:
  """Training clients whose shuffle and augmentation vary by round (`fedtff.data.rounds`)."""
  return data.RoundClientData(train, preprocess_fn, seed=config.seed)


def _label_flipping(config: ml_collections.ConfigDict, preprocess_fn, num_classes: int):
  """`preprocess_fn`, with `attack.kind='label_flipping'` flipping its attackers' labels."""
  attack = config.get('attack')
  if attack is None or attack.kind != 'label_flipping':
    return preprocess_fn
  spec = attacks.AttackSpec(attack.kind, attack.fraction, seed=config.seed)
  return attacks.flip_labels_fn(preprocess_fn, spec, num_classes)


class MaskedSparseCrossEntropy(tf.keras.losses.Loss):
  """Sparse categorical cross-entropy on logits, averaged over non-pad targets.

  Targets equal to `pad_id` add nothing, as in TFF's sequence baselines: the
  value on a batch is the sum of the non-pad targets' cross-entropies divided
  by their number. It is not a mean over rows, so a padded batch must lose its
  padding rows before the loss sees it (both engines do this with
  `fedtff.algorithms.batch_loss.real_rows`).
  """

  def __init__(self, pad_id: int = 0, name: str = 'masked_sparse_cross_entropy'):
    super().__init__(name=name)
    self.pad_id = pad_id

  def call(self, y_true, y_pred):
    y_true = tf.cast(y_true, tf.int32)
    losses = tf.keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    mask = tf.cast(tf.not_equal(y_true, self.pad_id), losses.dtype)
    # The default reduction divides by the number of targets; rescale so it
    # divides by the number of non-pad targets instead.
    scale = tf.cast(tf.size(mask), losses.dtype) / tf.maximum(tf.reduce_sum(mask), 1.0)
    return losses * mask * scale

  def get_config(self):
    return {**super().get_config(), 'pad_id': self.pad_id}


class MaskedAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
  """Token accuracy leaving out targets in `masked_ids` (pad, end of sentence, OOV).

  Reddi et al. (2021) report next-token accuracy without padding and
  end-of-sentence tokens (and, for Stack Overflow, out-of-vocabulary words).
  A `sample_weight` multiplies the kept targets' weights, so rows (or tokens)
  weighted 0 count nowhere.
  """

  def __init__(self, masked_ids: Sequence[int] = (0,), name: str = 'accuracy', dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.masked_ids = tuple(int(i) for i in masked_ids)

  def update_state(self, y_true, y_pred, sample_weight=None):
    y_true = tf.cast(y_true, tf.int32)
    keep = tf.cast(tf.reduce_all(
        tf.not_equal(y_true[..., tf.newaxis], tf.constant(self.masked_ids, tf.int32)), axis=-1),
                   tf.float32)
    if sample_weight is not None:
      sample_weight = tf.cast(sample_weight, tf.float32)
      # A weight per row ([batch]) applies to every target of the row.
      rank = len(keep.shape) - len(sample_weight.shape)
      keep *= tf.reshape(sample_weight, tf.concat([tf.shape(sample_weight), [1] * rank], 0))
    return super().update_state(y_true, y_pred, sample_weight=keep)

  def get_config(self):
    return {**super().get_config(), 'masked_ids': self.masked_ids}


def _sequence_loss_and_metrics(masked_ids: Sequence[int]) -> dict:
  return dict(loss_fn=MaskedSparseCrossEntropy,
              metrics_fn=lambda: [MaskedAccuracy(masked_ids=masked_ids)])


def _hosted_splits(config: ml_collections.ConfigDict) -> Tuple[ClientData, ClientData]:
  """(train, test) ClientData of a hosted dataset, raw as TFF parses it."""
  name = _HOSTED_FILE.get(config.dataset, config.dataset)
  splits = data.load_tff_dataset(name, cache_dir=config.cache_dir or None,
                                 allow_download=config.allow_download,
                                 synthetic=config.synthetic_standin)
  train, test = splits[0], splits[-1]
  if config.max_test_clients and len(test.client_ids) > config.max_test_clients:
    ids = sorted(test.client_ids)[:config.max_test_clients]
    test = ClientData.from_clients_and_tf_fn(ids, test.serializable_dataset_fn)
  return train, test


def _synthetic_vocab(train: ClientData, size: int, feature: str = 'tokens',
                     sep: Optional[str] = None) -> List[str]:
  """The most frequent words (or tags) of the stand-in clients (the real ones need the cache)."""
  counts = {}
  for client_id in train.client_ids:
    for element in train.create_tf_dataset_for_client(client_id):
      for word in element[feature].numpy().decode().split(sep):
        counts[word] = counts.get(word, 0) + 1
  return sorted(counts, key=lambda w: (-counts[w], w))[:size]


def _stackoverflow_vocab(config: ml_collections.ConfigDict, train: ClientData) -> List[str]:
  if config.synthetic_standin:
    return _synthetic_vocab(train, config.vocab_size)
  return data.load_stackoverflow_vocab(config.vocab_size, cache_dir=config.cache_dir or None,
                                       allow_download=config.allow_download)


def _stackoverflow_tags(config: ml_collections.ConfigDict, train: ClientData) -> List[str]:
  num_tags = config.num_classes or data.preprocessing.STACKOVERFLOW_NUM_TAGS
  if config.synthetic_standin:
    return _synthetic_vocab(train, num_tags, feature='tags', sep='|')
  return data.load_stackoverflow_tags(num_tags, cache_dir=config.cache_dir or None,
                                      allow_download=config.allow_download)


def _image_task(config, train, test, element_fns, input_shape, num_classes) -> Task:
  spec = _preprocessing(config.data)
  eval_spec = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100)
  return Task(train_data=_by_round(train, spec.build(element_fns[0]), config),
              test_data=test.preprocess(eval_spec.build(element_fns[1])),
              model_fn=_model_fn(config.model, input_shape, num_classes,
                                 config.data.weight_decay),
              num_classes=num_classes)


def _check_model(config: ml_collections.ConfigDict, allowed: Sequence[str]) -> None:
  if config.model.name not in allowed:
    raise ValueError(f'data.dataset={config.data.dataset!r} needs model.name in '
                     f'{", ".join(allowed)}, got {config.model.name!r}.')


def _shakespeare_task(config, train, test) -> Task:
  _check_model(config, ('char_lstm',))
  length = config.data.sequence_length or data.preprocessing.SHAKESPEARE_SEQUENCE_LENGTH
  pad, _, _, eos = data.shakespeare_special_tokens()
  vocab_size = eos + 1
  eval_spec = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100)
  spec = _preprocessing(config.data)
  return Task(
      train_data=_by_round(train, data.shakespeare_preprocess(spec, sequence_length=length),
                           config),
      test_data=test.preprocess(data.shakespeare_preprocess(eval_spec, sequence_length=length)),
      model_fn=functools.partial(models.build, 'char_lstm', vocab_size=vocab_size,
                                 sequence_length=length),
      num_classes=vocab_size, **_sequence_loss_and_metrics((pad, eos)))


def _stackoverflow_word_task(config, train, test) -> Task:
  _check_model(config, ('word_lstm',))
  vocab = _stackoverflow_vocab(config.data, train)
  length = config.data.sequence_length or data.preprocessing.STACKOVERFLOW_SEQUENCE_LENGTH
  pad, oov, _, eos = data.stackoverflow_special_tokens(len(vocab))
  eval_spec = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100)
  spec = _preprocessing(config.data)
  preprocess = functools.partial(data.stackoverflow_word_preprocess, vocab=vocab,
                                 sequence_length=length)
  return Task(
      train_data=_by_round(train, preprocess(spec), config),
      test_data=test.preprocess(preprocess(eval_spec)),
      model_fn=functools.partial(models.build, 'word_lstm', vocab_size=len(vocab),
                                 sequence_length=length),
      num_classes=eos + 1, **_sequence_loss_and_metrics((pad, *oov, eos)))


def _reconstruction_metrics() -> List[Any]:
  return [tf.keras.metrics.MeanSquaredError(name='mse')]


def _emnist_autoencoder_task(config, train, test) -> Task:
  """Reddi et al.'s EMNIST autoencoder: x = y = 1 - pixels (784), MSE loss and metric."""
  _check_model(config, ('autoencoder',))
  element_fn = data.emnist_autoencoder_map()
  spec = _preprocessing(config.data)
  eval_spec = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100)
  return Task(train_data=_by_round(train, spec.build(element_fn), config),
              test_data=test.preprocess(eval_spec.build(element_fn)),
              model_fn=functools.partial(models.build, 'autoencoder', input_size=28 * 28),
              num_classes=0, loss_fn=tf.keras.losses.MeanSquaredError,
              metrics_fn=_reconstruction_metrics)


TOP_K = 5  # Reddi et al. report tag prediction's recall at 5.


def multi_label_loss() -> tf.keras.losses.Loss:
  """Binary cross-entropy on logits, averaged over labels and summed over the batch.

  The loss of Reddi et al.'s and TFF's tag-prediction baseline
  (`BinaryCrossentropy(reduction=SUM)` on sigmoid outputs); here the sigmoid
  is inside the loss (`from_logits=True`), which is the same function, computed
  stably. The client learning rates of the paper (10^2) assume the sum.
  """
  return tf.keras.losses.BinaryCrossentropy(from_logits=True,
                                            reduction=tf.keras.losses.Reduction.SUM)


def top_k_metrics(k: int = TOP_K) -> List[Any]:
  """`recall_at_k` and `precision_at_k` over the k highest-scoring labels.

  Recall@k is, summed over examples, the true labels among the top k divided
  by the number of true labels; precision@k the same count divided by k per
  example. The ranking is the same on logits as on probabilities.
  """
  return [tf.keras.metrics.Recall(top_k=k, name=f'recall_at_{k}'),
          tf.keras.metrics.Precision(top_k=k, name=f'precision_at_{k}')]


def _stackoverflow_tag_task(config, train, test) -> Task:
  """Reddi et al.'s Stack Overflow tag prediction: bag of words -> multi-hot tags."""
  _check_model(config, ('logistic_regression',))
  words, tags = _stackoverflow_vocab(config.data, train), _stackoverflow_tags(config.data, train)
  if len(tags) < TOP_K:
    raise ValueError(f'Stack Overflow tag prediction needs at least {TOP_K} tags for its '
                     f'recall@{TOP_K}, got {len(tags)}.')
  preprocess = functools.partial(data.stackoverflow_tag_preprocess, word_vocab=words,
                                 tag_vocab=tags)
  eval_spec = data.ClientPreprocessing(batch_size=config.data.eval_batch_size or 100)
  return Task(
      train_data=_by_round(train, preprocess(_preprocessing(config.data)), config),
      test_data=test.preprocess(preprocess(eval_spec)),
      model_fn=functools.partial(models.build, 'logistic_regression',
                                 input_shape=(len(words),), num_classes=len(tags)),
      num_classes=len(tags), loss_fn=multi_label_loss, metrics_fn=top_k_metrics)


def _hosted_task(config: ml_collections.ConfigDict) -> Task:
  """A task of Reddi et al. (2021) on a TFF hosted dataset (or its stand-in)."""
  name = config.data.dataset
  train, test = _hosted_splits(config.data)
  if name in ('emnist_digits', 'emnist_full'):
    _check_model(config, ('emnist_cnn', 'fedavg_cnn', 'mlp', 'logistic_regression'))
    return _image_task(config, train, test, (data.emnist_map(), data.emnist_map()),
                       (28, 28, 1), 10 if name == 'emnist_digits' else 62)
  if name == 'cifar100':
    _check_model(config, ('resnet18_group_norm',))
    maps = (data.cifar_map(train=True), data.cifar_map(train=False))
    return _image_task(config, train, test, maps, data.preprocessing.CIFAR_CROP_SHAPE, 100)
  if name == 'emnist_autoencoder':
    return _emnist_autoencoder_task(config, train, test)
  if name == 'shakespeare':
    return _shakespeare_task(config, train, test)
  if name == 'stackoverflow_tag':
    return _stackoverflow_tag_task(config, train, test)
  return _stackoverflow_word_task(config, train, test)


# How the TFF worker gets in-memory clients' rows (fedtff.data.from_arrays):
# 'auto' is 'file' unless a worker runs on another host, then 'constants'.
FEEDS = ('auto',) + data.FEEDS
_LOOPBACK_HOSTS = ('localhost', '::1')


def feed(config: ml_collections.ConfigDict) -> str:
  """The `feed` of the config's in-memory client data.

  Per-client files are fastest (docs/data.md) but a worker must be able to
  open them: on this machine, or under a `data.feed_dir` every worker sees.
  """
  hosts = [runtime.parse_address(w)[0] for w in config.runtime.workers]
  remote = [h for h in hosts if h not in _LOOPBACK_HOSTS and not h.startswith('127.')]
  if config.data.feed == 'file' and remote and not config.data.feed_dir:
    raise ValueError(f"data.feed='file' with a worker on another host ({remote[0]}) needs "
                     'data.feed_dir on a filesystem every worker mounts, or '
                     "data.feed='constants' (or 'auto').")
  if config.data.feed != 'auto':
    return config.data.feed
  return 'constants' if remote and not config.data.feed_dir else 'file'


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Builds the task that `config.data` and `config.model` describe."""
  if config.data.dataset in HOSTED_DATASETS:
    return _hosted_task(config)
  train, evaluation = arrays(config.data, config.seed)
  num_classes = int(np.max(train.labels)) + 1
  if config.data.num_classes:
    num_classes = config.data.num_classes
    data.check_labels(train.labels, num_classes)
  features = train.features
  input_shape = np.shape(features)[1:] if not isinstance(features, dict) else None
  feed_options = dict(feed=feed(config), feed_dir=config.data.feed_dir or None)
  return array_task(config, train.to_client_data(**feed_options),
                    evaluation.to_client_data(allow_empty_clients=True, **feed_options),
                    input_shape=input_shape, num_classes=num_classes)


def array_task(config: ml_collections.ConfigDict, train: ClientData, test: ClientData, *,
               input_shape, num_classes: int) -> Task:
  """The task of an array dataset (`build_task`) over raw client data `train` and `test`.

  The raw datasets are `from_arrays`'s elements (`x`, `y`) from anywhere, e.g.
  read at a site (`fedtff.execution.site_data`); the preprocessing and model are
  the config's, the same as `build_task`'s.
  """
  eval_fn = data.ClientPreprocessing(batch_size=max(config.data.batch_size, 64)).build()
  return Task(
      train_data=_by_round(train, _label_flipping(config, _preprocessing(config.data).build(),
                                                  num_classes), config),
      test_data=test.preprocess(eval_fn),
      model_fn=_model_fn(config.model, input_shape, num_classes, config.data.weight_decay),
      num_classes=num_classes)
