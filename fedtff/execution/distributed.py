"""Runs TFF rounds on fedtff workers on other machines, splitting the clients.

Each machine runs `python -m fedtff.execution.worker --port=8000` (TFF's C++
`worker_binary`, see `fedtff.execution.worker`); the trainer scopes its computations to
those workers with

  with fedtff.execution.distributed.remote_runtime(['host1:8000', 'host2:8000']):
    state = process.initialize()
    output = process.next(state, client_ids)

`fedtff.run_experiment` does this when `config.runtime.workers` names workers
(`runtime_for(config.runtime)`), and runs on the local runtime otherwise.

How a round is split. The context is TFF's own
`tff.backends.native.create_mergeable_comp_execution_context`, with one async
context per worker. It compiles a computation to `MergeableCompForm`: the part
up to the (single, possibly compound) aggregation, the aggregation's `merge`,
and the part after it. A call then

1. cuts every CLIENTS-placed argument (for a learning process: the list of
   client ids or datasets) into `len(workers)` contiguous slices, the first
   ones one client longer when the division is not exact (`ceil(remaining
   clients / remaining workers)` each, in list order), and copies every other
   argument (the server state) to all workers;
2. runs `up_to_merge` on worker k with slice k, all workers at once;
3. merges the partial aggregates pairwise, as they arrive, on the worker that
   has just finished;
4. runs `after_merge` (e.g. the server optimizer step) once, on the worker
   that did the last merge, because a learning process returns only
   SERVER-placed values.

A computation without CLIENTS-placed arguments (`initialize`) runs on every
worker with an empty client set. A computation TFF cannot compile to that form
(two aggregations where one depends on the other) runs whole on the first
worker, with a warning.

TFF's `RemoteExecutor` calls gRPC synchronously from inside its coroutines, so
async contexts sharing one event loop run one after the other; fedtff gives
each worker's context its own event-loop thread, so the workers compute at the
same time.

Faults. TFF's contexts retry a call that failed with gRPC UNAVAILABLE without
end, which would hang a trainer whose worker died. fedtff probes every worker
every second or so with a cheap RPC; a worker that has not answered for
`connect_timeout_s` is declared lost, its in-flight calls are cancelled and the
round raises `WorkerUnavailableError` naming it. A worker that comes back
within that time (restarted by a supervisor on the same port) gets the failed
sub-round retried by TFF and the round completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import grpc
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.proto.v0 import executor_pb2_grpc

from fedtff.runner import checkpoints
from fedtff.runner import run_dir
from fedtff.execution import runtime
from fedtff.execution.runtime import check_workers

_PROBE_INTERVAL_S = 1.0
_ERROR_POLL_S = 0.05
_logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
  """A TFF worker failed a call; `addresses` names the workers concerned."""

  def __init__(self, message: str, addresses: Sequence[str]):
    super().__init__(message)
    self.addresses = tuple(addresses)


class WorkerUnavailableError(WorkerError):
  """A TFF worker could not be reached, or stopped answering."""


def _describe(error) -> str:
  """'CODE: details' of a gRPC error (or of TFF's wrapper of one)."""
  return f'{error.code().name}: {error.details()}'


class WorkerStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's gRPC stub to one worker, with liveness probes and named errors.

  A background thread sends the worker a no-op `Dispose` RPC about every
  second. When none has succeeded for `timeout_s`, the worker is lost: the
  channel is closed (cancelling calls in flight) and every call raises
  `WorkerUnavailableError`. A call failing with a retryable gRPC error waits
  until the worker answers again (then re-raises it so TFF retries) or is lost.
  Other gRPC errors become `WorkerError`s naming the worker.
  """

  def __init__(self, address: str, *, timeout_s: float, channel: Optional[grpc.Channel] = None):
    self.address = address
    self._timeout_s = timeout_s
    # A given channel (e.g. a site's, docs/cross_silo.md) is closed with the stub.
    self._channel = channel or grpc.insecure_channel(address, runtime.GRPC_CHANNEL_OPTIONS)
    super().__init__(self._channel)
    self._probe_stub = executor_pb2_grpc.ExecutorGroupStub(self._channel)
    self._last_answer = time.monotonic()
    self._last_error = 'no answer yet'
    self._lost: Optional[str] = None
    self._failing_since: Optional[float] = None
    self._closed = threading.Event()
    self._monitor: Optional[threading.Thread] = None

  def probe_future(self, timeout_s: float, *, wait_for_ready: bool = False) -> grpc.Future:
    """Sends the no-op probe RPC; the future fails if the worker does not answer."""
    return self._probe_stub.Dispose.future(
        executor_pb2.DisposeRequest(), timeout=timeout_s, wait_for_ready=wait_for_ready)

  def start_monitor(self) -> None:
    """Starts the liveness probes; call once the worker has answered."""
    self._last_answer = time.monotonic()
    self._monitor = threading.Thread(target=self._watch, name=f'fedtff-probe-{self.address}',
                                     daemon=True)
    self._monitor.start()

  def _watch(self) -> None:
    interval = min(_PROBE_INTERVAL_S, self._timeout_s / 4)
    while not self._closed.wait(interval):
      try:
        self.probe_future(max(interval, self._timeout_s / 2)).result()
        self._last_answer = time.monotonic()
      except (grpc.RpcError, grpc.FutureCancelledError, ValueError) as e:
        if self._closed.is_set():
          return
        self._last_error = _describe(e) if isinstance(e, grpc.Call) else repr(e)
      if time.monotonic() - self._last_answer > self._timeout_s:
        self._declare_lost()
        return

  def _declare_lost(self) -> None:
    self._lost = (f'TFF worker {self.address} is unavailable: it has not answered for '
                  f'{self._timeout_s:g} s (last error: {self._last_error}).')
    # Info, not error: the caller gets it as WorkerUnavailableError at its next
    # call, which scripts print as their one error line.
    _logger.info('%s', self._lost)
    self._channel.close()

  def _unavailable(self) -> WorkerUnavailableError:
    return WorkerUnavailableError(self._lost, [self.address])

  def _wait_for_answer_or_loss(self, since: float) -> None:
    """Returns once the worker answers a probe sent after `since`; raises if lost."""
    while self._lost is None and self._last_answer <= since and not self._closed.is_set():
      time.sleep(_ERROR_POLL_S)
    if self._lost is not None:
      raise self._unavailable()

  def _retry_allowed(self, error: tff.framework.RetryableError, failed_at: float) -> None:
    """Returns if TFF may retry after `error`; raises if the worker is lost or keeps failing."""
    self._wait_for_answer_or_loss(failed_at)
    self._failing_since = self._failing_since or failed_at
    if time.monotonic() - self._failing_since > self._timeout_s:
      raise WorkerError(f'TFF worker {self.address} answers but has failed every call for '
                        f'{self._timeout_s:g} s: {_describe(error)}', [self.address]) from None

  def _call(self, method, request):
    if self._lost is not None:
      raise self._unavailable()
    try:
      response = method(request)
    except tff.framework.RetryableError as e:
      # The time of the failure, not of the call: a long call may fail long after it started.
      self._retry_allowed(e, time.monotonic())
      raise
    except (grpc.RpcError, ValueError) as e:  # A closed channel raises ValueError.
      if self._lost is not None:
        raise self._unavailable() from None
      if isinstance(e, ValueError):
        raise
      raise WorkerError(f'TFF worker {self.address} failed a call: {_describe(e)}',
                        [self.address]) from None
    self._failing_since = None
    return response

  def _dispose_call(self, method, request, empty_response):
    """Disposal is best effort: a lost worker holds nothing to dispose of, and
    values garbage-collected after `close()` are gone with their executor."""
    if self._closed.is_set():
      return empty_response
    try:
      return self._call(method, request)
    except WorkerUnavailableError:
      return empty_response

  def get_executor(self, request):
    return self._call(super().get_executor, request)

  def create_value(self, request):
    return self._call(super().create_value, request)

  def create_struct(self, request):
    return self._call(super().create_struct, request)

  def create_call(self, request):
    return self._call(super().create_call, request)

  def create_selection(self, request):
    return self._call(super().create_selection, request)

  def compute(self, request):
    return self._call(super().compute, request)

  def dispose(self, request):
    return self._dispose_call(super().dispose, request, executor_pb2.DisposeResponse())

  def dispose_executor(self, request):
    return self._dispose_call(super().dispose_executor, request,
                              executor_pb2.DisposeExecutorResponse())

  def close(self) -> None:
    """Stops the probes and closes the channel."""
    self._closed.set()
    self._channel.close()
    if self._monitor is not None:
      self._monitor.join(timeout=5.0)


def _unreachable_reason(stub: WorkerStub, error: grpc.RpcError, timeout_s: float) -> str:
  """Why `stub`'s worker did not answer, in a few words."""
  if error.code() == grpc.StatusCode.UNIMPLEMENTED:
    return 'it answers gRPC but is not a TFF worker'
  if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
    return _describe(error)
  try:  # Without waiting for a connection, gRPC says why there is none.
    stub.probe_future(1.0).result()
  except grpc.RpcError as e:
    if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
      return _describe(e)
  return f'no answer within {timeout_s:g} s'


def unanswered(stubs: Sequence[WorkerStub], timeout_s: float) -> Dict[str, str]:
  """Probes every stub at once; `{address: why}` of those not answering within `timeout_s`."""
  probes = [stub.probe_future(timeout_s, wait_for_ready=True) for stub in stubs]
  failures = {}
  for stub, probe in zip(stubs, probes):
    try:
      probe.result()
    except grpc.RpcError as e:
      failures[stub.address] = _unreachable_reason(stub, e, timeout_s)
  return failures


def connect(workers: Sequence[str], *, timeout_s: float = 30.0) -> List[WorkerStub]:
  """Connects to every worker at once and waits up to `timeout_s` for all.

  Returns:
    One `WorkerStub` per address, in order, each with its probes running.

  Raises:
    ValueError: If `workers` is not a list of distinct 'host:port' strings.
    WorkerUnavailableError: Naming every worker that did not answer in time.
  """
  stubs = [WorkerStub(address, timeout_s=timeout_s) for address in check_workers(workers)]
  failures = unanswered(stubs, timeout_s)
  if failures:
    for stub in stubs:
      stub.close()
    named = '; '.join(f'{address} ({reason})' for address, reason in failures.items())
    raise WorkerUnavailableError(
        f'Cannot reach {len(failures)} of {len(stubs)} TFF workers: {named}. Start each with '
        '`python -m fedtff.execution.worker --port=PORT` and check the addresses.', list(failures))
  for stub in stubs:
    stub.start_monitor()
  return stubs


class SharedCompiler:
  """`fedtff.execution.runtime.compile_for_worker`, compiling each computation once for all workers.

  Which worker runs a round's merges and `after_merge` varies from round to
  round; with one cache, none of them compiles a computation again.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._compiled = {}

  def __call__(self, computation):
    with self._lock:
      if computation not in self._compiled:
        self._compiled[computation] = runtime.compile_for_worker(computation)
      return self._compiled[computation]


def _executor_factory(stub: WorkerStub, default_num_clients: int):
  """TFF's executor factory for one remote worker (cf. `fedtff.execution.runtime`)."""

  def stack_fn(cardinalities):
    cardinalities.setdefault(tff.CLIENTS, default_num_clients)
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.ResourceManagingExecutorFactory(stack_fn)


class WorkerContext(tff.framework.AsyncContext):
  """A worker's `tff.framework.AsyncExecutionContext`, run on its own thread.

  TFF's `RemoteExecutor` blocks its event loop on every gRPC call, so several
  contexts on one loop would run their workers one at a time; each
  `WorkerContext` has a loop (and thread) of its own.
  """

  def __init__(self, stub: WorkerStub, compiler_fn: Callable[[Any], Any], *,
               default_num_clients: int = 0):
    self.address = stub.address
    self._context = tff.framework.AsyncExecutionContext(
        executor_fn=_executor_factory(stub, default_num_clients),
        compiler_fn=compiler_fn,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result)
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever,
                                    name=f'fedtff-context-{self.address}', daemon=True)
    self._thread.start()

  def _submit(self, comp, arg):
    return asyncio.run_coroutine_threadsafe(self._context.invoke(comp, arg), self._loop)

  async def invoke(self, comp, arg):
    return await asyncio.wrap_future(self._submit(comp, arg))

  def invoke_sync(self, comp, arg):
    """Runs `comp` on this worker alone and returns its result."""
    return self._submit(comp, arg).result()

  def close(self, timeout_s: float = 10.0) -> None:
    """Stops the loop; call after closing the stub, which cancels calls in flight."""
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout_s)
    if not self._thread.is_alive():  # Else a daemon thread, gone at exit.
      self._loop.close()


