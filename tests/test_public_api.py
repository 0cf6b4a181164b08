"""The public surface that `import fedtff` offers."""

import fedtff


def test_exports_the_documented_api():
  expected = {
      'build_evaluation', 'build_fed_avg', 'config', 'data', 'fast', 'local_runtime', 'models',
      'build_optimizer', 'run_experiment', 'run_training', 'runtime', 'sample_clients', 'batch_fn',
      'privacy', 'build_learning_process', 'build_fed_prox', 'build_fed_sgd', 'build_mime_lite',
      'AggregatorSpec', 'Schedule', 'evaluate_checkpoint', 'sweeps', 'build_optimizer_fn', 'ALGORITHMS', 'TrainingDivergedError',
      'callbacks', 'RoundEnd', 'restore_tff_context',
  }
  exported = {name for name in dir(fedtff) if not name.startswith('_')}
  assert expected <= exported
  assert fedtff.__version__ == '0.1.0'


def test_the_optimizer_builders_and_the_module_have_distinct_names():
  # fedtff.optimizers is the module; the functions say that they build.
  assert fedtff.optimizers.__name__ == 'fedtff.optimizers'
  assert fedtff.build_optimizer is fedtff.optimizers.build
  assert fedtff.build_optimizer_fn is fedtff.optimizers.build_fn
  assert not hasattr(fedtff, 'optimizer') and not hasattr(fedtff, 'optimizer_fn')
