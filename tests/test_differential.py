"""The differential harness (fedtff.compiled.differential): a quick subset of the option space,
and the harness itself detecting a difference. scripts/differential.py runs it all."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from fedtff import AggregatorSpec
from fedtff.research import benchmarks
from fedtff.runner import config as config_lib
from fedtff.compiled import differential
from fedtff.runner import experiment
from fedtff import tasks
from fedtff.algorithms import batch_loss
from fedtff.algorithms import optimizers
from fedtff.algorithms import registry
from fedtff.algorithms import schedules
from fedtff.algorithms import tff_model
from tests import conftest


def tiny_config(**fields):
  """FedAvg on 60 digits clients of unequal size, a 8-unit MLP, 3 clients per round."""
  config = config_lib.base_config()
  config.data.num_clients, config.data.num_test_clients = 60, 2
  config.model.hidden_units = (8,)
  config.clients_per_round = 3
  config.server.optimizer, config.server.learning_rate, config.server.momentum = 'sgd', 1.0, 0.0
  for key, value in fields.items():
    group, _, field = key.rpartition('__')
    (config[group] if group else config)[field] = value
  return config


def check(name, config, **kwargs):
  return differential.check(differential.Combination(name, config), **kwargs)


@pytest.mark.parametrize('fields', [
    dict(algorithm__name='fedadam', algorithm__weighted=False, server__optimizer='adam',
         server__learning_rate=0.01),
    dict(algorithm__name='fedprox', algorithm__proximal_strength=0.5, aggregator__kind='robust',
         aggregator__clip_norm=0.3),
], ids=['fedadam_unweighted', 'fedprox_robust'])
def test_representative_combinations_pass(fields):
  outcome = check('tiny', tiny_config(**fields))
  assert outcome.status == differential.PASSED, outcome.line()
  assert outcome.max_difference <= differential.TOLERANCE
  assert outcome.where.startswith('round ')


def test_dp_noise_is_checked_statistically():
  config = tiny_config(algorithm__weighted=False, aggregator__kind='dp', aggregator__clip_norm=0.5,
                       aggregator__noise_multiplier=1.0)
  outcome = check('dp', config)
  assert outcome.status == differential.PASSED, outcome.line()
  assert 'tff noise std' in outcome.message and 'compiled noise std' in outcome.message
  # z C / m = 1.0 * 0.5 / 3, under server SGD with learning rate 1.
  assert differential.expected_noise_std(differential.shrink(config), 1.0) == pytest.approx(0.5 / 3)


def test_noise_statistics_accept_the_right_std_and_reject_a_wrong_one():
  noise = np.random.default_rng(0).normal(0.0, 0.2, size=5000)
  assert differential.noise_statistics(noise, 0.2)[0]
  assert not differential.noise_statistics(noise, 0.2 / 1.2)[0]  # 20% more noise than claimed.
  assert not differential.noise_statistics(noise + 0.05, 0.2)[0]  # Biased noise.


def test_the_harness_reports_a_difference_with_its_size():
  """The compiled engine perturbed (its updates clipped to norm 0.01): the harness must report
  `failed` with the largest difference, computed here from two TFF runs directly."""
  config = tiny_config()
  clipped = AggregatorSpec('robust', clip_norm=0.01)
  outcome = check('perturbed', config, rounds=1, compiled_options={'aggregator': clipped})
  assert outcome.status == differential.FAILED
  shrunk = differential.shrink(config, rounds=1)
  task = tasks.build_task(shrunk)
  options = experiment._process_options(shrunk, task, None)  # pylint: disable=protected-access
  weights = []
  for aggregator in (options['aggregator'], clipped):
    process = experiment.build_process(shrunk, task, options=dict(options, aggregator=aggregator))
    state = process.set_model_weights(process.initialize(), tff_model.initial_weights(
        task.model_fn, shrunk.seed))
    composed = tff.simulation.compose_dataset_computation_with_learning_process(
        task.train_data.dataset_computation, process)
    state = composed.next(state, differential.client_ids(shrunk, task, 1)).state
    weights.append(process.get_model_weights(state).trainable)
  expected = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
  assert expected > 1e-3
  assert outcome.max_difference == pytest.approx(expected, abs=1e-6)
  assert outcome.where.startswith('round 1 state global_model_weights/trainable/')


def test_refused_and_invalid_combinations_are_counted_apart():
  refused = check('workers', tiny_config(runtime__workers=('localhost:8000',)))
  assert refused.status == differential.REFUSED
  assert refused.message == (
      "runtime.workers needs engine='tff': the compiled engine runs on this machine only.")
  invalid = check('dp_weighted', tiny_config(aggregator__kind='dp', aggregator__clip_norm=1.0,
                                             aggregator__noise_multiplier=1.0))
  assert invalid.status == differential.INVALID
  assert invalid.message.startswith("aggregator.kind='dp' needs algorithm.weighted=False")
  # A check both engines share (the builders') makes a config invalid, not refused.
  shared = check('unweighted_schedule', tiny_config(algorithm__weighted=False,
                                                    client__lr_schedule='exp_decay'))
  assert shared.status == differential.INVALID
  assert shared.message.startswith('Client learning-rate schedules need weighted=True')
  counts = differential.tally([refused, invalid, refused])
  assert counts == dict(checked=3, passed=0, failed=0, refused=2, invalid=1)


def test_enumeration_covers_every_shipped_variant_and_the_whole_grid():
  shipped = list(differential.shipped_combinations(os.path.join(conftest.REPO_ROOT, 'configs')))
  expected = 0
  for path in glob.glob(os.path.join(conftest.REPO_ROOT, 'configs', '*.py')):
    module = benchmarks.load_config_file(path)
    expected += len(getattr(module, 'VARIANTS', (None,)))
  assert len(shipped) == expected
  assert any(c.name.startswith('reddi.py:shakespeare_character') for c in shipped)
  reddi = [c for c in shipped if c.name.startswith('reddi.py:')]
  assert reddi and all(c.config.data.synthetic_standin and c.config.jit_compile is None
                       for c in reddi)  # The smoke overrides but XLA's: checked as runs use it.
  grid = list(differential.grid_combinations())
  assert len(grid) == (len(registry.ALGORITHMS) * len(differential.GRID_AGGREGATORS) * 2
                       * len(schedules.SCHEDULES) * len(differential.MODEL_KINDS))
  assert len({c.name for c in shipped + grid}) == len(shipped) + len(grid)


def test_script_prints_each_outcome_and_the_tally(tmp_path):
  # In a child process (--per-process), whose outcome the parent reads back from --results.
  results = str(tmp_path / 'results.jsonl')
  selection = ['scripts/differential.py', '--set', 'shipped', '--results', results,
               '--filter', r'quickstart_dp\.py:ftrl_noiseless$']
  result = conftest.run_script(selection + ['--per-process', '1'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('passed   quickstart_dp.py:ftrl_noiseless: max |diff| ')
  assert lines[-1] == 'checked 1, passed 1, failed 0, refused 0, invalid 0, not run 0'
  assert lines[-2].split()[:7] == ['quickstart_dp.py', '1', '1', '0', '0', '0', '0']
  assert [o.name for o in differential.load_outcomes(results)] == [
      'quickstart_dp.py:ftrl_noiseless']
  report = conftest.run_script(selection + ['--report'])
  assert report.returncode == 0, report.stderr
  assert report.stdout.strip().splitlines() == lines[1:]  # The table only: nothing rerun.
  bad = conftest.run_script(['scripts/differential.py', '--rounds', '2'])
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      'differential.py: error: --rounds must be at least 3, got 2')


def test_the_tolerance_is_absolute_plus_relative_to_tffs_value():
  # 2 float32 ulps of 71.17 (the Adagrad preconditioner of reddi.py:stackoverflow_tag:fedadagrad)
  # pass; the same difference near 0 does not.
  value = np.float32(71.17462158)
  two_ulps = float(2 * np.spacing(value))
  assert two_ulps == pytest.approx(1.526e-5, rel=1e-3)
  assert two_ulps <= differential.allowed_difference(float(value))
  assert two_ulps > differential.allowed_difference(0.0) == differential.TOLERANCE
  assert differential.allowed_difference(-1.0) == pytest.approx(1.1e-5)


def _float64_adagrad_rounds(config, task, initial, rounds):
  """Reddi et al.'s tag prediction (logistic regression, binary cross-entropy on logits summed
  over the batch, averaged over tags; one client epoch of SGD; weighted mean; server Adagrad as
  tff.learning.optimizers.build_adagrad) in float64 NumPy: each round's kernel, bias and
  preconditioners."""
  weights = [np.asarray(w, np.float64) for w in initial]
  preconditioner = [np.zeros_like(w) for w in weights]
  epsilon = float(np.float32(config.server.epsilon))  # TFF keeps it in float32.
  out = []
  for round_num in range(1, rounds + 1):
    updates, total = [np.zeros_like(w) for w in weights], 0
    for client_id in differential.client_ids(config, task, round_num):
      local, count = [w.copy() for w in weights], 0
      for batch in task.train_data.serializable_dataset_fn(client_id).as_numpy_iterator():
        x, y = (np.asarray(t, np.float64) for t in batch_loss.inputs_and_labels(batch))
        dz = (1 / (1 + np.exp(-(x @ local[0] + local[1]))) - y) / y.shape[1]
        local = [local[0] - config.client.learning_rate * x.T @ dz,
                 local[1] - config.client.learning_rate * dz.sum(0)]
        count += len(x)
      updates = [u + count * (l - w) for u, l, w in zip(updates, local, weights)]
      total += count
    gradients = [-u / total for u in updates]
    preconditioner = [p + g ** 2 for p, g in zip(preconditioner, gradients)]
    weights = [w - config.server.learning_rate * g / np.sqrt(p + epsilon)
               for w, g, p in zip(weights, gradients, preconditioner)]
    out.append(weights + preconditioner)
  return out


def test_reddi_adagrad_differs_by_float32_rounding_only():
  """reddi.py:stackoverflow_tag:fedadagrad's engines differ by 1.53e-5 in the Adagrad
  preconditioner (values up to 87): each engine is within a few float32 ulps of a float64
  NumPy reference, and the harness's tolerance passes them."""
  combination, = [c for c in differential.shipped_combinations(
      os.path.join(conftest.REPO_ROOT, 'configs')) if c.name == 'reddi.py:stackoverflow_tag:fedadagrad']
  config = config_lib.resolve(differential.shrink(combination.config))
  task = tasks.build_task(config)
  engines = differential._Engines(config, task, None)  # pylint: disable=protected-access
  tff_state, compiled_state = engines.initial_states()
  reference = _float64_adagrad_rounds(
      config, task, engines.tff.get_model_weights(tff_state).trainable, 2)
  largest = 0.0
  for round_num, expected in enumerate(reference, 1):
    tff_output, compiled_output = engines.next(round_num, tff_state, compiled_state)
    tff_state, compiled_state = tff_output.state, compiled_output.state
    found = differential._max_difference(  # pylint: disable=protected-access
        tff_state, engines.compiled.to_tff_state(compiled_state, tff_state), 'state')
    assert found.share <= 1, found
    largest = max(largest, found.largest)
    for state in (tff_state, engines.compiled.to_tff_state(compiled_state, tff_state)):
      preconditioner = state.finalizer['preconditioner']
      for actual, want in zip(preconditioner, expected[2:]):
        ulps = np.abs(np.asarray(actual, np.float64) - want) / np.spacing(np.float32(want))
        big = want > 1.0  # Small entries are sums of cancelling client updates: absolute error.
        assert np.max(ulps[big], initial=0) <= 6
        assert np.max(np.abs(np.asarray(actual) - want)) <= 2e-5
  assert largest > differential.TOLERANCE  # The case the relative tolerance is for.