def compile_to_mergeable_form(computation) -> tff.framework.MergeableCompForm:
  """TFF's mergeable-form compilation, after lowering secure sums to plain sums.

  Like `fedtff.execution.runtime.compile_for_worker`, secure sums are computed in the
  clear, which the C++ worker requires and which lets them split over workers.

  Raises:
    ValueError: If `computation` has an aggregation that depends on another.
  """
  lowered = tff.backends.test.replace_secure_intrinsics_with_bodies(computation)
  form = tff.backends.native.compile_to_mergeable_comp_form(lowered)
  # Lowering forgets the result's Python containers (e.g. LearningProcessOutput).
  after_merge = tff.framework.ConcreteComputation.with_type(
      form.after_merge, tff.FunctionType(form.after_merge.type_signature.parameter,
                                         computation.type_signature.result))
  return tff.framework.MergeableCompForm(
      up_to_merge=form.up_to_merge, merge=form.merge, after_merge=after_merge)


class SplittingContext(tff.framework.SyncContext):
  """Splits each call's clients over the workers (see the module docstring).

  Computations that do not compile to `MergeableCompForm` run whole on the
  first worker, with a warning naming the computation and the reason.
  """

  def __init__(self, contexts: Sequence[WorkerContext]):
    self._contexts = list(contexts)
    self._mergeable = tff.backends.native.create_mergeable_comp_execution_context(self._contexts)
    self._forms = {}

  def _form(self, comp) -> Optional[tff.framework.MergeableCompForm]:
    if comp not in self._forms:
      try:
        self._forms[comp] = compile_to_mergeable_form(comp)
      except (ValueError, TypeError) as e:
        _logger.warning('%s cannot be split over workers (%s); it runs on %s alone.',
                        comp.type_signature, str(e).splitlines()[0], self._contexts[0].address)
        self._forms[comp] = None
    return self._forms[comp]

  def invoke(self, comp, arg):
    form = self._form(comp)
    if form is None:
      return self._contexts[0].invoke_sync(comp, arg)
    return self._mergeable.invoke(form, arg)


