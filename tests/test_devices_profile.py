"""Device profiles and sizes: strict validation, clear BadInput errors, overrides."""
from __future__ import annotations

import pytest

from edgeprune.cli import run_cli
from edgeprune.devices.profile import ENV_DIRS, ENV_HOST, ENV_PORT, list_profiles, load_profile
from edgeprune.devices.sizes import parse_size
from edgeprune.errors import BadInput

SHIPPED = {"local", "pi4", "pi5", "pi-zero-2w", "stm32h7", "nrf52840", "esp32-s3"}


@pytest.mark.parametrize("text,expected", [
    ("2MB", 2_000_000), ("512KiB", 524_288), ("300kB", 300_000), ("2 MiB", 2_097_152),
    ("1.5MB", 1_500_000), ("4096", 4096), (4096, 4096), ("8 MB", 8_000_000), ("1GiB", 2**30), ("2mb", 2_000_000),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2 parsecs", "", "abc", "-1MB", "1.5", "2 MBs of", "3 bananas", True])
def test_parse_size_rejects(text):
    with pytest.raises(BadInput) as exc:
        parse_size(text)
    assert exc.value.hint and "512KiB" in exc.value.hint


def test_shipped_profiles_load():
    profiles = {p.name: p for p in list_profiles()}
    assert SHIPPED <= set(profiles)
    assert profiles["stm32h7"].limits.flash_bytes == 2 * 2**20
    assert profiles["stm32h7"].mcu.clock_hz == 480_000_000
    assert profiles["nrf52840"].limits.ram_bytes == 256 * 1024
    assert profiles["esp32-s3"].limits.flash_bytes == 8 * 2**20
    for name in ("pi4", "pi5", "pi-zero-2w"):
        assert profiles[name].kind == "ssh" and profiles[name].connection.host
    for name in ("stm32h7", "nrf52840", "esp32-s3"):
        m = profiles[name].mcu
        assert m.cycles_per_mac > 0 and m.runtime_flash_bytes > 0 and m.runtime_ram_bytes > 0


def test_unknown_device_lists_known():
    with pytest.raises(BadInput) as exc:
        load_profile("pi9")
    assert "pi9" in exc.value.message and "pi4" in exc.value.message and "stm32h7" in exc.value.message


def _write(tmp_path, name, text):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


GOOD = """kind: ssh
connection: {host: board.local, user: me}
limits: {flash_bytes: 2MB, ram_bytes: 512KiB}
"""


def test_unknown_key_named_with_file(tmp_path):
    p = _write(tmp_path, "b", GOOD + "colour: blue\n")
    with pytest.raises(BadInput) as exc:
        load_profile(str(p))
    assert "colour" in exc.value.message and str(p) in exc.value.message
    p = _write(tmp_path, "c", GOOD.replace("user: me", "user: me, pasword: x"))
    with pytest.raises(BadInput) as exc:
        load_profile(str(p))
    assert "connection.pasword" in exc.value.message


def test_bad_size_named(tmp_path):
    p = _write(tmp_path, "b", GOOD.replace("2MB", "2 parsecs"))
    with pytest.raises(BadInput) as exc:
        load_profile(p)
    assert "limits.flash_bytes" in exc.value.message and "parsecs" in exc.value.message


def test_kind_requirements(tmp_path):
    p = _write(tmp_path, "m", "kind: mcu\nlimits: {flash_bytes: 1MiB, ram_bytes: 256KiB}\n")
    with pytest.raises(BadInput) as exc:
        load_profile(p)
    assert "mcu" in exc.value.message
    p = _write(tmp_path, "s", "kind: ssh\nlimits: {flash_bytes: 1MiB, ram_bytes: 256KiB}\n")
    with pytest.raises(BadInput):
        load_profile(p)
    p = _write(tmp_path, "k", GOOD.replace("kind: ssh", "kind: serial"))
    with pytest.raises(BadInput) as exc:
        load_profile(p)
    assert "kind" in exc.value.message


def test_user_folder_and_overrides(tmp_path, monkeypatch):
    _write(tmp_path, "myboard", GOOD)
    _write(tmp_path, "pi4", GOOD.replace("board.local", "shadow.local"))
    monkeypatch.setenv(ENV_DIRS, str(tmp_path))
    assert load_profile("myboard").connection.host == "board.local"
    assert load_profile("pi4").connection.host == "shadow.local"  # user folders shadow shipped ones
    assert "myboard" in {p.name for p in list_profiles()}
    monkeypatch.setenv(ENV_HOST, "10.0.0.7")
    monkeypatch.setenv(ENV_PORT, "2222")
    prof = load_profile("myboard")
    assert (prof.connection.host, prof.connection.port) == ("10.0.0.7", 2222)
    prof = load_profile("myboard", host="10.0.0.8", user="pi")  # arguments beat the environment
    assert (prof.connection.host, prof.connection.user) == ("10.0.0.8", "pi")
    assert load_profile("stm32h7").kind == "mcu"  # env overrides ignored for non-SSH kinds
    with pytest.raises(BadInput):
        load_profile("stm32h7", host="x")  # but an explicit --host there is an error


def test_search_dirs_parameter(tmp_path):
    _write(tmp_path, "mine", GOOD)
    assert load_profile("mine", search_dirs=[tmp_path]).name == "mine"


def test_cli_devices_list_and_errors(tmp_path, capsys):
    assert run_cli(["devices", "list"]) == 0
    text = capsys.readouterr().out
    for name in SHIPPED:
        assert name in text
    assert run_cli(["devices", "check", "nope"]) == 2
    bad = _write(tmp_path, "bad", GOOD + "extra_key: 1\n")
    assert run_cli(["bench", str(bad), "--device", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "extra_key" in err


def test_a_named_profile_folder_that_is_not_there_is_bad_input(tmp_path, monkeypatch, capsys):
    """--devices-dir or $EDGEPRUNE_DEVICES_DIR naming a missing folder (a typo) is exit 2, never
    skipped silently: the shipped profile of the same name would be listed or used instead."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(BadInput, match="does not exist"):
        list_profiles([missing])
    assert run_cli(["devices", "list", "--devices-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --devices-dir: folder") and "fix:" in err
    monkeypatch.setenv(ENV_DIRS, str(missing))
    assert run_cli(["devices", "list"]) == 2
    assert f"${ENV_DIRS}" in capsys.readouterr().err
    with pytest.raises(BadInput, match="does not exist"):
        load_profile("pi4")
    _write(tmp_path, "mine", GOOD)
    monkeypatch.setenv(ENV_DIRS, f"{tmp_path}:")  # an empty entry is no folder named: skipped
    assert load_profile("mine").name == "mine"
