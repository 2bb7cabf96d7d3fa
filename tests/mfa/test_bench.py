"""The MFA benchmark runs end to end with a tiny budget (shape, not speed)."""

from __future__ import annotations

import json

from bench import mfa as mfa_bench


def test_mfa_run_reports_every_figure() -> None:
    result = mfa_bench.run(budget_s=0.01, recovery_rounds=1)
    for name in ("totp_verify_per_s", "pyotp_verify_per_s", "webauthn_assertion_per_s", "es256_verify_per_s"):
        assert result[name] > 0, name
    assert result["recovery_use_ms"] > 0 and result["recovery_wrong_ms"] > 0
    assert result["totp_overhead_ratio"] > 0
    json.dumps(result)