@contextlib.contextmanager
def remote_runtime(workers: Sequence[str], *,
                   connect_timeout_s: float = 30.0) -> Iterator[SplittingContext]:
  """Runs TFF computations on remote fedtff workers, splitting each round's clients.

  Like `fedtff.local_runtime`, but the computations run on workers started
  elsewhere with `python -m fedtff.execution.worker` (or `fedtff-worker`), which this
  does not start or stop.

  Args:
    workers: Worker addresses, 'host:port' each, all distinct.
    connect_timeout_s: How long to wait for every worker to answer at the
      start, and how long a worker may stay silent later before the call in
      progress fails with `WorkerUnavailableError`.

  Yields:
    The installed `SplittingContext`.

  Raises:
    ValueError: If `workers` is not a non-empty list of distinct 'host:port'.
    WorkerUnavailableError: If a worker cannot be reached within
      `connect_timeout_s` (naming every such worker), or, from a computation
      in the block, if a worker stops answering.
  """
  if not connect_timeout_s > 0:
    raise ValueError(f'connect_timeout_s must be positive, got {connect_timeout_s}.')
  with splitting_runtime(connect(workers, timeout_s=connect_timeout_s)) as context:
    yield context


@contextlib.contextmanager
def splitting_runtime(stubs: Sequence[WorkerStub]) -> Iterator[SplittingContext]:
  """Installs a `SplittingContext` over connected `stubs` for the block; closes them after."""
  compiler = SharedCompiler()
  contexts = [WorkerContext(stub, compiler) for stub in stubs]
  try:
    context = SplittingContext(contexts)
    with tff.framework.get_context_stack().install(context):
      yield context
  finally:
    for context, stub in zip(contexts, stubs):
      stub.close()
      context.close()


