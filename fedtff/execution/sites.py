"""The trainer's side of a federation of sites that own their data.

Each site serves TFF's `worker_binary` with its working directory holding
`data -> DIR`, its site data directory (`fedtff.execution.site_data`). The
trainer names the sites, not the data:

  with fedtff.execution.sites.site_runtime(['alice=host1:8000', 'bob=host2:8000']) as context:
    state = process.initialize()
    output = process.next(state, client_ids)

`fedtff.run_experiment` does this when `config.runtime.sites` names sites
(`fedtff.runner.experiment`, with `distributed.with_resume_hint`).

How a call runs (`SiteRoutingContext`). The computation is compiled to TFF's
`MergeableCompForm` (`distributed.compile_to_mergeable_form`): `up_to_merge`
(the clients' work and the partial aggregate), `merge`, `after_merge`. Then

1. every CLIENTS-placed argument is routed by the client ids: each client id
   goes to the one site whose manifest lists it (a round-tagged id
   '<round>/<id>', `fedtff.data.round_client_id`, by its plain id), keeping
   the round's order within a site. An id no site holds fails the call, with
   one line, before anything runs;
2. EVERY site runs `up_to_merge` on its share, also a site with no client in
   this call (its partial aggregate is then the aggregation's zero, which
   secure aggregation needs: each site's mask enters the sum exactly once);
3. the partial aggregates are merged in site order, and `after_merge` (e.g.
   the server optimizer step) runs, on a worker of the trainer's own: the
   trainer receives every site's partial aggregate anyway, and no site sees
   another's. `after_merge` gets the call's arguments with their
   CLIENTS-placed values empty (its SERVER-placed result depends on them only
   through the aggregate); a computation with CLIENTS-placed results runs
   `after_merge` at each site on its own clients instead.

A computation without CLIENTS-placed arguments (`initialize`, ...) runs whole
on the trainer's worker. One that does not compile to the mergeable form is
refused with one line: it cannot be split over sites, and no site holds all
the data.

What crosses to the trainer: the manifests (client ids, example counts, the
element spec) and each call's results (partial aggregates, metrics). The
computations the trainer sends hold the model and the code that reads
`data/clients.sqlite`, never an example.

Connections go through a `Connector`: `PlainConnector` (insecure gRPC,
manifest read by the site's worker) by default; mutual TLS plugs in by
implementing `manifest` and `channel` (docs/cross_silo.md).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import shutil
import tempfile
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol,
                    Sequence, Tuple)

import grpc
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.types import type_conversions

from fedtff.data import rounds
from fedtff.execution import distributed
from fedtff.execution import runtime
from fedtff.execution import secagg
from fedtff.execution import site_data
from fedtff.execution import tls

class UnknownClientError(ValueError):
  """A call names a client that no site holds."""


class Connector(Protocol):
  """How the trainer reaches a site: its manifest, and a gRPC channel to its worker."""

  def manifest(self, site: str, address: str, *, timeout_s: float) -> Dict[str, Any]:
    """The site's manifest (`site_data.read_manifest` at the site)."""

  def channel(self, site: str, address: str) -> grpc.Channel:
    """A channel to the site's TFF worker."""


@functools.lru_cache(maxsize=None)
def _read_manifest_computation():
  """A computation reading `data/manifest.json` where it runs (traced once, on first use)."""
  return tff.tensorflow.computation(
      lambda: tf.io.read_file(f'{site_data.DATA_LINK}/{site_data.MANIFEST}'))


