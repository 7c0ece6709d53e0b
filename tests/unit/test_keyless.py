"""clientAuthentication service_account_token: what is minted, for whom, and what is refused
(over the fake Kubernetes API; the real apiserver and Keycloak are in
tests/integration/test_keyless.py)."""

from __future__ import annotations

from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.oauth.protocol import build_form
from oauth_token_operator.oauth.types import ACCESS_TOKEN_TYPE, Credentials
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.policy import SERVICE_ACCOUNT_AUDIENCES_ANNOTATION
from oauth_token_operator.resource.spec import SpecError
from tests.unit.fakes import KEY, NS, OUTPUT_SECRET, World, client_body

AUDIENCE = "https://idp.example.com/realms/apps"


def keyless(**token: Any) -> dict[str, Any]:
    return {
        "clientAuthentication": "service_account_token",
        "serviceAccountToken": {"serviceAccountName": "app", "audience": AUDIENCE, **token},
    }


def world(audiences: str | None = AUDIENCE, **token: Any) -> World:
    w = World()
    if audiences is not None:
        annotations = {SERVICE_ACCOUNT_AUDIENCES_ANNOTATION: audiences}
        w.kube.service_accounts[NS, "app"] = {
            "metadata": {"name": "app", "namespace": NS, "annotations": annotations}
        }
    spec = keyless(**token)
    w.body = lambda **_: client_body(w.grant, **spec)  # type: ignore[method-assign]
    return w


async def test_a_fresh_token_of_the_service_account_is_the_client_assertion() -> None:
    w = world(audiences=f"https://other.example, {AUDIENCE}")
    await w.start()

    assert w.kube.minted == [(NS, "app", AUDIENCE)]
    (call,) = w.tokens.calls
    assert call.client_assertion == f"sa-token-1|{AUDIENCE}"
    assert call.client_secret is None
    assert w.kube.ready()["status"] == "True"
    assert "sa-token" not in repr(call) and "sa-token" not in str(w.kube.secrets[NS, OUTPUT_SECRET])

    w.clock.now += 3600
    await w.refresher._run(KEY)
    assert [c.client_assertion for c in w.tokens.calls][1] == f"sa-token-2|{AUDIENCE}"


@pytest.mark.parametrize(
    ("audiences", "reason"),
    [
        (None, reasons.SERVICE_ACCOUNT_NOT_FOUND),
        ("", reasons.SERVICE_ACCOUNT_NOT_OPTED_IN),
        ("https://other.example", reasons.SERVICE_ACCOUNT_NOT_OPTED_IN),
    ],
)
async def test_nothing_is_minted_for_a_service_account_that_did_not_opt_in(
    audiences: str | None, reason: str
) -> None:
    w = world(audiences=audiences)
    await w.start()

    assert w.kube.minted == [] and w.tokens.calls == []
    condition = w.kube.ready()
    assert condition["status"] == "False" and condition["reason"] == reason
    assert "app" in condition["message"]


async def test_the_clusters_issuer_is_refused_before_minting() -> None:
    w = world(audiences="https://apiserver.example/", audience="https://apiserver.example/")
    await w.start()

    assert w.kube.minted == [] and w.tokens.calls == []
    assert w.kube.ready()["reason"] == reasons.AUDIENCE_NOT_ALLOWED


async def test_a_token_the_apiserver_accepts_is_never_sent() -> None:
    """An apiserver configured with --api-audiences beyond its issuer."""
    w = world()
    w.kube.apiserver_audiences.add(AUDIENCE)
    await w.start()

    assert w.kube.minted == [(NS, "app", AUDIENCE)]  # minted to be reviewed, then dropped
    assert w.tokens.calls == []
    condition = w.kube.ready()
    assert condition["reason"] == reasons.AUDIENCE_NOT_ALLOWED
    assert "sa-token" not in str(w.kube.statuses) + str(w.kube.events)


@pytest.mark.parametrize(
    ("token", "endpoint", "error"),
    [
        ({"audience": "https://kubernetes.default.svc"}, None, "Kubernetes API accepts"),
        ({"serviceAccountName": "other-ns/app"}, None, "own namespace"),
        ({"expirationSeconds": 60}, None, "from 600 to 3600"),
        ({}, "http://idp.example.com/token", "must be https"),
    ],
)
def test_the_spec_refuses_what_could_leak_a_kubernetes_identity(
    token: dict[str, Any], endpoint: str | None, error: str
) -> None:
    spec = client_body(**keyless(**token))
    if endpoint:
        spec["spec"]["tokenEndpoint"] = endpoint
    with pytest.raises(SpecError, match=error):
        parse(spec)


