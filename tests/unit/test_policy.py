"""policy.py: what the operator refuses for whoever writes an OAuthClient, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from oauth_token_operator import policy, spec
from oauth_token_operator.policy import (
    ALLOWED_CLIENTS_ANNOTATION,
    SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION,
    Tenancy,
    endpoint_trust_refusal,
    minting_output_refusal,
    secret_use_refusal,
    service_account_endpoint_refusal,
)
from oauth_token_operator.spec import SpecError, parse
from tests.unit.test_spec import body

SHARED, SINGLE = Tenancy.SHARED, Tenancy.SINGLE


def test_the_group_is_the_specs() -> None:
    assert policy.GROUP == spec.API_GROUP


@pytest.mark.parametrize(
    ("output", "refused"),
    [
        ({}, None),
        ({"type": "Opaque"}, None),
        ({"type": "kubernetes.io/dockerconfigjson"}, None),
        ({"type": "kubernetes.io/service-account-token"}, "spec.secret.type"),
        ({"type": "bootstrap.kubernetes.io/token"}, "spec.secret.type"),
        ({"annotations": {"kubernetes.io/service-account.name": "billing"}}, "annotations"),
        ({"annotations": {"kubernetes.io/service-account.uid": "x"}}, "annotations"),
        ({"labels": {"kubernetes.io/service-account.name": "billing"}}, "labels"),
        ({"annotations": {"kubernetes.io/description": "fine"}}, None),
        ({"annotations": {"example.com/service-account.name": "fine"}}, None),
    ],
)
def test_output_secrets_that_make_kubernetes_mint_are_refused(
    output: dict[str, Any], refused: str | None
) -> None:
    if refused is None:
        parse(body(secret=output))
        return
    with pytest.raises(SpecError, match=refused):
        parse(body(secret=output))


def test_minting_refusal_names_the_key_and_no_value() -> None:
    why = minting_output_refusal("Opaque", (), (("kubernetes.io/service-account.name", "b"),))
    assert why is not None and "kubernetes.io/service-account.name" in why
    assert "b'" not in why and ": b" not in why


def secret(annotation: str | None) -> dict[str, Any]:
    annotations = {} if annotation is None else {ALLOWED_CLIENTS_ANNOTATION: annotation}
    return {"metadata": {"name": "db", "annotations": annotations}}


@pytest.mark.parametrize(
    ("annotation", "tenancy", "allowed"),
    [
        (None, SHARED, False),  # no opt-in: refused in shared tenancy
        (None, SINGLE, True),  # single tenancy: as before
        ("app", SHARED, True),
        ("other, app ,third", SHARED, True),
        ("*", SHARED, True),
        ("other", SHARED, False),
        ("other", SINGLE, False),  # an owner's opt-in is honoured in every mode
        ("", SHARED, False),
        ("application", SHARED, False),  # names, not prefixes
    ],
)
def test_secrets_opt_in_by_client_name(
    annotation: str | None, tenancy: Tenancy, allowed: bool
) -> None:
    why = secret_use_refusal(secret(annotation), "db", "app", tenancy, "client credentials")
    assert (why is None) is allowed
    if why is not None:
        assert "db" in why and ALLOWED_CLIENTS_ANNOTATION in why


ISSUER = "https://sso.example/realms/apps"


def account(endpoints: str | None) -> dict[str, Any]:
    annotations = {} if endpoints is None else {SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION: endpoints}
    return {"metadata": {"name": "billing", "annotations": annotations}}


@pytest.mark.parametrize(
    ("endpoints", "destination", "tenancy", "allowed"),
    [
        (None, ISSUER, SHARED, False),
        (None, ISSUER, SINGLE, True),
        (ISSUER, ISSUER, SHARED, True),
        (ISSUER + "/", ISSUER, SHARED, True),  # a trailing slash is the same URL
        (f"https://other.example, {ISSUER}", ISSUER, SHARED, True),
        (ISSUER, "https://attacker.example/token", SHARED, False),
        (ISSUER, "https://attacker.example/token", SINGLE, False),
        (ISSUER, ISSUER + "/protocol/openid-connect/token", SHARED, False),  # exact URLs
        ("https://sso.example", ISSUER, SHARED, False),
    ],
)
def test_service_accounts_name_where_their_tokens_go(
    endpoints: str | None, destination: str, tenancy: Tenancy, allowed: bool
) -> None:
    why = service_account_endpoint_refusal(account(endpoints), "billing", destination, tenancy)
    assert (why is None) is allowed


@pytest.mark.parametrize(
    ("trusted", "destination", "tenancy", "allowed"),
    [
        (frozenset(), ISSUER, SHARED, False),
        (frozenset(), ISSUER, SINGLE, True),
        (frozenset({ISSUER}), ISSUER, SHARED, True),
        (frozenset({ISSUER + "/"}), ISSUER, SHARED, True),
        (frozenset({ISSUER}), "https://attacker.example", SHARED, False),
        (frozenset({"https://sso.example"}), ISSUER, SHARED, False),
    ],
)
def test_shared_tenancy_uses_only_trusted_inline_endpoints(
    trusted: frozenset[str], destination: str, tenancy: Tenancy, allowed: bool
) -> None:
    assert (endpoint_trust_refusal(destination, trusted, tenancy) is None) is allowed


@pytest.mark.parametrize(
    "subject",
    [
        {"secretKeyRef": {"name": "subject", "key": "token"}},
        {"serviceAccountToken": {"serviceAccountName": "app", "audience": "https://a.example"}},
    ],
)
def test_a_subject_token_needs_an_https_endpoint(subject: dict[str, Any]) -> None:
    exchange = {"grantType": "token_exchange", "tokenExchange": {"subjectToken": subject}}
    with pytest.raises(SpecError, match="must be https"):
        parse(body(issuer="http://auth.example.com", **exchange))
    parse(body(**exchange))
