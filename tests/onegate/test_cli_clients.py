"""`onegate client ...` in a subprocess, as an operator would run it, checked against the registry."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from core.settings import load_settings
from idp.clients import AuthMethod, ClientRegistry, RegisteredClient
from keyvault.jws import ES256, b64url_encode
from onegate.runtime import open_runtime
from tests.onegate.conftest import ONEGATE, Run, clean_env

OA = "https://oa.example.gov.cn/oidc/callback"


@pytest.fixture
def initialised(onegate: Run, data_dir: Path) -> Path:
    result = onegate("init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


@pytest.fixture(scope="module")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised data dir for tests that must leave it unchanged."""
    data_dir = tmp_path_factory.mktemp("shared") / "data"
    init = [*ONEGATE, "init", "--data-dir", str(data_dir)]
    result = subprocess.run(init, capture_output=True, text=True, env=clean_env(), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return data_dir


def client_cmd(onegate: Run, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return onegate("client", *args, "--data-dir", str(data_dir))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onegate: ") and "Traceback" not in result.stderr
    return lines[0]


async def _lookup(
    data_dir: Path, client_id: str, *secrets: str | None
) -> tuple[RegisteredClient | None, list[bool]]:
    """The client as the server would load it, and whether each secret verifies."""
    runtime = await open_runtime(load_settings(None, overrides={"data_dir": data_dir}))
    try:
        registry = ClientRegistry(runtime.sessions, runtime.vault.secrets)
        client = await registry.get(client_id)
        return client, [registry.verify_secret(client, s) for s in secrets]
    finally:
        await runtime.close()


def lookup(
    data_dir: Path, client_id: str, *secrets: str | None
) -> tuple[RegisteredClient | None, list[bool]]:
    return asyncio.run(_lookup(data_dir, client_id, *secrets))


def test_add_show_list_rotate_remove(onegate: Run, initialised: Path) -> None:
    added = client_cmd(
        onegate,
        initialised,
        "add",
        "--json",
        "--client-id",
        "oa-app",
        "--name",
        "协同办公系统",
        "--name-en",
        "Office automation",
        "--redirect-uri",
        OA,
        "--redirect-uri",
        "http://oa.localhost:8000/cb",
        "--post-logout-redirect-uri",
        "https://oa.example.gov.cn/",
        "--backchannel-logout-uri",
        "https://oa.example.gov.cn/oidc/backchannel-logout",
        "--scope",
        "openid",
        "--scope",
        "profile",
        "--scope",
        "groups",
        "--access-token-lifetime",
        "300",
    )
    assert added.returncode == 0, added.stderr
    record = json.loads(added.stdout)
    assert record["client_id"] == "oa-app" and record["name"] == "协同办公系统"
    secret = record["client_secret"]
    assert isinstance(secret, str) and len(secret) >= 43
    assert "secret_hash" not in record

    client, verified = lookup(initialised, "oa-app", secret, secret + "x", "")
    assert verified == [True, False, False]
    assert client is not None
    assert client.redirect_uris == (OA, "http://oa.localhost:8000/cb")
    assert client.scopes == ("openid", "profile", "groups")
    assert client.grant_types == ("authorization_code", "refresh_token")
    assert client.token_endpoint_auth_method is AuthMethod.CLIENT_SECRET_BASIC
    assert client.access_token_lifetime == 300
    assert secret.encode() not in (initialised / "onegate.db").read_bytes()

    shown = client_cmd(onegate, initialised, "show", "oa-app")
    assert shown.returncode == 0, shown.stderr
    assert "协同办公系统" in shown.stdout and OA in shown.stdout
    shown_json = json.loads(client_cmd(onegate, initialised, "show", "oa-app", "--json").stdout)
    assert shown_json["has_secret"] is True
    listed = client_cmd(onegate, initialised, "list")
    assert "oa-app" in listed.stdout and "协同办公系统" in listed.stdout and "active" in listed.stdout
    listed_json = client_cmd(onegate, initialised, "list", "--json")
    assert [c["client_id"] for c in json.loads(listed_json.stdout)] == ["oa-app"]
    assert client is not None and client.secret_hash is not None
    for output in (shown.stdout, shown_json, listed.stdout, listed_json.stdout):
        assert secret not in str(output) and client.secret_hash not in str(output)
        assert "client_secret:" not in str(output) and "'client_secret'" not in str(output)
        assert '"client_secret"' not in str(output) and "secret_hash" not in str(output)

    rotated = client_cmd(onegate, initialised, "rotate-secret", "oa-app", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert new["client_id"] == "oa-app" and new["client_secret"] != secret
    assert lookup(initialised, "oa-app", new["client_secret"], secret)[1] == [True, False]
    human = client_cmd(onegate, initialised, "rotate-secret", "oa-app")
    assert "shown only now" in human.stdout and "old secret no longer works" in human.stdout

    removed = client_cmd(onegate, initialised, "remove", "oa-app")
    assert removed.returncode == 0 and "removed client oa-app" in removed.stdout
    assert lookup(initialised, "oa-app")[0] is None
    assert one_line_error(client_cmd(onegate, initialised, "show", "oa-app")) == "onegate: no client 'oa-app'"
    assert (
        one_line_error(client_cmd(onegate, initialised, "remove", "oa-app")) == "onegate: no client 'oa-app'"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--redirect-uri", "http://oa.example.gov.cn/cb"],
            "redirect_uris[0]: 'http://oa.example.gov.cn/cb' must use https",
        ),
        (["--redirect-uri", "https://oa.example.gov.cn/cb#x"], "must not contain a fragment"),
        (["--redirect-uri", "https://*.example.gov.cn/cb"], "wildcards are not allowed"),
        (["--redirect-uri", "/cb"], "must be an absolute URL"),
        (
            ["--public", "--redirect-uri", OA, "--grant-type", "client_credentials"],
            "only for confidential clients",
        ),
        (["--redirect-uri", OA, "--grant-type", "password"], "password grant is not supported"),
        (["--redirect-uri", OA, "--client-id", "a b"], "client_id: 3 to 128 characters"),
    ],
)
def test_bad_metadata_is_one_line_and_stores_nothing(
    onegate: Run, shared_data_dir: Path, args: list[str], expected: str
) -> None:
    line = one_line_error(client_cmd(onegate, shared_data_dir, "add", "--name", "协同办公系统", *args))
    assert expected in line
    assert json.loads(client_cmd(onegate, shared_data_dir, "list", "--json").stdout) == []


def test_public_client_and_private_key_jwt(onegate: Run, initialised: Path, tmp_path: Path) -> None:
    public = client_cmd(
        onegate,
        initialised,
        "add",
        "--json",
        "--public",
        "--name",
        "掌上办公",
        "--redirect-uri",
        "http://localhost:7000/cb",
    )
    assert public.returncode == 0, public.stderr
    record = json.loads(public.stdout)
    assert record["client_secret"] is None and record["token_endpoint_auth_method"] == "none"
    assert record["require_pkce"] is True
    assert (
        "shown only now"
        not in client_cmd(
            onegate,
            initialised,
            "add",
            "--public",
            "--name",
            "掌上办公 2",
            "--redirect-uri",
            "http://localhost/cb",
        ).stdout
    )
    assert client_cmd(onegate, initialised, "rotate-secret", record["client_id"]).returncode == 2

    key = ec.generate_private_key(ec.SECP256R1())
    public_jwk: dict[str, Any] = {**ES256().jwk_members(key.public_key()), "kid": "approvals-2026"}
    leaked = tmp_path / "leaked.json"
    leaked.write_text(json.dumps({"keys": [{**public_jwk, "d": b64url_encode(b"\x01" * 32)}]}))
    refused = client_cmd(
        onegate,
        initialised,
        "add",
        "--name",
        "审批系统",
        "--auth-method",
        "private_key_jwt",
        "--redirect-uri",
        OA,
        "--jwks-file",
        str(leaked),
    )
    assert "private key members" in one_line_error(refused)
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    assert "is not JSON" in one_line_error(
        client_cmd(onegate, initialised, "add", "--name", "审批系统", "--jwks-file", str(not_json))
    )
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk]}))
    added = client_cmd(
        onegate,
        initialised,
        "add",
        "--json",
        "--client-id",
        "approvals",
        "--name",
        "审批系统",
        "--auth-method",
        "private_key_jwt",
        "--redirect-uri",
        OA,
        "--jwks-file",
        str(jwks),
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["client_secret"] is None
    client, _ = lookup(initialised, "approvals")
    assert client is not None and [k.kid for k in client.keys] == ["approvals-2026"]
    assert "1 public key(s): approvals-2026" in client_cmd(onegate, initialised, "show", "approvals").stdout


def test_update_disable_enable(onegate: Run, initialised: Path) -> None:
    added = client_cmd(
        onegate,
        initialised,
        "add",
        "--json",
        "--client-id",
        "oa-app",
        "--name",
        "协同办公系统",
        "--redirect-uri",
        OA,
    )
    secret = json.loads(added.stdout)["client_secret"]
    updated = client_cmd(
        onegate,
        initialised,
        "update",
        "oa-app",
        "--json",
        "--name",
        "协同办公平台",
        "--first-party",
        "--scope",
        "openid",
        "--scope",
        "department",
        "--backchannel-logout-uri",
        "https://oa.example.gov.cn/bcl",
    )
    assert updated.returncode == 0, updated.stderr
    record = json.loads(updated.stdout)
    assert record["name"] == "协同办公平台" and record["first_party"] is True
    assert record["scopes"] == ["openid", "department"] and record["client_secret"] is None
    cleared = client_cmd(onegate, initialised, "update", "oa-app", "--json", "--backchannel-logout-uri", "")
    assert json.loads(cleared.stdout)["backchannel_logout_uri"] is None
    client, verified = lookup(initialised, "oa-app", secret)
    assert client is not None and client.name == "协同办公平台" and verified == [True]
    assert "grant_types" in one_line_error(
        client_cmd(onegate, initialised, "update", "oa-app", "--grant-type", "implicit")
    )
    assert "nothing to change" in one_line_error(client_cmd(onegate, initialised, "update", "oa-app"))

    assert "disabled client oa-app" in client_cmd(onegate, initialised, "disable", "oa-app").stdout
    assert lookup(initialised, "oa-app")[0] is None  # the server sees no such client
    assert "disabled" in client_cmd(onegate, initialised, "list").stdout
    assert "enabled client oa-app" in client_cmd(onegate, initialised, "enable", "oa-app").stdout
    assert lookup(initialised, "oa-app")[0] is not None
    assert (
        one_line_error(client_cmd(onegate, initialised, "disable", "nobody")) == "onegate: no client 'nobody'"
    )


def test_uninitialised_data_dir_is_one_line(onegate: Run, data_dir: Path) -> None:
    line = one_line_error(client_cmd(onegate, data_dir, "list"))
    assert "onegate init" in line or "master key" in line