def _resume_hint(workdir: str, where: str) -> str:
  checkpoint_dir = os.path.join(workdir, run_dir.CHECKPOINTS)
  kept = checkpoints.rounds(checkpoint_dir)
  if kept:
    kept_text = (f'The last checkpoint (round {kept[-1]}) is kept in {checkpoint_dir}; rerun '
                 f'the same config on {workdir} to resume from it (later rounds are redone)')
  else:
    kept_text = (f'No checkpoint was written yet; rerun the same config on {workdir} to start '
                 'over')
  return f'{kept_text}, {where}.'


# Where a run resumes after a lost worker, and after a lost site (whose data no other holds).
WORKERS_RESUME = 'on the restarted worker or on others (runtime.workers may change)'
SITES_RESUME = 'once the site is back'


@contextlib.contextmanager
def runtime_for(runtime_config, workdir: Optional[str] = None) -> Iterator[Any]:
  """The runtime an experiment config's `runtime` group asks for, as a context manager.

  No `workers`: `fedtff.local_runtime()`, a worker process on this machine.
  Otherwise `remote_runtime(workers, connect_timeout_s=connect_timeout_s)`.
  (`runtime.sites` runs on `fedtff.execution.sites.site_runtime`, which the
  runner enters itself.)

  Args:
    runtime_config: `config.runtime` (a ConfigDict or mapping with `workers`
      and `connect_timeout_s`).
    workdir: The run directory, if any. A `WorkerError` raised inside the
      block then also says which checkpoint is kept and how to resume.

  Yields:
    What `local_runtime()` or `remote_runtime()` yields.

  Raises:
    ValueError: If a worker address is not 'host:port' or is listed twice.
    WorkerUnavailableError: If a worker cannot be reached at the start, or
      stops answering inside the block.
    WorkerError: If a worker fails a call inside the block.
  """
  workers = tuple(runtime_config['workers'])
  if not workers:
    with runtime.local_runtime() as worker:
      yield worker
    return
  with with_resume_hint(remote_runtime(
      workers, connect_timeout_s=runtime_config['connect_timeout_s']), workdir) as context:
    yield context


@contextlib.contextmanager
def with_resume_hint(runtime_context, workdir: Optional[str],
                     where: str = WORKERS_RESUME) -> Iterator[Any]:
  """Enters `runtime_context`; a `WorkerError` inside also says how to resume `workdir`
  (`where`: on which workers)."""
  with runtime_context as context:
    try:
      yield context
    except WorkerError as e:
      if workdir is None:
        raise
      raise type(e)(f'{e} {_resume_hint(workdir, where)}', e.addresses) from e
