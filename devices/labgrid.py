"""Backend ``labgrid``: a board of a labgrid farm, measured over the paramiko SSH backend.

A profile of kind ``labgrid`` names the coordinator and a place (or tags matching several
places, see :class:`edgeprune.devices.profile.LabgridSpec`). Opening the device:

1. connects to ``labgrid-coordinator`` (gRPC, labgrid's own client session; labgrid is
   imported here only, lazily);
2. ACQUIRES the place (board locking: other labgrid users and other edgeprune runs cannot
   take it). A busy place is waited for, polling, with a visible message naming the holder,
   up to ``labgrid.acquire_timeout_s``; then :class:`DeviceError` (exit 4). With tags, the
   first free matching place is taken;
3. reads the SSH endpoint (address, port, username) from the place's ``NetworkService``
   resource and opens an :class:`~edgeprune.devices.ssh.SshDevice` to it with the profile's
   ``connection`` (key_file, known_hosts): host keys are VERIFIED. labgrid's own SSHDriver is
   not used: it turns host-key checking off.

``close()`` closes the SSH session and RELEASES the place, on every path: errors, Ctrl-C
(``KeyboardInterrupt`` unwinds through the context manager) and a failed acquire. The
release names us (``fromuser``), so it never releases a place someone else holds. Our
client name is ``HOST/USER+edgeprune-PID``: ``labgrid-client who`` shows which run holds it.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import time
from typing import Callable, Optional

from edgeprune.errors import BadInput, DeviceError
from edgeprune.devices.base import Device, RunResult, register
from edgeprune.devices.profile import Profile

log = logging.getLogger("edgeprune.devices.labgrid")

CONNECT_TIMEOUT_S = 15.0
_CHANNEL_OPTIONS = [  # labgrid's client keepalive settings, plus a subchannel pool per session
    ("grpc.keepalive_time_ms", 7500),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]


def _labgrid():
    try:
        from labgrid.remote import client as lg_client
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
    except ImportError as exc:  # pragma: no cover - labgrid is a declared dependency
        raise DeviceError(f"labgrid is not installed ({exc})", "pip install 'labgrid>=26,<27'") from None
    return lg_client, pb2


class _QuietLabgrid(logging.Filter):
    """labgrid's client logs connection trouble on the ROOT logger ("ERROR:root:coordinator is
    unavailable ..."); edgeprune reports it as one DeviceError with the fix instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}labgrid{os.sep}" not in (record.pathname or "")


_QUIET = _QuietLabgrid()