class PlainConnector:
  """Insecure gRPC to the site's worker, which also reads its manifest.

  For sites on a trusted network or this machine (tests, demos): anyone who
  reaches the port can run any graph on the site's data. The manifest is
  `data/manifest.json` read by a one-op computation on the site's worker.
  """

  def channel(self, site: str, address: str) -> grpc.Channel:
    del site
    return grpc.insecure_channel(address, runtime.GRPC_CHANNEL_OPTIONS)

  def manifest(self, site: str, address: str, *, timeout_s: float) -> Dict[str, Any]:
    stub = distributed.WorkerStub(address, timeout_s=timeout_s,
                                  channel=self.channel(site, address))
    context = None
    try:
      _check_answered({site: stub}, timeout_s)
      context = distributed.WorkerContext(stub, runtime.compile_for_worker)
      text = context.invoke_sync(_read_manifest_computation(), None)
    except distributed.WorkerUnavailableError:
      raise
    except distributed.WorkerError as e:
      raise distributed.WorkerError(
          f'Site {site} ({address}) has no readable site data '
          f'({site_data.DATA_LINK}/{site_data.MANIFEST}): {str(e).splitlines()[0]}',
          [address]) from None
    finally:
      stub.close()
      if context is not None:
        context.close()
    try:
      manifest = json.loads(text)
    except ValueError as e:
      raise site_data.SiteDataError(f'Site {site} ({address}) announces a manifest that is not '
                                    f'JSON ({e}).') from None
    return site_data.check_manifest(manifest, f'site {site} ({address})')


def _check_answered(stubs: Mapping[str, distributed.WorkerStub], timeout_s: float) -> None:
  """Raises `WorkerUnavailableError` naming every site whose worker did not answer."""
  failures = distributed.unanswered(list(stubs.values()), timeout_s)
  if failures:
    named = '; '.join(f'{site} at {stub.address} ({failures[stub.address]})'
                      for site, stub in stubs.items() if stub.address in failures)
    raise distributed.WorkerUnavailableError(
        f'Cannot reach {len(failures)} of {len(stubs)} sites: {named}.', list(failures))


def connector_for(runtime_config: Mapping[str, Any]) -> Connector:
  """The connector a config's `runtime` group asks for: mutual TLS with the credentials
  of `runtime.credentials` (`fedtff.execution.tls.TlsConnector`), else `PlainConnector()`.

  The one place the runner chooses how to reach sites.
  """
  if runtime_config.get('credentials'):
    return tls.TlsConnector(tls.TrainerCredentials.load(runtime_config['credentials']))
  return PlainConnector()


def fetch_manifests(sites: Sequence[str], *, connect: Optional[Connector] = None,
                    timeout_s: float = 30.0) -> Dict[str, Dict[str, Any]]:
  """Every site's manifest, `{name: manifest}` in the order named."""
  connect = connect or PlainConnector()
  return {name: connect.manifest(name, address, timeout_s=timeout_s)
          for name, address in runtime.parse_sites(sites)}


def federation(sites: Sequence[str], *, connect: Optional[Connector] = None,
               timeout_s: float = 30.0) -> Dict[str, Any]:
  """`site_data.merge_manifests` of the sites' manifests, plus 'sites': their names in order."""
  return _federation_of(fetch_manifests(sites, connect=connect, timeout_s=timeout_s))