class _ScaledLoss(tf.keras.losses.SparseCategoricalCrossentropy):
  """fedtff's default loss (cross-entropy on logits) times `scale`."""

  def __init__(self, scale: float):
    super().__init__(from_logits=True)
    self._scale = scale

  def __call__(self, y_true, y_pred, sample_weight=None):
    return self._scale * super().__call__(y_true, y_pred, sample_weight)


def test_float64_mode_decides_what_float32_rounding_hides():
  """In float64 both engines agree within FLOAT64_TOLERANCE (1e-9 + 1e-12 |tff|), and a compiled
  engine whose loss is 1 + 1e-6 times TFF's fails there although every value it changes stays
  within the float32 tolerance (1e-5)."""
  config = tiny_config()
  same = check('tiny', config, rounds=1, dtype='float64')
  assert same.status == differential.PASSED and same.dtype == 'float64', same.line()
  assert same.line().startswith('passed   tiny [float64]: max |diff| ')
  scaled = check('scaled', config, rounds=1, dtype='float64',
                 compiled_options={'loss': _ScaledLoss(1 + 1e-6)})
  assert scaled.status == differential.FAILED, scaled.line()
  assert scaled.share > 10
  assert scaled.share_where.startswith('round 1 state global_model_weights/trainable/')
  assert scaled.max_difference < differential.TOLERANCE  # What float32 mode would pass.