def test_service_account_token_settings_need_that_authentication() -> None:
    body = client_body(**keyless())
    body["spec"]["clientAuthentication"] = "client_secret_post"
    with pytest.raises(SpecError, match="only with clientAuthentication service_account_token"):
        parse(body)


# --- token exchange (RFC 8693) ---------------------------------------------------------------


def exchange_body(subject: dict[str, Any], **more: Any) -> dict[str, Any]:
    body = client_body("token_exchange", tokenExchange={"subjectToken": subject, **more})
    body["spec"]["audience"] = "billing"
    return body


def test_token_exchange_sends_the_subject_token_from_a_secret() -> None:
    spec = parse(exchange_body({"secretKeyRef": {"name": "user", "key": "token"}}))
    creds = Credentials("id-1", client_secret="s", subject_token="subject-1")

    form, _ = build_form(spec.request, creds, "https://idp.example.com/token", 0)

    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token"] == "subject-1"
    assert form["subject_token_type"] == ACCESS_TOKEN_TYPE
    assert form["audience"] == "billing"
    assert "requested_token_type" not in form
    assert "user" in spec.secret_names_read()  # watched: a new subject token is picked up


async def test_token_exchange_with_a_service_account_subject_mints_one_per_exchange() -> None:
    w = World(grant="client_credentials")
    w.kube.service_accounts[NS, "app"] = {
        "metadata": {"annotations": {SERVICE_ACCOUNT_AUDIENCES_ANNOTATION: AUDIENCE}}
    }
    subject = {"serviceAccountToken": {"serviceAccountName": "app", "audience": AUDIENCE}}
    body = exchange_body(subject, requestedTokenType="urn:example:type")
    body["spec"]["clientAuthentication"] = "client_secret_post"
    w.body = lambda **_: body  # type: ignore[method-assign]
    spec = parse(body)
    assert spec.request.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert spec.request.requested_token_type == "urn:example:type"

    await w.start()

    (call,) = w.tokens.calls
    assert call.subject_token == f"sa-token-1|{AUDIENCE}" and call.client_secret == "secret-1"
    assert w.kube.ready()["status"] == "True"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (exchange_body({}), "exactly one of secretKeyRef and serviceAccountToken"),
        (
            exchange_body(
                {
                    "secretKeyRef": {"name": "a", "key": "b"},
                    "serviceAccountToken": {"serviceAccountName": "x", "audience": "y"},
                }
            ),
            "exactly one",
        ),
        (client_body("token_exchange"), "needs spec.tokenExchange.subjectToken"),
        (
            client_body(tokenExchange={"subjectToken": {"secretKeyRef": {}}}),
            "only with grantType token_exchange",
        ),
    ],
)
def test_token_exchange_spec_errors(body: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError, match=error):
        parse(body)


# --- spec.clientId: no credentials Secret at all -----------------------------------------


async def test_with_client_id_in_the_spec_no_credentials_secret_is_read() -> None:
    w = world()
    body = client_body(**keyless())
    del body["spec"]["credentialsSecretRef"]
    body["spec"]["clientId"] = "billing"
    w.body = lambda **_: body  # type: ignore[method-assign]
    del w.kube.secrets[NS, "app-creds"]  # there is none

    await w.start()

    (call,) = w.tokens.calls
    assert call.client_id == "billing" and call.client_assertion
    assert "app-creds" not in w.kube.reads
    assert w.kube.ready()["status"] == "True"
    assert parse(body).secret_names_read() == frozenset()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"clientAuthentication": "client_secret_basic"}, "works only with"),
        ({"grantType": "refresh_token"}, "works only with"),
        ({"credentialsSecretRef": {"name": "creds"}}, "not both"),
        ({"clientId": ""}, "non-empty"),
    ],
)
def test_client_id_only_where_no_secret_is_needed(changes: dict[str, Any], error: str) -> None:
    body = client_body(**keyless())
    del body["spec"]["credentialsSecretRef"]
    body["spec"]["clientId"] = "billing"
    body["spec"].update(changes)
    if changes.get("clientAuthentication") == "client_secret_basic":
        del body["spec"]["serviceAccountToken"]
    with pytest.raises(SpecError, match=error):
        parse(body)