def _federation_of(manifests: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
  return dict(site_data.merge_manifests(manifests), sites=list(manifests))


def _has_clients(type_spec) -> bool:
  """Whether `type_spec` holds a CLIENTS-placed value that differs per client."""
  if isinstance(type_spec, tff.StructType):
    return any(_has_clients(t) for _, t in structure.iter_elements(type_spec))
  return (isinstance(type_spec, tff.FederatedType) and type_spec.placement == tff.CLIENTS
          and not type_spec.all_equal)


def _is_client_ids(type_spec) -> bool:
  return (isinstance(type_spec, tff.FederatedType) and type_spec.placement == tff.CLIENTS
          and not type_spec.all_equal and isinstance(type_spec.member, tff.TensorType)
          and tf.as_dtype(type_spec.member.dtype) == tf.string)


def _client_ids(value, type_spec) -> Optional[List[Any]]:
  """The first CLIENTS-placed list of strings in `value` (the call's client ids), or None."""
  if _is_client_ids(type_spec):
    return list(value)
  if isinstance(type_spec, tff.StructType):
    elements = structure.iter_elements(structure.from_container(value))
    for (_, element), (_, element_type) in zip(elements, structure.iter_elements(type_spec)):
      found = _client_ids(element, element_type)
      if found is not None:
        return found
  return None


def _route(value, type_spec, assignment: Sequence[int], num_sites: int) -> List[Any]:
  """`value` split into one value per site: CLIENTS-placed lists by `assignment`."""
  if isinstance(type_spec, tff.StructType):
    elements = list(structure.iter_elements(structure.from_container(value)))
    routed = [_route(element, element_type, assignment, num_sites)
              for (_, element), (_, element_type) in zip(elements,
                                                         structure.iter_elements(type_spec))]
    return [structure.Struct([(name, parts[k]) for (name, _), parts in zip(elements, routed)])
            for k in range(num_sites)]
  if isinstance(type_spec, tff.FederatedType) and type_spec.placement == tff.CLIENTS and (
      not type_spec.all_equal):
    values = list(value)
    return [[v for v, site in zip(values, assignment) if site == k] for k in range(num_sites)]
  return [value] * num_sites


def _unroute(results: Sequence[Any], type_spec, assignment: Sequence[int]):
  """The inverse of `_route` for `after_merge`'s per-site results."""
  if isinstance(type_spec, tff.StructType):
    per_site = [structure.from_container(r) for r in results]
    return structure.Struct([
        (name, _unroute([r[k] for r in per_site], element_type, assignment))
        for k, (name, element_type) in enumerate(structure.iter_elements(type_spec))])
  if isinstance(type_spec, tff.FederatedType) and type_spec.placement == tff.CLIENTS and (
      not type_spec.all_equal):
    iterators = [iter(r) for r in results]
    return [next(iterators[site]) for site in assignment]
  return results[0]


def _named(error: BaseException, site: str) -> BaseException:
  """A site's `WorkerError` with the site's name in front; other errors as they are."""
  if isinstance(error, distributed.WorkerError):
    return type(error)(f'Site {site}: {error}', error.addresses)
  return error


class SiteRoutingContext(tff.framework.SyncContext):
  """Routes each call's clients to the sites that hold them (module docstring).

  Args:
    names: The sites' names, in order.
    contexts: One `distributed.WorkerContext` per site, in the same order.
    trainer: A `WorkerContext` on a worker of the trainer's own (no data).
    site_of: `{client id: site name}` of every client the sites hold.
    before_clients: Called before every call that runs clients, e.g. to have
      the sites write this call's secure-aggregation masks
      (`fedtff.execution.secagg.SecureRounds.prepare_round`).
  """

  def __init__(self, names: Sequence[str], contexts: Sequence[distributed.WorkerContext],
               trainer: distributed.WorkerContext, site_of: Mapping[str, str], *,
               before_clients: Optional[Callable[[], Any]] = None):
    self._before_clients = before_clients
    self._names = list(names)
    self._contexts = list(contexts)
    self._trainer = trainer
    self._index = {name: k for k, name in enumerate(self._names)}
    self._site_of = dict(site_of)
    self._forms = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self._contexts),
                                                       thread_name_prefix='fedtff-sites')

  def _form(self, comp) -> tff.framework.MergeableCompForm:
    if comp not in self._forms:
      try:
        self._forms[comp] = distributed.compile_to_mergeable_form(comp)
      except (ValueError, TypeError) as e:
        raise ValueError(f'{comp.type_signature} cannot run over sites: it does not split into '
                         f'one aggregation per round ({str(e).splitlines()[0]}).') from None
    return self._forms[comp]

  def site_index(self, client_id: Any) -> int:
    """The position of the site holding `client_id` (plain, or round-tagged).

    Raises:
      UnknownClientError: If no site holds it.
    """
    client_id = client_id.decode() if isinstance(client_id, bytes) else str(client_id)
    site = self._site_of.get(client_id)
    if site is None:
      try:
        site = self._site_of.get(rounds.split_round_client_id(client_id)[2])
      except ValueError:
        pass
    if site is None:
      raise UnknownClientError(f'Client {client_id!r} is held by none of the sites '
                               f'{", ".join(self._names)}.')
    return self._index[site]

  def invoke(self, comp, arg):
    parameter = comp.type_signature.parameter
    if parameter is None or not _has_clients(parameter):
      return self._trainer.invoke_sync(comp, arg)
    form = self._form(comp)
    parameter = form.up_to_merge.type_signature.parameter
    ids = _client_ids(arg, parameter)
    if ids is None:
      raise ValueError(f'{comp.type_signature} has CLIENTS-placed arguments but no client ids '
                       'to route them by.')
    assignment = [self.site_index(i) for i in ids]
    site_args = _route(arg, parameter, assignment, len(self._contexts))
    if self._before_clients is not None:
      self._before_clients()
    merged = self._merge(form, self._up_to_merge(form, site_args))
    result = self._after_merge(form, arg, parameter, site_args, merged, assignment)
    return type_conversions.type_to_py_container(result, form.after_merge.type_signature.result)

  def _up_to_merge(self, form, site_args: Sequence[Any]) -> List[Any]:
    """Runs `up_to_merge` at every site at once; raises the first failing site's error."""
    futures = [self._pool.submit(context.invoke_sync, form.up_to_merge, site_arg)
               for context, site_arg in zip(self._contexts, site_args)]
    done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for name, future in zip(self._names, futures):
      if future in done and future.exception() is not None:
        raise _named(future.exception(), name)
    return [future.result() for future in futures]

  def _merge(self, form, partials: Sequence[Any]):
    merged = partials[0]
    for partial in partials[1:]:
      merged = self._trainer.invoke_sync(form.merge, structure.Struct.unnamed(merged, partial))
    return merged

  def _after_merge(self, form, arg, parameter, site_args, merged, assignment):
    result_type = form.after_merge.type_signature.result
    if not _has_clients(result_type):
      empty = _route(arg, parameter, [], 1)[0]  # Its CLIENTS-placed values emptied.
      return self._trainer.invoke_sync(form.after_merge, structure.Struct.unnamed(empty, merged))
    futures = [self._pool.submit(context.invoke_sync, form.after_merge,
                                 structure.Struct.unnamed(site_arg, merged))
               for context, site_arg in zip(self._contexts, site_args)]
    results = []
    for name, future in zip(self._names, futures):
      try:
        results.append(future.result())
      except distributed.WorkerError as e:
        raise _named(e, name) from None
    return _unroute(results, result_type, assignment)

  def close(self) -> None:
    self._pool.shutdown(wait=False)