def test_float64_server_momentum_steps_as_numpy_and_both_engines_agree():
  """TFF's SGD momentum step casts neither hyperparameter, so fedtff's optimizer holds them in
  float64 under a float64 floatx: two steps on float64 weights, the state held as tensors, equal
  NumPy's `a = m a + g; w -= lr a`, and float64 FedAvgM passes the harness over 3 rounds
  (momentum acts from round 2)."""
  gradient = np.array([0.1, 0.3])
  with differential.keras_floatx('float64'):
    sgdm = optimizers.build('sgd', 0.7, momentum=0.9)
    # A TFF process holds the state as tensors: a Python float becomes a float32 one.
    state = tf.nest.map_structure(tf.convert_to_tensor,
                                  sgdm.initialize(tf.TensorSpec([2], tf.float64)))
    weights = tf.constant([0.5, -1.25], tf.float64)
    for _ in range(2):
      state, weights = sgdm.next(state, weights, tf.constant(gradient))
  accumulator, expected = np.zeros(2), np.array([0.5, -1.25])
  for _ in range(2):
    accumulator = 0.9 * accumulator + gradient
    expected = expected - 0.7 * accumulator
  assert weights.dtype == tf.float64
  np.testing.assert_array_equal(weights.numpy(), expected)
  assert optimizers.build('sgd', 0.7, momentum=0.9).initialize(
      tf.TensorSpec([2], tf.float32))['momentum'] == 0.9  # float32 floatx: a Python float, as given
  outcome = check('fedavgm', tiny_config(algorithm__name='fedavgm', server__momentum=0.9),
                  dtype='float64')
  assert outcome.status == differential.PASSED, outcome.line()


