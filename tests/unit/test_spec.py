"""spec.parse(): defaults, validation messages, durations and the spec hash."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from oauth_token_operator.oauth.types import ClientAuth, GrantType
from oauth_token_operator.resource.parse import parse, parse_duration
from oauth_token_operator.resource.spec import OAuthClientSpec, SpecError


def body(**spec: Any) -> dict[str, Any]:
    """A minimal valid OAuthClient, with spec fields overridden or added."""
    base: dict[str, Any] = {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": "rapidata", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": {
            "issuer": "https://auth.example.com",
            "credentialsSecretRef": {"name": "rapidata-credentials"},
        },
    }
    base["spec"].update(spec)
    return base


def without(data: dict[str, Any], *names: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for name in names:
        out["spec"].pop(name)
    return out


def test_minimal_object_gets_the_documented_defaults() -> None:
    spec = parse(body())

    assert str(spec.key) == "ml/rapidata"
    assert spec.uid == "u-1"
    assert spec.generation == 3
    assert spec.request.grant_type is GrantType.CLIENT_CREDENTIALS
    assert spec.request.client_auth is ClientAuth.BASIC
    assert spec.request.endpoint.issuer == "https://auth.example.com"
    assert spec.request.endpoint.token_endpoint is None
    assert spec.request.scopes == ()
    assert spec.request.audience is None
    assert spec.request.resources == ()
    assert spec.request.extra_params == ()

    creds = spec.credentials
    assert creds.secret_name == "rapidata-credentials"
    assert (creds.client_id, creds.client_secret, creds.refresh_token, creds.private_key) == (
        "client_id",
        "client_secret",
        "refresh_token",
        "private_key",
    )

    out = spec.output
    assert out.name == "rapidata-token"
    assert out.type == "Opaque"
    assert out.access_token_key == "access_token"
    assert out.token_type_key == "token_type"
    assert out.expires_at_key == "expires_at"
    assert out.id_token_key == ""  # no id_token written unless asked for

    refresh = spec.refresh
    assert refresh.renew_before_percentage == 33
    assert refresh.renew_before is None
    assert refresh.jitter_percentage == 10
    assert refresh.min_interval == 30.0
    assert refresh.default_lifetime == 3600.0
    assert spec.ca_bundle is None


def test_empty_output_secret_name_falls_back_to_default() -> None:
    assert parse(body(secret={"name": ""})).output.name == "rapidata-token"


def test_credentials_secret_is_among_the_secrets_read() -> None:
    spec = parse(body(tls={"caBundleSecretRef": {"name": "ca"}}))
    assert spec.secret_names_read() == {"rapidata-credentials", "ca"}
    assert spec.ca_bundle == ("ca", "ca.crt")


def test_issuer_and_token_endpoint_together_is_an_error() -> None:
    with pytest.raises(SpecError) as err:
        parse(body(tokenEndpoint="https://auth.example.com/connect/token"))
    message = str(err.value)
    assert "exactly one" in message
    assert "issuer" in message and "tokenEndpoint" in message


def test_neither_issuer_nor_token_endpoint_is_an_error() -> None:
    with pytest.raises(SpecError, match="exactly one"):
        parse(without(body(), "issuer"))


def test_token_endpoint_alone_is_accepted() -> None:
    data = without(body(tokenEndpoint="https://auth.example.com/token"), "issuer")
    endpoint = parse(data).request.endpoint
    assert endpoint.token_endpoint == "https://auth.example.com/token"
    assert endpoint.issuer is None


def test_non_http_endpoint_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"spec\.issuer"):
        parse(body(issuer="ftp://auth.example.com"))


def test_public_client_with_client_credentials_is_an_error() -> None:
    with pytest.raises(SpecError) as err:
        parse(body(clientAuthentication="none"))
    assert "none" in str(err.value)
    assert "client_credentials" in str(err.value)


def test_public_client_with_refresh_token_grant_is_accepted() -> None:
    spec = parse(body(clientAuthentication="none", grantType="refresh_token"))
    assert spec.request.client_auth is ClientAuth.NONE
    assert spec.request.grant_type is GrantType.REFRESH_TOKEN


def test_unknown_grant_type_names_the_allowed_values() -> None:
    with pytest.raises(SpecError) as err:
        parse(body(grantType="password"))
    assert "spec.grantType" in str(err.value)
    assert "client_credentials" in str(err.value) and "refresh_token" in str(err.value)


@pytest.mark.parametrize("reserved", ["grant_type", "client_secret", "refresh_token", "scope"])
def test_extra_params_may_not_override_what_the_operator_sets(reserved: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(body(extraParams={"sub_type": "user", reserved: "x"}))
    assert reserved in str(err.value)
    assert "sub_type" not in str(err.value)


def test_harmless_extra_params_are_kept() -> None:
    spec = parse(body(extraParams={"sub_type": "user"}))
    assert dict(spec.request.extra_params) == {"sub_type": "user"}


def test_missing_credentials_secret_ref_is_an_error() -> None:
    with pytest.raises(SpecError, match="credentialsSecretRef"):
        parse(without(body(), "credentialsSecretRef"))


def test_missing_spec_is_an_error() -> None:
    with pytest.raises(SpecError, match="spec"):
        parse({"metadata": {"name": "x", "namespace": "y"}})


def test_renew_before_and_percentage_together_is_an_error() -> None:
    with pytest.raises(SpecError) as err:
        parse(body(refresh={"renewBefore": "10m", "renewBeforePercentage": 20}))
    assert "renewBefore" in str(err.value)
    assert "renewBeforePercentage" in str(err.value)


def test_renew_before_is_parsed_as_seconds() -> None:
    assert parse(body(refresh={"renewBefore": "10m"})).refresh.renew_before == 600.0


@pytest.mark.parametrize("pct", [0, 91, "33", 33.5])
def test_renew_before_percentage_out_of_range_is_an_error(pct: Any) -> None:
    with pytest.raises(SpecError, match="renewBeforePercentage"):
        parse(body(refresh={"renewBeforePercentage": pct}))


@pytest.mark.parametrize("jitter", [-1, 51])
def test_jitter_out_of_range_is_an_error(jitter: int) -> None:
    with pytest.raises(SpecError, match="jitterPercentage"):
        parse(body(refresh={"jitterPercentage": jitter}))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2h0m5s", 7205.0),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "90", "10 m", "-5s", "1d", "h", "1.h", "5s ", "1h-30m"])
def test_bad_durations_are_errors(text: str) -> None:
    with pytest.raises(SpecError):
        parse_duration(text, "f")


@pytest.mark.parametrize("name", ["minInterval", "renewBefore", "defaultLifetime"])
def test_bad_duration_in_spec_names_the_field(name: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(body(refresh={name: "ten minutes"}))
    assert f"spec.refresh.{name}" in str(err.value)
    assert "ten minutes" in str(err.value)


def test_durations_in_spec_are_applied() -> None:
    refresh = parse(body(refresh={"minInterval": "1m", "defaultLifetime": "2h"})).refresh
    assert refresh.min_interval == 60.0
    assert refresh.default_lifetime == 7200.0


def test_output_secret_equal_to_credentials_secret_is_an_error() -> None:
    with pytest.raises(SpecError) as err:
        parse(body(secret={"name": "rapidata-credentials"}))
    assert "spec.secret.name" in str(err.value)


def test_default_output_name_clashing_with_credentials_is_an_error() -> None:
    with pytest.raises(SpecError):
        parse(body(credentialsSecretRef={"name": "rapidata-token"}))


def test_non_string_maps_are_errors() -> None:
    with pytest.raises(SpecError, match=r"spec\.secret\.labels"):
        parse(body(secret={"labels": {"a": 1}}))
    with pytest.raises(SpecError, match=r"spec\.scopes"):
        parse(body(scopes=["openid", ""]))


# --- spec hash ----------------------------------------------------------------------------


def hash_of(**spec: Any) -> str:
    return parse(body(**spec)).spec_hash


BASE = {"scopes": ["openid", "email"]}


@pytest.mark.parametrize(
    "change",
    [
        {"scopes": ["openid", "email", "roles"]},
        {"scopes": ["openid"]},
        {"issuer": "https://other.example.com"},
        {"audience": "api://x"},
        {"resource": ["https://api.example.com"]},
        {"extraParams": {"sub_type": "user"}},
        {"clientAuthentication": "client_secret_post"},
        {"secret": {"accessTokenKey": "token"}},
        {"secret": {"name": "other"}},
        {"secret": {"idTokenKey": "id_token"}},
        {"secret": {"labels": {"team": "ml"}}},
        {"credentialsSecretRef": {"name": "rapidata-credentials", "clientIdKey": "id"}},
    ],
)
def test_spec_hash_changes_when_the_token_or_the_output_would_change(
    change: dict[str, Any],
) -> None:
    assert hash_of(**{**BASE, **change}) != hash_of(**BASE)


@pytest.mark.parametrize(
    "refresh",
    [
        {"renewBeforePercentage": 50},
        {"renewBefore": "5m"},
        {"jitterPercentage": 0},
        {"minInterval": "5m"},
        {"defaultLifetime": "10m"},
    ],
)
def test_spec_hash_ignores_refresh_policy(refresh: dict[str, Any]) -> None:
    """A policy change reschedules; it must not force a new token."""
    assert hash_of(**BASE, refresh=refresh) == hash_of(**BASE)


def test_spec_hash_is_stable_and_ignores_generation() -> None:
    a = parse(body(**BASE))
    b_body = body(**BASE)
    b_body["metadata"]["generation"] = 99
    b: OAuthClientSpec = parse(b_body)
    assert a.spec_hash == b.spec_hash == parse(body(**BASE)).spec_hash


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"secret": {"accessTokenKey": "token", "tokenTypeKey": "token"}}, "different keys"),
        ({"secret": {"expiresAtKey": "access_token"}}, "different keys"),
        ({"secret": {"idTokenKey": "token_type"}}, "different keys"),
        ({"secret": {"name": "a..b"}}, "not a valid Secret name"),
        ({"secret": {"name": "-token"}}, "not a valid Secret name"),
        ({"refresh": {"defaultLifetime": "0s"}}, "at least 1m"),
        ({"refresh": {"defaultLifetime": "1ms"}}, "at least 1m"),
        ({"issuer": "https://user:pw@auth.example.com"}, "must not contain credentials"),
    ],
)
def test_what_would_corrupt_output_or_loop_is_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(body(**spec))
    assert message in str(err.value)


def test_distinct_keys_and_empty_optional_keys_are_fine() -> None:
    out = parse(body(secret={"tokenTypeKey": "", "expiresAtKey": "", "idTokenKey": ""})).output
    assert out.access_token_key == "access_token"


@pytest.mark.parametrize("auth", ["tls_client_auth", "self_signed_tls_client_auth"])
def test_mutual_tls_needs_a_client_certificate_secret(auth: str) -> None:
    with pytest.raises(SpecError, match=r"needs spec\.tls\.clientCertificateSecretRef"):
        parse(body(clientAuthentication=auth))
    spec = parse(
        body(clientAuthentication=auth, tls={"clientCertificateSecretRef": {"name": "cert"}})
    )
    assert spec.request.client_auth.mutual_tls
    assert "cert" in spec.secret_names_read()  # watched: a renewal triggers a run