def _connect(named: Sequence[Tuple[str, str]], connect: Connector,
             timeout_s: float) -> List[distributed.WorkerStub]:
  stubs = {name: distributed.WorkerStub(address, timeout_s=timeout_s,
                                        channel=connect.channel(name, address))
           for name, address in named}
  try:
    _check_answered(stubs, timeout_s)
  except distributed.WorkerUnavailableError:
    for stub in stubs.values():
      stub.close()
    raise
  for stub in stubs.values():
    stub.start_monitor()
  return list(stubs.values())


@contextlib.contextmanager
def _trainer_worker(timeout_s: float) -> Iterator[distributed.WorkerStub]:
  """A worker of the trainer's own, in an empty working directory (it reads no data)."""
  empty = tempfile.mkdtemp(prefix='fedtff-trainer-')
  worker = runtime.WorkerProcess(cwd=empty).start()
  try:
    [stub] = distributed.connect([worker.address], timeout_s=timeout_s)
    try:
      yield stub
    finally:
      stub.close()
  finally:
    worker.stop()
    shutil.rmtree(empty, ignore_errors=True)


def _site_control(connect: Connector, site: str, address: str,
                  timeout_s: float) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
  """A site's control requests; a site that cannot be reached fails the call as a lost
  worker does (`distributed.WorkerUnavailableError`, one line naming it)."""

  def control(request: Dict[str, Any]) -> Dict[str, Any]:
    try:
      return connect.control(site, address, request, timeout_s=timeout_s)
    except ConnectionError as e:  # tls.SiteConnectionError names the site already.
      raise distributed.WorkerUnavailableError(str(e), [address]) from None

  return control


