"""resource/policy.py: what the operator refuses for whoever writes an OAuthClient, as tables."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.cli.main import build_parser
from oauth_token_operator.exchange.exchanger import read_inputs
from oauth_token_operator.oauth.types import OAuthError
from oauth_token_operator.resource import policy, spec
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.policy import (
    ALLOWED_CLIENTS_ANNOTATION,
    SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION,
    SINGLE_TENANT,
    Guard,
    Tenancy,
    endpoint_trust_refusal,
    minting_output_refusal,
    secret_use_refusal,
    service_account_endpoint_refusal,
)
from oauth_token_operator.resource.spec import SpecError
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


def test_the_operator_is_shared_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAUTH_TOKEN_OPERATOR_TENANCY", raising=False)
    monkeypatch.delenv("OAUTH_TOKEN_OPERATOR_TRUSTED_ENDPOINTS", raising=False)
    args = build_parser().parse_args(["run"])
    assert (args.tenancy, args.trusted_endpoints) == ("shared", [])
    assert Guard() == Guard(Tenancy.SHARED, frozenset())  # Settings() too
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_TENANCY", "Single")
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_TRUSTED_ENDPOINTS", f"{ISSUER}, https://b.example")
    args = build_parser().parse_args(["run"])
    assert (args.tenancy, args.trusted_endpoints) == ("single", [ISSUER, "https://b.example"])
    assert build_parser().parse_args(["run", "--tenancy", "shared"]).tenancy == "shared"


def test_a_bad_tenancy_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_TENANCY", "multi")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run"])
    err = capsys.readouterr().err
    assert "from OAUTH_TOKEN_OPERATOR_TENANCY" in err and "shared, single" in err


class Secrets:
    """Secrets by name; records every write (a write to a foreign Secret is a leak too)."""

    def __init__(self, bodies: dict[str, dict[str, Any]]) -> None:
        self.bodies = bodies
        self.writes: list[str] = []

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.bodies.get(name)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(body["metadata"]["name"])
        return body

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(body["metadata"]["name"])
        return body

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


def stored(name: str, data: dict[str, str], allowed: str | None) -> dict[str, Any]:
    annotations = {} if allowed is None else {ALLOWED_CLIENTS_ANNOTATION: allowed}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"metadata": {"name": name, "annotations": annotations}, "data": encoded}


TRUSTED = Guard(Tenancy.SHARED, frozenset({"https://auth.example.com"}))
EXCHANGE = {
    "grantType": "token_exchange",
    "tokenExchange": {"subjectToken": {"secretKeyRef": {"name": "subject", "key": "t"}}},
}


@pytest.mark.parametrize(
    ("client", "creds_opt_in", "subject_opt_in", "guard", "reason"),
    [
        ({}, "rapidata", None, TRUSTED, None),
        ({}, None, None, TRUSTED, reasons.SECRET_NOT_OPTED_IN),
        ({}, "someone-else", None, TRUSTED, reasons.SECRET_NOT_OPTED_IN),
        ({}, "rapidata", None, Guard(), reasons.ENDPOINT_NOT_TRUSTED),
        ({}, None, None, SINGLE_TENANT, None),
        ({}, None, None, None, None),  # the `token` command: the user's own rights
        (EXCHANGE, "*", "rapidata", TRUSTED, None),
        (EXCHANGE, "*", None, TRUSTED, reasons.SECRET_NOT_OPTED_IN),
        (EXCHANGE, "*", "other", SINGLE_TENANT, reasons.SECRET_NOT_OPTED_IN),
    ],
)
async def test_inputs_are_read_only_from_secrets_that_opted_in(
    client: dict[str, Any],
    creds_opt_in: str | None,
    subject_opt_in: str | None,
    guard: Guard | None,
    reason: str | None,
) -> None:
    secrets = Secrets(
        {
            "rapidata-credentials": stored(
                "rapidata-credentials", {"client_id": "id", "client_secret": "pw"}, creds_opt_in
            ),
            "subject": stored("subject", {"t": "subject-token"}, subject_opt_in),
        }
    )
    spec = parse(body(**client))
    if reason is None:
        inputs = await read_inputs(secrets, secrets, spec, None, guard)
        assert inputs.creds.client_secret == "pw"
        return
    with pytest.raises(OAuthError) as refused:
        # A rotated refresh token waiting to be written back is not written either.
        await read_inputs(secrets, secrets, spec, "rotated-refresh-token", guard)
    assert refused.value.reason == reason
    assert secrets.writes == []
    assert "pw" not in refused.value.message and "subject-token" not in refused.value.message
