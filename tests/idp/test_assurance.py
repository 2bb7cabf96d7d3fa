"""idp.assurance: the class a request, its client and its user need; the strongest wins."""

from __future__ import annotations

from idp.assurance import request_requirement, strongest, user_requirement
from mfa.levels import ACR_MFA, ACR_PHR, ACR_PWD


def test_strongest_ignores_unknown_and_missing() -> None:
    assert strongest(None, ACR_MFA, ACR_PWD) == ACR_MFA
    assert strongest(ACR_PHR, ACR_MFA) == ACR_PHR
    assert strongest(None, "urn:other") is None and strongest() is None


def test_request_requirement_takes_client_parameters_and_essential_claim() -> None:
    none: list[str] = []
    assert request_requirement(client_minimum=None, acr_values=none, essential_acr=None) is None
    assert request_requirement(client_minimum=ACR_MFA, acr_values=none, essential_acr=None) == ACR_MFA
    # acr_values: any listed class will do, so the weakest known one is what is needed ...
    assert (
        request_requirement(client_minimum=None, acr_values=[ACR_PHR, ACR_MFA], essential_acr=None) == ACR_MFA
    )
    # ... but a request can never lower what its client requires.
    assert request_requirement(client_minimum=ACR_PHR, acr_values=[ACR_PWD], essential_acr=None) == ACR_PHR
    assert request_requirement(client_minimum=None, acr_values=none, essential_acr=[ACR_PHR]) == ACR_PHR
    assert request_requirement(client_minimum=None, acr_values=["urn:x"], essential_acr=["urn:y"]) is None


def test_user_requirement() -> None:
    assert user_requirement(everyone=False, enrol_required=False, group_required=False) is None
    for flags in ((True, False, False), (False, True, False), (False, False, True)):
        everyone, enrol, group = flags
        assert user_requirement(everyone=everyone, enrol_required=enrol, group_required=group) == ACR_MFA
