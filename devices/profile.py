"""Device profiles: data only, loaded from YAML and validated strictly.

A profile says what a board is (``kind``: ``local``, ``ssh``, ``mcu``, ``labgrid`` or ``ethos-u``), how to reach it,
what runtime it is expected to have, and its limits. The backend that measures on it is
picked by ``kind`` (see :mod:`edgeprune.devices.base`). Sizes may be written ``2MB`` or
``512KiB`` (:func:`edgeprune.devices.sizes.parse_size`). Unknown keys are errors.

Where profiles come from, first match wins:

1. a path to a ``.yaml`` file (``--device ./myboard.yaml``);
2. ``search_dirs`` passed by the caller, then the folders in ``EDGEPRUNE_DEVICES_DIR``
   (``os.pathsep``-separated): a user's own profiles, which may shadow shipped ones;
3. the profiles shipped in ``edgeprune/configs/devices``.

The host (and user, port) may be overridden by the caller (``--host``) or by the
environment (``EDGEPRUNE_DEVICE_HOST``, ``EDGEPRUNE_DEVICE_USER``, ``EDGEPRUNE_DEVICE_PORT``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from edgeprune.errors import BadInput
from edgeprune.devices.sizes import parse_size

__all__ = [
    "Profile",
    "Connection",
    "RuntimeSpec",
    "Limits",
    "McuSpec",
    "EthosUSpec",
    "LabgridSpec",
    "load_profile",
    "list_profiles",
    "shipped_dir",
    "ENV_DIRS",
    "ENV_HOST",
    "ENV_USER",
    "ENV_PORT",
]

ENV_DIRS = "EDGEPRUNE_DEVICES_DIR"
ENV_HOST = "EDGEPRUNE_DEVICE_HOST"
ENV_USER = "EDGEPRUNE_DEVICE_USER"
ENV_PORT = "EDGEPRUNE_DEVICE_PORT"

KNOWN_RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


def _size(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_size(value)
    except BadInput as exc:  # pydantic wants ValueError; the loader turns it back into BadInput
        raise ValueError(exc.message.replace("size: ", "")) from None


Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


class Connection(_Strict):
    """How to reach an SSH board. Either ``host`` or ``ssh_config_alias`` (or both)."""

    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = Field(default=None, ge=1, le=65535)
    key_file: Optional[str] = None
    ssh_config_alias: Optional[str] = None
    ssh_config_file: Optional[str] = None  # default ~/.ssh/config
    known_hosts: Optional[str] = None  # default ~/.ssh/known_hosts
    trust_new_host: bool = False  # accept and record an UNKNOWN host key (a changed key is always refused)
    allow_agent: bool = True
    look_for_keys: bool = True
    connect_timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=1, le=10)  # attempts on a dropped connection / transient error
    # Board lock (devices/board_lock.py): a lock file in the board's temp dir, so two runs never
    # measure on one board at once. Wait up to lock_wait_s for a busy board (then exit 4); a lock
    # older than lock_stale_s is left by a killed run and broken (default 2 x run_timeout_s + 300 s).
    lock: bool = True
    lock_wait_s: float = Field(default=600.0, ge=0)
    lock_stale_s: Optional[float] = Field(default=None, gt=0)


class RuntimeSpec(_Strict):
    """What the board is expected to run the model with."""

    python: str = "python3"  # interpreter on the board (may be a venv's python)
    accept: list[Literal["ai_edge_litert", "tflite_runtime", "tensorflow"]] = Field(
        default_factory=lambda: list(KNOWN_RUNTIMES)
    )  # any one of these is fine; the board runner tries them in this order
    remote_tmp: Optional[str] = None  # where the work dir is made; default $TMPDIR or /tmp
    run_timeout_s: float = Field(default=300.0, gt=0)
    # edgeprune.* work dirs older than this in remote_tmp are left by killed earlier runs:
    # swept (removed) on the next connection. Only edgeprune's own, by name and age.
    stale_workdir_s: float = Field(default=3600.0, gt=0)


class Limits(_Strict):
    """The board's budget. Linux boards: flash = model-file budget, ram = RAM for the process."""

    flash_bytes: Size
    ram_bytes: Size
    latency_ms: Optional[float] = Field(default=None, gt=0)


class McuSpec(_Strict):
    """Figures for the microcontroller estimate (kind: mcu)."""

    clock_hz: int = Field(gt=0)
    cycles_per_mac: float = Field(gt=0)
    runtime_flash_bytes: Size  # TFLite-Micro + kernels + application code
    runtime_ram_bytes: Size  # stacks, heap, interpreter objects outside the tensor arena
    core: Optional[str] = None


ETHOS_U_ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                        "ethos-u65-512")


