"""The public surface that `import fedtff` offers."""

import fedtff


def test_exports_the_documented_api():
  expected = {
      # The layout: algorithm definitions, the two engines' parts, the runner, data, privacy,
      # the built-in tasks and the research tools (docs/algorithms.md, "Where things live").
      'algorithms', 'compiled', 'execution', 'runner', 'data', 'privacy', 'tasks', 'models',
      'research',
      'build_evaluation', 'build_fed_avg', 'local_runtime', 'build_optimizer', 'run_experiment',
      'run_training', 'sample_clients', 'batch_fn', 'build_learning_process', 'build_fed_prox',
      'build_fed_sgd', 'build_mime_lite', 'build_fed_nova', 'AggregatorSpec', 'AttackSpec', 'Schedule',
      'evaluate_checkpoint',
      'build_optimizer_fn', 'ALGORITHMS', 'TrainingDivergedError', 'RoundEnd',
      'restore_tff_context',
      # Your own task and algorithm, and the run-directory pieces of your own round loop.
      'UserTask', 'ProgressLine', 'build_per_client_evaluation',
  }
  exported = {name for name in dir(fedtff) if not name.startswith('_')}
  assert expected <= exported
  # Each module has one name: the runner's modules live in `fedtff.runner` only.
  assert not {'config', 'run_dir', 'checkpoints', 'training', 'runtime', 'fast'} & exported
  assert fedtff.__version__ == '0.1.0'


def test_exports_the_round_loop_managers():
  """What a round loop of your own writes the runner's files with (docs/research.md)."""
  assert callable(fedtff.runner.run_dir.lock) and callable(fedtff.runner.run_dir.metric_writers)
  assert callable(fedtff.runner.run_dir.resumed_rows) and callable(fedtff.runner.run_dir.write_summary)
  assert callable(fedtff.runner.checkpoints.save) and callable(fedtff.runner.checkpoints.restore_latest)
  assert fedtff.privacy.RunPrivacy is fedtff.privacy.run_privacy.RunPrivacy
  assert fedtff.ProgressLine is fedtff.runner.progress.ProgressLine


def test_the_optimizer_builders_and_the_module_have_distinct_names():
  # fedtff.algorithms.optimizers is the module; the functions say that they build.
  assert fedtff.algorithms.optimizers.__name__ == 'fedtff.algorithms.optimizers'
  assert fedtff.build_optimizer is fedtff.algorithms.optimizers.build
  assert fedtff.build_optimizer_fn is fedtff.algorithms.optimizers.build_fn
  assert not hasattr(fedtff, 'optimizer') and not hasattr(fedtff, 'optimizer_fn')