def test_float64_is_the_default_for_the_resnet_only_and_floatx_is_restored():
  configs = {c.name: c.config for c in differential.shipped_combinations(
      os.path.join(conftest.REPO_ROOT, 'configs'))}
  dtypes = {name: differential.default_dtype(c) for name, c in configs.items()}
  assert {n for n, d in dtypes.items() if d == 'float64'} == {
      n for n in configs if n.startswith('reddi.py:cifar100_image:')}
  model_fn = tasks.build_task(config_lib.resolve(tiny_config())).model_fn
  with differential.keras_floatx('float64'):
    assert {v.dtype for v in model_fn().trainable_variables} == {tf.float64}
  assert tf.keras.backend.floatx() == 'float32'
  with pytest.raises(ValueError, match="dtype must be one of float32, float64 or None, got 'f16'"):
    check('tiny', tiny_config(), dtype='f16')


def test_quantizing_compression_is_bounded_by_one_step_per_client():
  config = tiny_config(aggregator__kind='compression', aggregator__quantization_bits=8,
                       aggregator__quantization_threshold=10)  # The 64x8 kernel is quantized.
  outcome = check('compression', config)
  assert outcome.status == differential.PASSED, outcome.line()
  assert 'round-1 quantization error tff ' in outcome.message
  assert outcome.max_difference <= differential.TOLERANCE  # The unquantized twin.


