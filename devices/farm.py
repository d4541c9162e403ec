"""A farm of equal boards for parallel measurement: the board pool and the abort flag.

``board_pool`` turns the ``--device`` profiles of a run into boards, one per physical
board: a kind-labgrid profile with ``tags`` becomes one profile per matching place (asked of
the coordinator); kind-ssh profiles stay as they are. The boards must be of one type (same
limits, threads and runtime settings): a measurement on any of them stands for all.

``abort()`` (set on Ctrl-C by the parallel device phase) makes every wait for a busy board
(board lock, labgrid place) give up at its next poll.
"""
from __future__ import annotations

from edgeprune.errors import BadInput
from edgeprune.devices.profile import Profile

def board_id(p: Profile) -> str:
    """Where a board is: ``user@host:port`` (ssh) or ``labgrid:COORDINATOR/PLACE``."""
    if p.kind == "labgrid":
        spec = p.labgrid
        what = spec.place or ",".join(f"{k}={v}" for k, v in sorted(spec.tags.items()))
        return f"labgrid:{spec.coordinator}/{what}"
    conn = p.connection
    if conn is not None:
        return f"{conn.user or ''}@{conn.host or conn.ssh_config_alias}:{conn.port or 22}"
    return p.kind


def _same_type(a: Profile, b: Profile) -> None:
    for what, x, y in (("limits", a.limits, b.limits), ("threads", a.threads, b.threads),
                       ("runtime.accept", a.runtime.accept, b.runtime.accept)):
        if x != y:
            raise BadInput(f"devices {a.name!r} and {b.name!r} differ in {what} ({x} vs {y}): boards measured "
                           f"in parallel must be of one type, so that a measurement on one stands for all",
                           "give several --device only for equal boards (same profile apart from the connection)")


def board_pool(profiles: list[Profile]) -> list[Profile]:
    """The boards of a run: labgrid tags expanded to places; checked to be one type, no duplicates."""
    if len(profiles) == 1 and not (profiles[0].kind == "labgrid" and profiles[0].labgrid.tags):
        return list(profiles)
    boards: list[Profile] = []
    for p in profiles:
        if p.kind == "labgrid":
            from edgeprune.devices.labgrid import place_profiles

            boards += place_profiles(p)
        elif p.kind == "ssh":
            boards.append(p)
        else:
            raise BadInput(f"device {p.name!r} is kind {p.kind!r}: only SSH and labgrid boards are measured in parallel",
                           "give one --device for a local or microcontroller profile")
    seen: dict[str, str] = {}
    for b in boards:
        where = board_id(b)
        if where in seen:
            raise BadInput(f"devices {seen[where]!r} and {b.name!r} are the same board ({where})",
                           "give each board once")
        seen[where] = b.name
        _same_type(boards[0], b)
    return boards
