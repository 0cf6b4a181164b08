"""Client dataset preprocessing: iteration settings and per-task transforms.

`ClientPreprocessing` says how a client iterates its data (shuffle, epochs,
a cap on elements, batching); its `build` returns a `tf.data.Dataset ->
tf.data.Dataset` function for `ClientData.preprocess`. Everything here uses
only `tf.data` and TensorFlow ops, so the result stays serializable
(`ClientData.dataset_computation` keeps working).

The task transforms follow TFF's baselines
(`tff.simulation.baselines.{emnist,cifar100,shakespeare,stackoverflow}`), which
implement the tasks of Reddi et al. 2021, Adaptive Federated Optimization
(arXiv 2003.00295), but yield `OrderedDict(x=..., y=...)` like the rest of
fedtff:

* EMNIST: pixels `[28, 28]` -> `x` float32 `[28, 28, 1]`, `y` int32 label.
* CIFAR-100: 24x24 crops (random crop and flip to train, central crop to
  evaluate), then per-image standardization.
* Shakespeare: characters -> ids with TFF's 86-character vocabulary, packed
  into sequences of 80 (+1 shifted target).
* Stack Overflow: words -> ids with a given vocabulary (TFF's baselines use
  the 10,000 most frequent words of `load_word_counts`, which downloads; see
  `fedtff.data.load_stackoverflow_vocab`), sequences of 20.
* Stack Overflow tags: `x` = bag of words of the tokens and title over a word
  vocabulary (10,000 words), normalized counts; `y` = multi-hot over a tag
  vocabulary (500 tags; `fedtff.data.load_stackoverflow_tags`).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

from fedtff.data import rounds

DatasetFn = Callable[..., tf.data.Dataset]  # (dataset, seed=None) -> dataset
ElementFn = Callable[..., collections.OrderedDict]

# TFF's character vocabulary (baselines/shakespeare/char_prediction_preprocessing.py,
# from the "Federated Learning for Text Generation" tutorial).
SHAKESPEARE_CHAR_VOCAB = list(
    'dhlptx@DHLPTX'
    ' $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\naeimquyAEIMQUY]!%)-159\r')
SHAKESPEARE_SEQUENCE_LENGTH = 80
STACKOVERFLOW_SEQUENCE_LENGTH = 20
STACKOVERFLOW_VOCAB_SIZE = 10000
STACKOVERFLOW_NUM_TAGS = 500
CIFAR_CROP_SHAPE = (24, 24, 3)


def _check_optional_positive(name: str, value: Optional[int]) -> None:
  if value is not None and value < 1:
    raise ValueError(f'{name} must be positive or None, got {value}.')


@dataclasses.dataclass(frozen=True)
class ClientPreprocessing:
  """How each client iterates its dataset (cf. `tff.simulation.baselines.ClientSpec`).

  The order is TFF's: shuffle, repeat for `epochs`, take `max_elements`,
  transform each element, batch.

  The functions `build` returns take an optional stateless key, `seed` (int64
  `[2]`, `fedtff.data.client_seed`; `fedtff.data.RoundClientData` passes the
  key of `(run seed, round, client)`): with it the shuffle seed and each
  element's augmentation seed come from the key, and `shuffle_seed` is unused.

  Attributes:
    batch_size: Examples per batch.
    epochs: Passes over the client's data.
    shuffle_buffer: Shuffle buffer size; 0 or 1 means no shuffling.
    shuffle_seed: Seed of the shuffle when no key is given; None reshuffles
      differently every run.
    max_elements: Cap on the examples used, counted after repeating.
    drop_remainder: Whether to drop a last, smaller batch.
  """
  batch_size: int
  epochs: int = 1
  shuffle_buffer: int = 0
  shuffle_seed: Optional[int] = None
  max_elements: Optional[int] = None
  drop_remainder: bool = False

  def __post_init__(self):
    for name in ('batch_size', 'epochs'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
    if self.shuffle_buffer < 0:
      raise ValueError(f'shuffle_buffer must be non-negative, got {self.shuffle_buffer}.')
    _check_optional_positive('max_elements', self.max_elements)

  def select(self, dataset: tf.data.Dataset, *, seed: Optional[tf.Tensor] = None
            ) -> tf.data.Dataset:
    """Shuffles, repeats and truncates `dataset` (everything but batching).

    Args:
      dataset: The client's examples.
      seed: A stateless key (int64 `[2]`) that seeds the shuffle
        (`fedtff.data.rounds.shuffle_seed`); None uses `shuffle_seed`.
    """
    if self.shuffle_buffer > 1:
      op_seed = self.shuffle_seed if seed is None else rounds.shuffle_seed(seed)
      dataset = dataset.shuffle(self.shuffle_buffer, seed=op_seed)
    if self.epochs > 1:
      dataset = dataset.repeat(self.epochs)
    if self.max_elements is not None:
      dataset = dataset.take(self.max_elements)
    return dataset

  def build(self, element_fn: Optional[ElementFn] = None) -> DatasetFn:
    """Returns the dataset function: select, map `element_fn`, then batch.

    The function is `(dataset, seed=None) -> dataset`. An `element_fn` with a
    `seed` keyword argument (e.g. `cifar_map(train=True)`) is called, when a
    key is given, with element `i`'s stateless seed
    `fedtff.data.rounds.element_seed(key, i)`, `i` counting the elements
    after shuffling, repeating and truncating.
    """

    def preprocess(dataset: tf.data.Dataset, seed: Optional[tf.Tensor] = None
                  ) -> tf.data.Dataset:
      dataset = self.select(dataset, seed=seed)
      if element_fn is not None and seed is not None and takes_seed(element_fn):
        dataset = dataset.enumerate().map(
            lambda i, element: element_fn(element, seed=rounds.element_seed(seed, i)),
            num_parallel_calls=tf.data.AUTOTUNE)
      elif element_fn is not None:
        dataset = dataset.map(element_fn, num_parallel_calls=tf.data.AUTOTUNE)
      return dataset.batch(self.batch_size, drop_remainder=self.drop_remainder)

    return preprocess


def takes_seed(element_fn: ElementFn) -> bool:
  """Whether `element_fn` takes a `seed` keyword (a stateless per-element seed)."""
  return 'seed' in inspect.signature(element_fn).parameters


def emnist_map(*, invert: bool = False) -> ElementFn:
  """EMNIST element -> `x` float32 `[28, 28, 1]` in [0, 1], `y` int32.

  TFF's EMNIST pixels are already floats in [0, 1] with 1.0 the background;
  `invert=True` makes the background 0.0, as in MNIST.
  """

  def element_fn(element):
    pixels = tf.cast(element['pixels'], tf.float32)
    if invert:
      pixels = 1.0 - pixels
    return collections.OrderedDict(
        x=tf.reshape(pixels, [28, 28, 1]), y=tf.cast(element['label'], tf.int32))

  return element_fn


def emnist_autoencoder_map() -> ElementFn:
  """EMNIST element -> `x = y = 1 - pixels` flattened to 784 (TFF's autoencoder task)."""

  def element_fn(element):
    flat = 1.0 - tf.reshape(tf.cast(element['pixels'], tf.float32), [28 * 28])
    return collections.OrderedDict(x=flat, y=flat)

  return element_fn


def cifar_map(*, train: bool, crop_shape: Sequence[int] = CIFAR_CROP_SHAPE,
              seed: Optional[int] = None) -> ElementFn:
  """CIFAR-100 element -> cropped, standardized `x` float32 and `y` int32 label.

  Training crops at random and flips left-right at random (Reddi et al.'s 24x24
  crops); evaluation crops the centre. Then `tf.image.per_image_standardization`.

  The training function takes an optional stateless seed, `element_fn(element,
  seed=None)` (int64 `[2]`): with it, the crop and the flip are
  `tf.image.stateless_random_crop` and `stateless_random_flip_left_right`
  under two seeds split from it, so they depend on that seed only
  (`ClientPreprocessing.build` passes one per element when it has a key, as
  `fedtff.data.RoundClientData` gives it every round); without it, the stateful
  ops with op seed `seed`.

  Args:
    train: Random crop and flip (True) or central crop (False).
    crop_shape: `(height, width, 3)`, at most `(32, 32, 3)`.
    seed: Op-level seed of the stateful crop and flip (used when the element
      function gets no stateless seed).

  Raises:
    ValueError: If `crop_shape` is not three sizes within `(32, 32, 3)`.
  """
  crop_shape = tuple(crop_shape)
  if len(crop_shape) != 3 or crop_shape[2] != 3 or not (
      0 < crop_shape[0] <= 32 and 0 < crop_shape[1] <= 32):
    raise ValueError(f'crop_shape must be (height, width, 3) within (32, 32, 3), got {crop_shape}.')

  def crop(image, element_seed):
    if not train:
      return tf.image.resize_with_crop_or_pad(image, crop_shape[0], crop_shape[1])
    if element_seed is None:
      image = tf.image.random_crop(image, size=crop_shape, seed=seed)
      return tf.image.random_flip_left_right(image, seed=seed)
    crop_seed, flip_seed = tf.unstack(tf.random.split(element_seed, 2, alg='philox'))
    image = tf.image.stateless_random_crop(image, size=crop_shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)

  def transform(element, element_seed):
    image = crop(tf.cast(element['image'], tf.float32), element_seed)
    return collections.OrderedDict(
        x=tf.image.per_image_standardization(image), y=tf.cast(element['label'], tf.int32))

  if not train:
    return lambda element: transform(element, None)
  return lambda element, seed=None: transform(element, seed)


def _shifted(sequences: tf.Tensor) -> collections.OrderedDict:
  """Batch of length-(n + 1) sequences -> inputs `[:, :-1]` and targets `[:, 1:]`."""
  return collections.OrderedDict(x=sequences[:, :-1], y=sequences[:, 1:])


def shakespeare_special_tokens() -> Tuple[int, int, int, int]:
  """`(pad, oov, bos, eos)` ids; characters take ids 1..86, so 90 ids in all."""
  size = len(SHAKESPEARE_CHAR_VOCAB)
  return 0, size + 1, size + 2, size + 3


def _shakespeare_tokens(split_length: int) -> ElementFn:
  """Snippet -> [bos, char ids..., eos] padded with 0 to a multiple of `split_length`."""
  _, _, bos, eos = shakespeare_special_tokens()
  table = tf.lookup.StaticVocabularyTable(
      tf.lookup.KeyValueTensorInitializer(
          SHAKESPEARE_CHAR_VOCAB, tf.range(len(SHAKESPEARE_CHAR_VOCAB), dtype=tf.int64)),
      num_oov_buckets=1)

  def element_fn(element):
    ids = table.lookup(tf.strings.bytes_split(element['snippets'])) + 1
    ids = tf.concat([[bos], ids, [eos]], axis=0)
    padding = tf.zeros([(-tf.shape(ids)[0]) % split_length], dtype=tf.int64)
    return tf.concat([ids, padding], axis=0)

  return element_fn


def shakespeare_preprocess(spec: ClientPreprocessing, *,
                           sequence_length: int = SHAKESPEARE_SEQUENCE_LENGTH) -> DatasetFn:
  """Next-character prediction: snippets -> batches of id sequences.

  Each snippet becomes `[bos, ids..., eos]` padded with 0 to a multiple of
  `sequence_length + 1`; the ids are cut into sequences of that length, and a
  batch of them gives `x = seq[:, :-1]`, `y = seq[:, 1:]` (int64,
  `[batch, sequence_length]`). `spec.max_elements` counts snippets.

  Raises:
    ValueError: If `sequence_length` is not positive.
  """
  if sequence_length < 1:
    raise ValueError(f'sequence_length must be positive, got {sequence_length}.')

  def preprocess(dataset: tf.data.Dataset, seed: Optional[tf.Tensor] = None
                ) -> tf.data.Dataset:
    tokens = _shakespeare_tokens(sequence_length + 1)
    dataset = spec.select(dataset, seed=seed).map(tokens, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.unbatch().batch(sequence_length + 1, drop_remainder=True)
    dataset = dataset.batch(spec.batch_size, drop_remainder=spec.drop_remainder)
    return dataset.map(_shifted, num_parallel_calls=tf.data.AUTOTUNE)

  return preprocess


def stackoverflow_special_tokens(vocab_size: int,
                                 num_oov_buckets: int = 1) -> Tuple[int, Tuple[int, ...], int, int]:
  """`(pad, oov ids, bos, eos)`; words take ids 1..vocab_size."""
  oov = tuple(vocab_size + 1 + n for n in range(num_oov_buckets))
  return 0, oov, vocab_size + num_oov_buckets + 1, vocab_size + num_oov_buckets + 2


def _stackoverflow_tokens(vocab: Sequence[str], sequence_length: int,
                          num_oov_buckets: int) -> ElementFn:
  """Sentence -> [bos, word ids (at most sequence_length)..., eos if room]."""
  _, _, bos, eos = stackoverflow_special_tokens(len(vocab), num_oov_buckets)
  table = tf.lookup.StaticVocabularyTable(
      tf.lookup.KeyValueTensorInitializer(list(vocab), tf.range(len(vocab), dtype=tf.int64)),
      num_oov_buckets=num_oov_buckets)

  def element_fn(element):
    words = tf.strings.split(tf.reshape(element['tokens'], [1]), sep=' ').values
    ids = table.lookup(words[:sequence_length]) + 1
    ids = tf.cond(tf.size(ids) < sequence_length,
                  lambda: tf.concat([ids, [eos]], axis=0), lambda: ids)
    return tf.concat([[bos], ids], axis=0)

  return element_fn


def stackoverflow_word_preprocess(spec: ClientPreprocessing, vocab: Sequence[str], *,
                                  sequence_length: int = STACKOVERFLOW_SEQUENCE_LENGTH,
                                  num_oov_buckets: int = 1) -> DatasetFn:
  """Next-word prediction: sentences -> padded batches of word-id sequences.

  Words are looked up in `vocab` (ids 1..len(vocab); unknown words hash into
  `num_oov_buckets` ids after them), truncated to `sequence_length`, wrapped in
  bos/eos (eos only when not truncated) and padded with 0 to
  `sequence_length + 1`; `x = seq[:, :-1]`, `y = seq[:, 1:]`.

  Args:
    spec: Iteration settings; the baselines cap clients at 1,000 sentences
      (`max_elements=1000`).
    vocab: The vocabulary, most frequent first; the baselines use the first
      10,000 words of TFF's word counts (`load_stackoverflow_vocab`).
    sequence_length: Words per sequence (20 in the baselines).
    num_oov_buckets: Ids reserved for out-of-vocabulary words.

  Raises:
    ValueError: If `vocab` is empty or a length or bucket count is not positive.
  """
  if not vocab:
    raise ValueError('vocab must hold at least one word.')
  if sequence_length < 1 or num_oov_buckets < 1:
    raise ValueError(
        'sequence_length and num_oov_buckets must be positive, got '
        f'{sequence_length} and {num_oov_buckets}.')

  def preprocess(dataset: tf.data.Dataset, seed: Optional[tf.Tensor] = None
                ) -> tf.data.Dataset:
    tokens = _stackoverflow_tokens(vocab, sequence_length, num_oov_buckets)
    dataset = spec.select(dataset, seed=seed).map(tokens, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.padded_batch(spec.batch_size, padded_shapes=[sequence_length + 1],
                                   drop_remainder=spec.drop_remainder)
    return dataset.map(_shifted, num_parallel_calls=tf.data.AUTOTUNE)

  return preprocess


def _vocabulary_table(vocab: Sequence[str]) -> tf.lookup.StaticVocabularyTable:
  """`vocab[i]` -> i; anything else -> len(vocab) (one OOV bucket)."""
  return tf.lookup.StaticVocabularyTable(
      tf.lookup.KeyValueTensorInitializer(list(vocab), tf.range(len(vocab), dtype=tf.int64)),
      num_oov_buckets=1)


def _stackoverflow_bag_of_words(word_vocab: Sequence[str], tag_vocab: Sequence[str],
                                oov_in_total: bool) -> ElementFn:
  """Post -> `x` normalized word counts `[len(word_vocab)]`, `y` multi-hot tags."""
  words_table, tags_table = _vocabulary_table(word_vocab), _vocabulary_table(tag_vocab)
  num_words, num_tags = len(word_vocab), len(tag_vocab)

  def element_fn(element):
    text = tf.strings.join([element['tokens'], element['title']], separator=' ')
    # Index num_words is the OOV bucket: counted in the total, then cut off.
    counts = tf.math.bincount(tf.cast(words_table.lookup(tf.strings.split(text)), tf.int32),
                              minlength=num_words + 1, maxlength=num_words + 1,
                              dtype=tf.float32)
    total = tf.reduce_sum(counts if oov_in_total else counts[:num_words])
    tags = tf.cast(tags_table.lookup(tf.strings.split(element['tags'], sep='|')), tf.int32)
    multi_hot = tf.math.bincount(tags, minlength=num_tags + 1, maxlength=num_tags + 1,
                                 dtype=tf.float32, binary_output=True)
    # bincount leaves the length unknown to the graph; the model needs it static.
    return collections.OrderedDict(
        x=tf.reshape(tf.math.divide_no_nan(counts[:num_words], total), [num_words]),
        y=tf.reshape(multi_hot[:num_tags], [num_tags]))

  return element_fn


def stackoverflow_tag_preprocess(spec: ClientPreprocessing, word_vocab: Sequence[str],
                                 tag_vocab: Sequence[str], *,
                                 oov_in_total: bool = True) -> DatasetFn:
  """Tag prediction: posts -> batches of bag-of-words `x` and multi-hot tags `y`.

  The task of Reddi et al. (2021) and TFF's
  `baselines.stackoverflow.tag_prediction_preprocessing`: the words of a post's
  `tokens` and `title` (split on whitespace) are counted over `word_vocab`,
  and the counts divided by the number of words, so `x` (float32
  `[len(word_vocab)]`) sums to at most 1; `y` (float32 `[len(tag_vocab)]`) is 1
  for each of the post's `|`-separated tags in `tag_vocab`, else 0. An empty
  post gives `x = 0`.

  Args:
    spec: Iteration settings (Reddi et al.: batch 100, at most 1,000 posts per
      client).
    word_vocab: The words, most frequent first (`load_stackoverflow_vocab`).
    tag_vocab: The tags, most frequent first (`load_stackoverflow_tags`).
    oov_in_total: Divide by all of the post's words, out-of-vocabulary ones
      included, as the code of Reddi et al. does (google-research/federated,
      `stackoverflow_lr_dataset`: the mean of one-hot rows); False divides by
      the in-vocabulary words only, as TFF 0.87's baseline does. The two
      differ only for posts with out-of-vocabulary words.

  Raises:
    ValueError: If either vocabulary is empty.
  """
  if not word_vocab or not tag_vocab:
    raise ValueError('word_vocab and tag_vocab must each hold at least one entry, got '
                     f'{len(word_vocab)} words and {len(tag_vocab)} tags.')

  def preprocess(dataset: tf.data.Dataset, seed: Optional[tf.Tensor] = None
                ) -> tf.data.Dataset:
    # The lookup tables are made here, inside the traced dataset function, so
    # that `ClientData.dataset_computation` can serialize them.
    element_fn = _stackoverflow_bag_of_words(word_vocab, tag_vocab, oov_in_total)
    return spec.build(element_fn)(dataset, seed=seed)

  return preprocess