def test_an_exception_from_a_build_is_a_failure_with_its_traceback():
  """Only validation steps make a config invalid: a TypeError raised while building the
  compiled engine (a client optimizer of the wrong type) is a failure, printed in full."""
  outcome = check('broken', tiny_config(), compiled_options={'client_optimizer': 'sgd'})
  assert outcome.status == differential.FAILED, outcome.line()
  assert outcome.max_difference is None
  assert outcome.message.split(':')[0].endswith('Error')
  assert outcome.traceback.startswith('Traceback (most recent call last):')


def test_dropout_rate_is_the_layers_on_both_engines():
  outcome = differential.check_dropout_rate(0.5)
  assert outcome.status == differential.PASSED, outcome.line() + outcome.traceback
  assert outcome.message.startswith('tff 0.') and '; compiled 0.' in outcome.message


def test_dropout_fraction_rejects_another_rate_or_scaling():
  mask = np.random.default_rng(0).random(4000) >= 0.25  # Kept with probability 0.75.
  assert differential.dropout_fraction(mask * 0.5 / 0.75, 0.25)[0]
  assert not differential.dropout_fraction(mask * 0.5 / 0.75, 0.5)[0]  # Another rate.
  assert not differential.dropout_fraction(mask * 0.5, 0.25)[0]  # Kept ones not scaled.
  assert not differential.dropout_fraction(np.full(4000, 0.5), 0.25)[0]  # No dropout.


def test_model_dropout_false_leaves_out_the_dropout_layers():
  config = config_lib.resolve(tiny_config(data__dataset='emnist_digits', model__name='emnist_cnn',
                                          data__synthetic_standin=True))
  layers = lambda c: [type(l).__name__ for l in tasks.build_task(c).model_fn().layers]
  with_dropout = layers(config)
  config.model.dropout = False
  assert with_dropout.count('Dropout') == 2
  assert layers(config) == [l for l in with_dropout if l != 'Dropout']


def test_results_are_a_checkpoint_and_report_counts_what_did_not_run(tmp_path):
  results = str(tmp_path / 'results.jsonl')
  differential.save_outcome(results, differential.Outcome(
      'mcmahan_digits.py:iid:fedsgd', differential.PASSED, 2e-7, 'round 3 state x', share=0.02))
  differential.save_outcome(results, differential.Outcome('dropout:rate=0.5', differential.FAILED,
                                                          message='tff 0.1 dropped'))
  two_digits = r'^mcmahan_digits\.py:iid:(fedsgd|fedavg_e1_binf)$'
  result = conftest.run_script(['scripts/differential.py', '--results', results, '--report',
                                '--filter', two_digits + '|^dropout:'])
  assert result.returncode == 1, result.stderr
  lines = result.stdout.strip().splitlines()
  table = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
  # checked passed failed refused invalid not-run, largest |diff| (share).
  assert table['mcmahan_digits.py'][:6] == ['1', '1', '0', '0', '0', '1']
  assert table['mcmahan_digits.py'][6:] == ['2e-07', '(0.02)']
  assert table['dropout'][:6] == ['1', '0', '1', '0', '0', '1']
  assert lines[-1] == 'checked 2, passed 1, failed 1, refused 0, invalid 0, not run 2'


def test_the_source_fingerprint_sees_an_edit(tmp_path):
  package = tmp_path / 'fedtff' / 'algorithms'
  package.mkdir(parents=True)
  (package / 'fed_prox.py').write_text('def f():\n  pass\n')
  before = differential.source_fingerprint(str(tmp_path))
  (package / 'fed_prox.py').write_text('# moved\ndef f():\n  pass\n')
  assert differential.source_fingerprint(str(tmp_path)) != before