class EthosUSpec(_Strict):
    """A microcontroller with an Arm Ethos-U NPU (kind: ethos-u): every model is compiled by Arm's
    Vela compiler with these settings, and flash, SRAM and latency are Vela's estimates.

    ``accelerator_config``, ``system_config``, ``memory_mode``, ``config_file``, ``optimise`` and
    ``arena_cache_size`` are Vela's options of the same names (``vela --help``); ``config_file``
    is a Vela .ini (default ``Arm/vela.ini``, the one Vela ships). ``vela`` is the Vela command
    (default: the ``ethosu.vela`` module of the Python running edgeprune, i.e. the installed
    ``ethos-u-vela``); the environment variable ``EDGEPRUNE_VELA`` overrides it.
    """

    accelerator_config: Literal[ETHOS_U_ACCELERATORS] = "ethos-u55-128"  # type: ignore[valid-type]
    system_config: str = "Ethos_U55_High_End_Embedded"
    memory_mode: str = "Shared_Sram"
    config_file: str = "Arm/vela.ini"
    optimise: Literal["Performance", "Size"] = "Performance"
    arena_cache_size: Optional[Size] = None
    vela: Optional[str] = None  # path of a vela executable; None: python -m ethosu.vela
    runtime_flash_bytes: Size = 0  # firmware around the model (TFLite-Micro, the Ethos-U driver, application)
    runtime_ram_bytes: Size = 0  # stacks, heap, interpreter objects outside Vela's SRAM figure
    core: Optional[str] = None  # the host CPU (e.g. cortex-m55), for the report
    timeout_s: float = Field(default=600.0, gt=0)  # one Vela compilation


class LabgridSpec(_Strict):
    """A board of a labgrid farm (kind: labgrid): the coordinator and the place(s) to acquire.

    ``place`` names one place; ``tags`` (``{board: pi4}``) match every place carrying all of
    them (a farm of equal boards: ``edgeprune run`` measures on all of them at once). The SSH
    endpoint comes from the place's NetworkService resource; ``connection`` gives the rest
    (key_file, known_hosts: host keys are verified as for kind ssh).
    """

    coordinator: str = "127.0.0.1:20408"  # HOST[:PORT] of labgrid-coordinator
    place: Optional[str] = None
    tags: dict[str, str] = Field(default_factory=dict)
    acquire_timeout_s: float = Field(default=600.0, ge=0)  # wait this long for a busy place, then exit 4
    poll_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _place_or_tags(self) -> "LabgridSpec":
        if bool(self.place) == bool(self.tags):
            raise ValueError("give exactly one of 'place' (one place) or 'tags' (every place carrying them)")
        return self


class Profile(_Strict):
    name: str
    kind: Literal["local", "ssh", "mcu", "labgrid", "ethos-u"]
    description: str = ""
    connection: Optional[Connection] = None
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    threads: Optional[int] = Field(default=None, ge=1)  # None: the runtime's default
    round_to: Optional[int] = Field(default=None, ge=1)  # keep pruned widths multiples of this (SIMD width)
    max_load_per_core: float = Field(default=0.5, gt=0)  # warn when the 1-min load per CPU is above this
    limits: Limits
    mcu: Optional[McuSpec] = None
    labgrid: Optional[LabgridSpec] = None
    ethos_u: Optional[EthosUSpec] = None
    # Set for an emulated board (e.g. qemu-user): what emulates it. Its figures are then labelled
    # emulated: latency is the emulator's, peak RSS includes the emulator, CPU/memory/disk are the host's.
    emulated: Optional[str] = None
    source: Optional[str] = Field(default=None, exclude=True)  # file it was loaded from (set by the loader)

    @model_validator(mode="after")
    def _kind_fields(self) -> "Profile":
        if self.kind == "ssh":
            c = self.connection
            if c is None or not (c.host or c.ssh_config_alias):
                raise ValueError("kind 'ssh' needs connection.host or connection.ssh_config_alias")
        if self.kind == "mcu" and self.mcu is None:
            raise ValueError("kind 'mcu' needs an 'mcu' section (clock_hz, cycles_per_mac, runtime_flash_bytes, runtime_ram_bytes)")
        if self.kind != "mcu" and self.mcu is not None:
            raise ValueError(f"an 'mcu' section only applies to kind 'mcu', not {self.kind!r}")
        if self.kind not in ("ssh", "labgrid") and self.connection is not None:
            raise ValueError(f"a 'connection' section only applies to kind 'ssh' or 'labgrid', not {self.kind!r}")
        if (self.kind == "ethos-u") != (self.ethos_u is not None):
            raise ValueError("kind 'ethos-u' needs an 'ethos_u' section (accelerator_config, system_config, memory_mode), "
                             "and only it has one")
        if (self.kind == "labgrid") != (self.labgrid is not None):
            raise ValueError("kind 'labgrid' needs a 'labgrid' section (coordinator, place or tags), and only it has one")
        if self.kind == "labgrid" and self.connection is not None and (self.connection.host or self.connection.port
                                                                      or self.connection.ssh_config_alias):
            raise ValueError("kind 'labgrid' takes the board's address and port from the place's NetworkService: "
                             "remove connection.host/port/ssh_config_alias")
        return self

    @property
    def host(self) -> Optional[str]:
        if self.connection is None:
            return None
        return self.connection.host or self.connection.ssh_config_alias