class _QuietGrpcPoller(logging.Filter):
    """gRPC's asyncio poller may call back into a coordinator session's event loop after it was
    closed (seen when a SIGTERM ends a run mid-measurement); asyncio then logs "Exception in
    callback PollerCompletionQueue._handle_events ... Event loop is closed" WITH a traceback on
    stderr. It is harmless (the session is over) and is dropped: no traceback on the screen."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        return not ("PollerCompletionQueue" in text or (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)))


_QUIET_POLLER = _QuietGrpcPoller()


class Coordinator:
    """One client session to labgrid-coordinator, with its own event loop.

    Use it from ONE thread (each board's worker opens its own)."""

    def __init__(self, address: str, *, name: str = "labgrid"):
        lg_client, self.pb2 = _labgrid()
        grpc = lg_client.grpc  # labgrid's own gRPC (a dependency of labgrid, not imported by edgeprune)
        if _QUIET not in logging.getLogger().filters:
            logging.getLogger().addFilter(_QUIET)
        if _QUIET_POLLER not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_QUIET_POLLER)
        self.grpc = grpc
        self.address = address
        self.name = name
        self.session = None  # set once the client session is made (close() before that: nothing to stop)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        me = f"{getpass.getuser()}+edgeprune-{os.getpid()}"

        class Session(lg_client.ClientSession):
            def __attrs_post_init__(self):
                super().__attrs_post_init__()
                # A connection of its own: gRPC shares one per target in a process by default, and
                # the coordinator refuses a second client stream from the same peer (two boards'
                # sessions at once in a parallel run).
                self.channel = grpc.aio.insecure_channel(target=self.address, options=_CHANNEL_OPTIONS)
                self.stub = type(self.stub)(self.channel)

            def getuser(self):  # a name per process: our release never frees another run's place
                return me

            def gethostname(self):
                return os.environ.get("LG_HOSTNAME", socket.gethostname())

        addr = address if ":" in address else f"{address}:20408"
        self.session = Session(addr, self.loop)
        self.me = f"{self.session.gethostname()}/{me}"
        self.attempted: set[str] = set()  # places we asked for (an interrupted request may have gone through)
        try:
            self._run(self.session.start(), timeout=CONNECT_TIMEOUT_S)
        except BaseException as exc:
            self.close()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise DeviceError(f"{name}: cannot reach the labgrid coordinator at {address}: {type(exc).__name__}: {exc}",
                              "check labgrid-coordinator runs there (labgrid.coordinator in the profile, HOST:PORT)") from None

    def _run(self, coro, timeout: Optional[float] = 30.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout) if timeout else coro)

    def sync(self) -> None:
        self._run(self.session.sync_with_coordinator())

    def places(self) -> dict:
        return dict(self.session.places)

    def match(self, spec) -> list[str]:
        """The place names a LabgridSpec names: its place, or every place carrying all its tags."""
        places = self.places()
        if spec.place:
            if spec.place not in places:
                raise DeviceError(f"{self.name}: no place {spec.place!r} on the labgrid coordinator {self.address}; "
                                  f"places there: {', '.join(sorted(places)) or '(none)'}",
                                  f"fix labgrid.place, or create it: labgrid-client -x {self.address} -p {spec.place} create")
            return [spec.place]
        found = sorted(n for n, p in places.items() if all(p.tags.get(k) == v for k, v in spec.tags.items()))
        if not found:
            want = ", ".join(f"{k}={v}" for k, v in spec.tags.items())
            raise DeviceError(f"{self.name}: no place on the labgrid coordinator {self.address} has the tags {want}",
                              f"fix labgrid.tags, or tag places: labgrid-client -x {self.address} -p PLACE set-tags {want}")
        return found

    def holder(self, place: str) -> Optional[str]:
        p = self.session.places.get(place)
        return p.acquired if p is not None else None

    def try_acquire(self, place: str) -> Optional[str]:
        """None when acquired, else why not (who holds it)."""
        self.attempted.add(place)
        try:
            self._run(self.session.stub.AcquirePlace(self.pb2.AcquirePlaceRequest(placename=place)))
        except self.grpc.aio.AioRpcError as exc:
            self.sync()
            return self.holder(place) or exc.details()
        self.sync()
        return None

    def release(self, place: str) -> None:
        """Release ``place`` if WE hold it (fromuser): never another's. Never raises."""
        try:
            self._run(self.session.stub.ReleasePlace(self.pb2.ReleasePlaceRequest(placename=place, fromuser=self.me)))
            log.info("%s: released labgrid place %s", self.name, place)
        except Exception as exc:
            log.warning("%s: could not release the labgrid place %s: %s; release it with "
                        "`labgrid-client -x %s -p %s release --kick`", self.name, place, exc, self.address, place)

    def endpoint(self, place: str) -> tuple[str, Optional[int], Optional[str]]:
        """(address, port, username) of the acquired place's NetworkService resource."""
        p = self.session.places[place]
        try:
            resources = self.session.get_target_resources(p)
        except Exception as exc:
            raise DeviceError(f"{self.name}: cannot read the resources of place {place}: {exc}",
                              "check the place's exporter is running (labgrid-client resources)") from None
        for (_, cls), res in resources.items():
            if cls == "NetworkService":
                if not res.avail:
                    raise DeviceError(f"{self.name}: the NetworkService of place {place} is not available",
                                      "check the exporter of that board runs")
                args = res.args
                return str(args["address"]), (int(args["port"]) if args.get("port") else None), args.get("username")
        raise DeviceError(f"{self.name}: place {place} has no NetworkService resource (the board's SSH endpoint)",
                          f"export one (NetworkService: address, username, port) and add it: labgrid-client -x "
                          f"{self.address} -p {place} add-match 'EXPORTER/GROUP/NetworkService'")

    def close(self) -> None:
        try:
            if self.session is not None and getattr(self.session, "pump_task", None) is not None:
                self.loop.run_until_complete(self.session.stop())
            if self.session is not None:
                self.loop.run_until_complete(self.session.close())
        except BaseException:
            pass
        finally:
            self.loop.close()
            asyncio.set_event_loop(None)


