"""The benchmark runner and the keyvault benchmark (tiny time budget: shape, not speed)."""

from __future__ import annotations

import json

import pytest

from bench import keyvault as keyvault_bench
from bench.__main__ import available, main, table

REQUIRED = {
    "es256_sign_per_s",
    "es256_verify_per_s",
    "rs256_sign_per_s",
    "rs256_verify_per_s",
    "encrypt_per_s",
    "decrypt_per_s",
}


def test_unknown_benchmark_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no_such_bench'" in err
    assert "keyvault" in err


def test_private_modules_are_not_benchmarks() -> None:
    assert "keyvault" in available()
    assert "__main__" not in available()


def test_keyvault_run_reports_every_figure() -> None:
    result = keyvault_bench.run(budget_s=0.01)
    assert set(result) >= REQUIRED
    assert all(result[k] > 0 for k in REQUIRED | {"sm4_encrypt_per_s", "sm4_decrypt_per_s"})
    assert result["record_bytes"] == 1024
    json.dumps(result)


def test_json_and_table_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyvault_bench, "run", lambda: {"encrypt_per_s": 1234.5, "python": "3.11"})
    assert main(["keyvault", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"encrypt_per_s": 1234.5, "python": "3.11"}
    assert main(["keyvault"]) == 0
    assert capsys.readouterr().out.splitlines() == ["encrypt_per_s  1,234.5", "python         3.11"]
    assert table({}) == ""