# --------------------------------------------------------------------------- loading
def shipped_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "devices"


def _search_dirs(search_dirs) -> list[Path]:
    """The folders profiles are looked up in: --devices-dir, then $EDGEPRUNE_DEVICES_DIR, then the
    shipped ones. A folder the user named that is not there is bad input, never skipped silently
    (a typo would otherwise list or pick the shipped profile of the same name)."""
    dirs: list[Path] = []
    for d in search_dirs or ():
        dirs.append(_existing_dir(Path(d).expanduser(), "--devices-dir", "give an existing folder of .yaml profiles"))
    env = os.environ.get(ENV_DIRS, "")
    for d in env.split(os.pathsep):
        if d.strip():
            dirs.append(_existing_dir(Path(d.strip()).expanduser(), f"${ENV_DIRS}",
                                      f"fix or unset ${ENV_DIRS} (folders separated by '{os.pathsep}')"))
    dirs.append(shipped_dir())
    return dirs


def _existing_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise BadInput(f"{what}: {path} is not a folder" if path.exists() else f"{what}: folder {path} does not exist", fix)
    return path


def _profile_files(dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
            found.setdefault(f.stem, f)  # earlier folders shadow later ones
    return found


def list_profiles(search_dirs=None) -> list[Profile]:
    """Every profile reachable by name (user folders first, then shipped), sorted by name."""
    out = []
    for name, path in sorted(_profile_files(_search_dirs(search_dirs)).items()):
        out.append(_load_file(path, default_name=name))
    return out


def _fmt_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _load_file(path: Path, *, default_name: str) -> Profile:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read device profile {path}: {exc.strerror or exc}", "check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"device profile {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"device profile {path} must be a mapping of keys, got {type(data).__name__}",
                       "see the shipped profiles in edgeprune/configs/devices for the layout")
    data.setdefault("name", default_name)
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = _fmt_loc(e.get("loc", ()))
            if e.get("type") == "extra_forbidden":
                problems.append(f"unknown key '{loc}'")
            elif e.get("type") == "missing":
                problems.append(f"missing key '{loc}'")
            else:
                msg = e.get("msg", "").removeprefix("Value error, ")
                problems.append(f"'{loc}': {msg}" if loc != "(top level)" else msg)
        raise BadInput(
            f"device profile {path}: " + "; ".join(problems),
            "fix or remove the key(s) named; allowed keys are in the shipped profiles (edgeprune/configs/devices)",
        ) from None
    prof.source = str(path)
    return prof


def load_profile(
    name_or_path: str | os.PathLike,
    *,
    search_dirs=None,
    host: Optional[str] = None,
    user: Optional[str] = None,
    port: Optional[int] = None,
) -> Profile:
    """Load and validate a device profile by shipped/user name or by path to a .yaml file.

    ``host``/``user``/``port`` (or ``EDGEPRUNE_DEVICE_HOST``/``_USER``/``_PORT``) override the
    profile's connection; arguments beat the environment. Raises BadInput for an unknown
    device (listing the known ones), an unreadable file, or a validation error (file + field).
    """
    text = os.fspath(name_or_path)
    as_path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or os.sep in text or as_path.is_file():
        if not as_path.is_file():
            raise BadInput(f"device profile file {as_path} does not exist", "check the path, or pass a device name (edgeprune devices list)")
        prof = _load_file(as_path, default_name=as_path.stem)
    else:
        files = _profile_files(_search_dirs(search_dirs))
        if text not in files:
            known = ", ".join(sorted(files)) or "(none)"
            raise BadInput(
                f"unknown device {text!r}; known devices: {known}",
                f"pick one of those, pass a path to a .yaml profile, or add {text}.yaml to a folder named in ${ENV_DIRS}",
            )
        prof = _load_file(files[text], default_name=text)

    # Overrides: explicit arguments, then the environment.
    explicit = any(v is not None for v in (host, user, port))
    host = host if host is not None else os.environ.get(ENV_HOST) or None
    user = user if user is not None else os.environ.get(ENV_USER) or None
    if port is None and os.environ.get(ENV_PORT):
        try:
            port = int(os.environ[ENV_PORT])
        except ValueError:
            raise BadInput(f"${ENV_PORT}={os.environ[ENV_PORT]!r} is not a port number", "set it to e.g. 22") from None
    if any(v is not None for v in (host, user, port)):
        if prof.kind != "ssh":
            if explicit:
                raise BadInput(f"--host/--user/--port apply to SSH devices; {prof.name!r} is kind {prof.kind!r}",
                               "drop the option, or pick an SSH device (edgeprune devices list)")
            return prof  # environment overrides are meant for SSH boards; ignore them here
        conn = prof.connection.model_copy()
        try:
            if host is not None:
                conn.host = host
            if user is not None:
                conn.user = user
            if port is not None:
                conn.port = int(port)
        except ValidationError as exc:
            raise BadInput(f"bad connection override: {exc.errors()[0].get('msg')}", "pass a port between 1 and 65535") from None
        prof = prof.model_copy(update={"connection": conn})
    return prof