def acquire_place(coord: Coordinator, profile: Profile, *, aborted: Callable[[], bool] = lambda: False) -> str:
    """Acquire the profile's place (or the first free one matching its tags), waiting while busy."""
    spec = profile.labgrid
    names = coord.match(spec)
    t0 = time.monotonic()
    told = False
    while True:
        busy = {}
        for name in names:
            why = coord.try_acquire(name)
            if why is None:
                if told:
                    log.warning("%s: acquired labgrid place %s after waiting %.1f s", profile.name, name, time.monotonic() - t0)
                else:
                    log.info("%s: acquired labgrid place %s", profile.name, name)
                return name
            busy[name] = why
        waited = time.monotonic() - t0
        who = ", ".join(f"{n} by {h}" for n, h in busy.items())
        if not told:
            log.warning("%s: labgrid place%s busy (acquired: %s); waiting up to %g s",
                        profile.name, " is" if len(busy) == 1 else "s are all", who, spec.acquire_timeout_s)
            told = True
        if waited >= spec.acquire_timeout_s or aborted():
            first = next(iter(busy))
            raise DeviceError(
                f"{profile.name}: labgrid place{'' if len(busy) == 1 else 's'} still busy after waiting {waited:.0f} s "
                f"(acquired: {who})",
                f"wait for that job (labgrid-client -x {spec.coordinator} who), raise labgrid.acquire_timeout_s, or, "
                f"if the holder is gone, release it: labgrid-client -x {spec.coordinator} -p {first} release --kick",
            )
        coord._run(asyncio.sleep(min(spec.poll_s, max(0.05, spec.acquire_timeout_s - waited))), timeout=None)


def ssh_profile(profile: Profile, place: str, address: str, port: Optional[int], user: Optional[str]) -> Profile:
    """The kind-ssh profile of one place: its NetworkService endpoint + the profile's connection."""
    data = profile.model_dump(exclude={"labgrid", "source"})
    conn = dict(data.get("connection") or {})
    conn.update(host=address, port=port or 22)
    if user:
        conn["user"] = user
    name = profile.name if profile.name.endswith("@" + place) else f"{profile.name}@{place}"
    data.update(kind="ssh", name=name, connection=conn)
    return Profile.model_validate(data)


def place_profiles(profile: Profile) -> list[Profile]:
    """One kind-labgrid profile per place the profile names (tags expanded on the coordinator)."""
    coord = Coordinator(profile.labgrid.coordinator, name=profile.name)
    try:
        names = coord.match(profile.labgrid)
    finally:
        coord.close()
    out = []
    for name in names:
        spec = profile.labgrid.model_copy(update={"place": name, "tags": {}})
        p = profile.model_copy(update={"labgrid": spec, "name": f"{profile.name}@{name}" if profile.labgrid.tags else profile.name})
        p.source = profile.source
        out.append(p)
    return out


def check_coordinator(profile: Profile) -> list[str]:
    """Fail fast (exit 4): the coordinator answers and the place(s) exist. Acquires nothing."""
    coord = Coordinator(profile.labgrid.coordinator, name=profile.name)
    try:
        return coord.match(profile.labgrid)
    finally:
        coord.close()


@register("labgrid")
class LabgridDevice(Device):
    """A held labgrid place + an SSH session to its board; close() releases the place."""

    def __init__(self, profile: Profile):
        super().__init__(profile)
        if profile.labgrid is None:
            raise BadInput(f"{profile.name}: kind labgrid needs a 'labgrid' section", "see README: board farms")
        from edgeprune.devices import interrupt
        from edgeprune.devices.ssh import SshDevice

        self.coord: Optional[Coordinator] = None
        self.place: Optional[str] = None
        self.inner: Optional[SshDevice] = None
        self._closed = False
        self.coord = Coordinator(profile.labgrid.coordinator, name=profile.name)
        try:
            self.place = acquire_place(self.coord, profile, aborted=interrupt.aborting)
            address, port, user = self.coord.endpoint(self.place)
            self.endpoint = (address, port, user)
            self.inner = SshDevice(ssh_profile(profile, self.place, address, port, user))
        except BaseException:
            self.close()
            raise

    # -- the protocol: the SSH session does the work ----------------------------
    def python(self) -> str:
        return self.inner.python()

    def put(self, local_path, remote_name: str) -> str:
        return self.inner.put(local_path, remote_name)

    def run(self, argv, timeout: float) -> RunResult:
        return self.inner.run(argv, timeout)

    def get(self, remote_name: str) -> bytes:
        return self.inner.get(remote_name)

    def bench(self, tflite_path, config):
        m = self.inner.bench(tflite_path, config)
        address, port, user = self.endpoint
        m.kind = "labgrid"
        m.extra["labgrid"] = {"coordinator": self.profile.labgrid.coordinator, "place": self.place,
                              "address": address, "port": port}
        return m

    def check(self) -> dict:
        info = self.inner.check()
        info["labgrid_place"] = self.place
        return info

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        from edgeprune.devices.interrupt import shielded

        # The SSH session first (it ends the board's runner and waits until it is gone), then the
        # place: never released while anything of ours still runs on the board.
        with shielded(self.profile.name):
            try:
                if self.inner is not None:
                    self.inner.close()
            finally:
                if self.coord is not None:
                    for place in sorted(self.coord.attempted):  # ours only (fromuser): also after Ctrl-C mid-request
                        self.coord.release(place)
                    self.coord.close()
