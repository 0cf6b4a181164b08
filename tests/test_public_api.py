"""The public surface that `import fedtff` offers."""

import fedtff


def test_exports_the_documented_api():
  expected = {
      'build_evaluation', 'build_fed_avg', 'config', 'data', 'fast', 'local_runtime', 'models',
      'build_optimizer', 'run_experiment', 'run_training', 'runtime', 'sample_clients', 'batch_fn',
      'privacy', 'build_learning_process', 'build_fed_prox', 'build_fed_sgd', 'build_mime_lite',
      'AggregatorSpec', 'Schedule', 'evaluate_checkpoint', 'sweeps', 'build_optimizer_fn', 'ALGORITHMS', 'TrainingDivergedError',
      'callbacks', 'RoundEnd', 'restore_tff_context',
      # Your own task and algorithm, and the run-directory pieces of your own round loop.
      'UserTask', 'user_task', 'run_dir', 'checkpoints', 'outputs', 'training', 'ProgressLine',
      'client_metrics', 'build_per_client_evaluation',
  }
  exported = {name for name in dir(fedtff) if not name.startswith('_')}
  assert expected <= exported
  assert fedtff.__version__ == '0.1.0'


def test_exports_the_round_loop_managers():
  """What a round loop of your own writes the runner's files with (docs/research.md)."""
  assert callable(fedtff.run_dir.lock) and callable(fedtff.run_dir.metric_writers)
  assert callable(fedtff.run_dir.resumed_rows) and callable(fedtff.run_dir.write_summary)
  assert callable(fedtff.checkpoints.save) and callable(fedtff.checkpoints.restore_latest)
  assert fedtff.privacy.RunPrivacy is fedtff.privacy.run_privacy.RunPrivacy
  assert fedtff.ProgressLine is fedtff.progress.ProgressLine


def test_the_optimizer_builders_and_the_module_have_distinct_names():
  # fedtff.optimizers is the module; the functions say that they build.
  assert fedtff.optimizers.__name__ == 'fedtff.optimizers'
  assert fedtff.build_optimizer is fedtff.optimizers.build
  assert fedtff.build_optimizer_fn is fedtff.optimizers.build_fn
  assert not hasattr(fedtff, 'optimizer') and not hasattr(fedtff, 'optimizer_fn')
