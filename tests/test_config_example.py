"""ccn.toml.example documents every key of the configuration, and is itself a valid config."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from ccn_node.config import Config, config_from_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "ccn.toml.example"


def _keys(struct: type, prefix: str = "") -> list[str]:
    out = []
    for field in msgspec.structs.fields(struct):
        if field.name == "source":
            continue
        name = f"{prefix}{field.name}"
        inner = field.type
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            out += _keys(inner, name + ".")
        else:
            out.append(name)
    return out


def test_example_parses_as_a_config() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    config_from_dict(data, str(EXAMPLE))


def test_every_key_is_documented() -> None:
    text = EXAMPLE.read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        m = re.match(r"^\[+([\w.]+?)(?:\.\"[^\"]*\")?\]+", stripped)
        if m:
            current = m.group(1)
            parent, _, child = current.rpartition(".")
            sections.setdefault(parent, set()).add(child)  # [[federation.peers]], [model.pricing."x"]
            continue
        m = re.match(r"^([A-Za-z_]\w*)\s*=", stripped)
        if m:
            sections.setdefault(current, set()).add(m.group(1))
    missing = []
    for key in _keys(Config):
        section, _, name = key.rpartition(".")
        if name not in sections.get(section, set()):
            missing.append(key)
    assert not missing, f"undocumented in ccn.toml.example: {missing}"
