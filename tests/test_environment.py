"""The environment is declared in three files that must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> tuple[list[str], list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    return [_name(d) for d in project["dependencies"]], [_name(d) for d in project["optional-dependencies"]["dev"]]


def _environment_pip() -> list[str]:
    names, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and not stripped.startswith("- -"):
            names.append(_name(stripped[2:]))
    return names


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock line is not pinned exactly: {line!r}"
            pins[_name(name)] = version
    return pins


def test_environment_yml_mirrors_pyproject():
    runtime, dev = _pyproject()
    assert _environment_pip() == runtime + dev


def test_lock_pins_every_declared_dependency():
    runtime, dev = _pyproject()
    lock = _lock()
    missing = [n for n in runtime + dev if n not in lock]
    assert not missing, f"requirements.lock lacks {missing}; run `make lock`"


def test_lock_resolves_the_known_traps():
    lock = _lock()
    assert lock["trdg"] == "1.8.0"
    assert int(lock["python-bidi"].split(".")[1]) >= 5 or int(lock["python-bidi"].split(".")[0]) >= 1
    assert int(lock["setuptools"].split(".")[0]) < 81  # arabic_reshaper imports pkg_resources
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


def test_installed_environment_has_no_trap():
    from tficlib import compat

    compat.check_environment()
    from PIL import ImageFont

    assert hasattr(ImageFont.FreeTypeFont, "getsize")
