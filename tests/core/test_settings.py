"""core.settings: YAML + environment, precedence, one-line errors, and the documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from core.settings import ConfigError, Settings, iter_options, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ONEGATE_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "onegate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_embedded() -> None:
    settings = load_settings()
    assert settings.kv.backend == "memory"
    assert settings.database.url is None
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.database_url.endswith("/var/onegate.db")
    assert settings.web.default_locale == "zh_CN"
    assert settings.keyvault.signing_alg == "ES256"


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\nkv:\n  backend: redis\n")
    assert load_settings(path).server.port == 9000
    monkeypatch.setenv("ONEGATE_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert (settings.server.port, settings.server.host, settings.kv.backend) == (9100, "0.0.0.0", "redis")
    settings = load_settings(path, overrides={"server.port": 9200, "data_dir": tmp_path})
    assert settings.server.port == 9200
    assert settings.data_dir == tmp_path
    assert settings.kv.backend == "redis"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEGATE_CONFIG", str(write(tmp_path, "keyvault:\n  suite: gm\n")))
    assert load_settings().keyvault.suite == "gm"


def test_list_option_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEGATE_SERVER__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    assert load_settings().server.trusted_proxies == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("server:\n  prot: 1\n", "unknown option 'server.prot'"),
        ("colour: blue\n", "unknown option 'colour'"),
        ("server:\n  port: [1\n", "line 3, column 1"),
        ("server: {port: 70000}\n", "option 'server.port'"),
        ("kv:\n  backend: memcached\n", "option 'kv.backend'"),
        ("database:\n  url: mysql://x\n", "option 'database.url'"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_unknown_environment_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEGATE_DATABSE__URL", "x")
    with pytest.raises(ConfigError, match="ONEGATE_DATABSE__URL"):
        load_settings()


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEGATE_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match="option 'server.port' \\(environment\\)"):
        load_settings()


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def _documented() -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `([a-z_.]+)` \| `(ONEGATE_[A-Z_]+)` \| `([^`]*)` \|", DOC.read_text(), re.M)
    return {name: (env, default) for name, env, default in rows}


def _default(field: object) -> str:
    value = field.default  # type: ignore[attr-defined]
    if value is PydanticUndefined:
        value = field.default_factory()  # type: ignore[attr-defined]
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else str(value)


def test_documentation_lists_exactly_the_options_with_their_defaults() -> None:
    documented = _documented()
    model = {
        name: (f"ONEGATE_{name.replace('.', '__').upper()}", _default(field))
        for name, field in iter_options(Settings)
    }
    assert set(documented) == set(model), "docs/configuration.md and core/settings.py name different options"
    for name, (env, default) in model.items():
        assert documented[name] == (env, default), f"docs/configuration.md is wrong about {name}"


def test_the_deployment_example_is_valid() -> None:
    example = DOC.parents[1] / "deploy" / "onegate.example.yaml"
    settings = load_settings(example)
    assert settings.kv.backend == "redis"
    assert settings.server.https is True
    assert settings.database_url.startswith("postgresql+asyncpg://")