def _secure_rounds(named: Sequence[Tuple[str, str]], connect: Connector,
                   manifests: Mapping[str, Mapping[str, Any]], streams: Mapping[str, int],
                   timeout_s: float) -> Callable[[], Any]:
  """Key agreement among the sites (`secagg.SecureRounds.setup`, the trainer relaying the
  announcements of their manifests); returns what asks them for each call's masks."""
  missing = [name for name, _ in named if not manifests[name].get('secagg')]
  if missing:
    raise secagg.SecAggError(f"Secure aggregation needs every site's key announcement; "
                             f"{', '.join(missing)} announced none (a plain-text site?).")
  controls = {name: _site_control(connect, name, address, timeout_s) for name, address in named}
  secure = secagg.SecureRounds(controls)
  secure.setup({name: manifests[name]['secagg'] for name, _ in named})
  return functools.partial(secure.prepare_round, dict(streams))


@contextlib.contextmanager
def site_runtime(sites: Sequence[str], *, connect: Optional[Connector] = None,
                 connect_timeout_s: float = 30.0,
                 secure_streams: Optional[Mapping[str, int]] = None
                ) -> Iterator[SiteRoutingContext]:
  """Runs TFF computations over sites that own their data (module docstring).

  Args:
    sites: 'name=host:port' of each site's TFF worker.
    connect: How to reach the sites; `PlainConnector()` by default.
    connect_timeout_s: How long to wait for each site at the start, and how
      long a site may stay silent later before the call in progress fails
      with `distributed.WorkerUnavailableError` naming it.
    secure_streams: For secure aggregation: `{stream: mask length}` of the
      process's masked sums (`fedtff.algorithms.masked_sum.mean_stream_lengths`).
      The sites agree on pairwise keys at the start, and before every call
      that runs clients each site writes its masks for a fresh nonce.
      Needs a connector with a control channel (`TlsConnector`).

  Yields:
    The installed `SiteRoutingContext`; its `federation` attribute is
    `federation(sites)`.

  Raises:
    ValueError: If `sites` is malformed, or the manifests conflict
      (`site_data.SiteDataError`).
    distributed.WorkerUnavailableError: If a site cannot be reached.
  """
  if not connect_timeout_s > 0:
    raise ValueError(f'connect_timeout_s must be positive, got {connect_timeout_s}.')
  connect = connect or PlainConnector()
  named = runtime.parse_sites(sites)
  manifests = fetch_manifests(sites, connect=connect, timeout_s=connect_timeout_s)
  described = _federation_of(manifests)
  before_clients = (_secure_rounds(named, connect, manifests, secure_streams, connect_timeout_s)
                    if secure_streams else None)
  compiler = distributed.SharedCompiler()
  with _trainer_worker(connect_timeout_s) as trainer_stub:
    stubs = _connect(named, connect, connect_timeout_s)
    contexts = [distributed.WorkerContext(stub, compiler) for stub in stubs]
    trainer = distributed.WorkerContext(trainer_stub, compiler)
    context = SiteRoutingContext([n for n, _ in named], contexts, trainer, described['site_of'],
                                 before_clients=before_clients)
    context.federation = described
    try:
      with tff.framework.get_context_stack().install(context):
        yield context
    finally:
      context.close()
      for stub, site_context in zip(stubs, contexts):
        stub.close()
        site_context.close()
      trainer.close()


class PlainSite:
  """A site on this machine: a `worker_binary` whose working directory links `data` to DIR.

  For tests and demos (`PlainConnector`); `fedtff.execution.site` runs a site
  behind mutual TLS.

  Args:
    directory: The site data directory (`site_data.read_manifest` checks it).
    port: The worker's port; a free one by default.
  """

  def __init__(self, directory: str, *, port: Optional[int] = None):
    self.manifest = site_data.read_manifest(directory)
    self.run_dir = tempfile.mkdtemp(prefix=f'fedtff-site-{self.manifest["site"]}-')
    os.chmod(self.run_dir, 0o700)
    os.symlink(os.path.abspath(directory), os.path.join(self.run_dir, site_data.DATA_LINK))
    self.worker = runtime.WorkerProcess(port=port, cwd=self.run_dir)

  @property
  def spec(self) -> str:
    """'name=host:port', as `runtime.sites` names it."""
    return f'{self.manifest["site"]}={self.worker.address}'

  def start(self) -> 'PlainSite':
    self.worker.start()
    return self

  def stop(self) -> None:
    self.worker.stop()
    shutil.rmtree(self.run_dir, ignore_errors=True)
