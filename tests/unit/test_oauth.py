"""The token client's pure parts: error mapping, token responses, request forms, client
authentication and the endpoint policy."""

from __future__ import annotations

import base64
import email.utils
import json
import time
from typing import Any
from urllib.parse import unquote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from oauth_token_operator.oauth.guard import check_endpoint
from oauth_token_operator.oauth.protocol import (
    build_form,
    map_error_response,
    parse_retry_after,
    parse_token_response,
    redact,
)
from oauth_token_operator.oauth.types import (
    ClientAuth,
    Credentials,
    Endpoint,
    EndpointPolicy,
    GrantType,
    OAuthError,
    Outcome,
    Token,
    TokenRequest,
)

TOKEN_URL = "https://auth.example.com/connect/token"
NOW = 1_700_000_000.0


def err_body(error: str, description: str | None = None) -> bytes:
    payload: dict[str, Any] = {"error": error}
    if description is not None:
        payload["error_description"] = description
    return json.dumps(payload).encode()


# --- map_error_response -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(401, "invalid_client", "InvalidClient"), (400, "invalid_grant", "InvalidGrant")],
)
def test_credential_errors_need_a_human(status: int, error: str, reason: str) -> None:
    exc = map_error_response(status, err_body(error, "bad"), None)
    assert exc.outcome is Outcome.NEEDS_HUMAN
    assert exc.reason == reason
    assert error in exc.message
    assert "bad" in exc.message


def test_429_is_transient_rate_limited_with_retry_after() -> None:
    exc = map_error_response(429, b"slow down please", 7.0)
    assert exc.outcome is Outcome.TRANSIENT
    assert exc.reason == "RateLimited"
    assert exc.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(status: int) -> None:
    exc = map_error_response(status, b"<html>oops</html>", None)
    assert exc.outcome is Outcome.TRANSIENT
    assert str(status) in exc.message


def test_server_error_with_oauth_body_is_still_transient() -> None:
    exc = map_error_response(503, err_body("invalid_client"), 30.0)
    assert exc.outcome is Outcome.TRANSIENT
    assert exc.retry_after == 30.0


def test_oauth_temporarily_unavailable_on_400_is_transient() -> None:
    assert map_error_response(400, err_body("temporarily_unavailable"), None).outcome is (
        Outcome.TRANSIENT
    )


def test_unknown_oauth_error_needs_a_human() -> None:
    exc = map_error_response(400, err_body("something_new"), None)
    assert exc.outcome is Outcome.NEEDS_HUMAN
    assert exc.reason not in ("InvalidClient", "InvalidGrant")
    assert "something_new" in exc.message


@pytest.mark.parametrize("body", [b"<html>Forbidden</html>", b"", b"[1,2]", b'{"error": 5}'])
def test_4xx_without_oauth_error_needs_a_human(body: bytes) -> None:
    exc = map_error_response(403, body, None)
    assert exc.outcome is Outcome.NEEDS_HUMAN
    assert "403" in exc.message
    assert "Forbidden" not in exc.message  # an HTML body is not echoed


def test_long_description_is_truncated() -> None:
    description = "x" * 150 + "y" * 350
    exc = map_error_response(400, err_body("invalid_grant", description), None)
    assert "x" * 150 in exc.message
    assert "y" * 50 in exc.message
    assert "y" * 51 not in exc.message  # 200 characters of description at most
    assert len(exc.message) < 300


def test_control_characters_are_stripped_from_description() -> None:
    exc = map_error_response(400, err_body("invalid_grant", "line1\nline2\r\x1b[31mred\x00"), None)
    assert not any(ord(c) < 32 or ord(c) == 127 for c in exc.message)
    assert "line1" in exc.message and "line2" in exc.message and "red" in exc.message


def test_control_characters_are_stripped_from_error_code() -> None:
    exc = map_error_response(400, err_body("bad\ncode" + "z" * 200), None)
    assert "\n" not in exc.message
    assert "z" * 100 not in exc.message


# --- parse_retry_after --------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(" 120 ", NOW) == 120.0


def test_retry_after_http_date() -> None:
    value = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(value, NOW) == pytest.approx(90.0)


def test_retry_after_date_in_the_past_is_zero() -> None:
    value = email.utils.formatdate(NOW - 90, usegmt=True)
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3"])
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_retry_after_unicode_digit_is_ignored_not_a_crash() -> None:
    # A latin-1 header byte 0xB2 decodes to '²', which str.isdigit() accepts.
    assert parse_retry_after("\u00b2", NOW) is None


# --- parse_token_response -----------------------------------------------------------------


def token_body(**fields: Any) -> bytes:
    return json.dumps({"access_token": "at-123", "token_type": "Bearer", **fields}).encode()


def test_expires_in_sets_expiry() -> None:
    token = parse_token_response(token_body(expires_in=3600, scope="openid"), NOW, 60.0)
    assert token.issued_at == NOW
    assert token.expires_at == NOW + 3600
    assert token.access_token == "at-123"
    assert token.token_type == "Bearer"
    assert token.scope == "openid"


def test_string_expires_in_is_accepted() -> None:
    assert parse_token_response(token_body(expires_in="3600"), NOW, 60.0).expires_at == (NOW + 3600)


def test_jwt_exp_is_used_without_expires_in() -> None:
    exp = int(NOW) + 1234
    access = jwt.encode({"sub": "x", "exp": exp}, "k" * 32, algorithm="HS256")
    body = json.dumps({"access_token": access, "token_type": "Bearer"}).encode()
    assert parse_token_response(body, NOW, 60.0).expires_at == exp


def test_default_lifetime_without_expires_in_or_jwt() -> None:
    assert parse_token_response(token_body(), NOW, 900.0).expires_at == NOW + 900.0


def test_jwt_without_exp_uses_default_lifetime() -> None:
    access = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")
    body = json.dumps({"access_token": access}).encode()
    assert parse_token_response(body, NOW, 900.0).expires_at == NOW + 900.0


def test_token_type_defaults_to_bearer_and_rotation_fields_are_read() -> None:
    body = json.dumps(
        {"access_token": "a", "expires_in": 10, "refresh_token": "r2", "id_token": "i"}
    ).encode()
    token = parse_token_response(body, NOW, 60.0)
    assert token.token_type == "Bearer"
    assert token.refresh_token == "r2"
    assert token.id_token == "i"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"<html></html>",
        b"[]",
        b'"x"',
        json.dumps({"token_type": "Bearer", "expires_in": 60}).encode(),
        json.dumps({"access_token": "", "expires_in": 60}).encode(),
        json.dumps({"access_token": 5}).encode(),
        token_body(expires_in=-1),
        token_body(expires_in=0),
        token_body(expires_in=True),
        token_body(expires_in="soon"),
        token_body(expires_in="-5"),
        token_body(expires_in=[3600]),
        b'{"access_token": "a", "expires_in": NaN}',
        b'{"access_token": "a", "expires_in": Infinity}',
        token_body(token_type=1),
        token_body(refresh_token=1),
        token_body(expires_in="\u00b2"),  # '²'.isdigit() is True, int('²') raises
    ],
)
def test_malformed_bodies_are_malformed_response(body: bytes) -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_response(body, NOW, 60.0)
    assert err.value.reason == "MalformedResponse"
    assert err.value.outcome is Outcome.TRANSIENT


def test_malformed_response_does_not_echo_the_body() -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_response(b'{"access_token": "secret-at", "expires_in": -1}', NOW, 60.0)
    assert "secret-at" not in str(err.value)


# --- build_form and client authentication -------------------------------------------------


def request(
    auth: ClientAuth = ClientAuth.BASIC,
    grant: GrantType = GrantType.CLIENT_CREDENTIALS,
    **kw: Any,
) -> TokenRequest:
    return TokenRequest(
        endpoint=Endpoint(token_endpoint=TOKEN_URL), grant_type=grant, client_auth=auth, **kw
    )


def basic_pair(headers: dict[str, str]) -> tuple[str, str]:
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    decoded = base64.b64decode(value).decode("ascii")  # form-urlencoded: pure ASCII
    user, sep, password = decoded.partition(":")
    assert sep == ":"
    return user, password


def test_basic_auth_form_urlencodes_id_and_secret() -> None:
    client_id = "my:client id"
    secret = "p:a%s+s wörd/?&="
    form, headers = build_form(request(), Credentials(client_id, secret), TOKEN_URL, NOW)
    user, password = basic_pair(headers)
    assert unquote_plus(user) == client_id
    assert unquote_plus(password) == secret
    assert "client_secret" not in form
    assert "client_id" not in form
    assert form["grant_type"] == "client_credentials"


def test_basic_auth_simple_values_are_plain() -> None:
    _, headers = build_form(request(), Credentials("abc", "s3cr3t"), TOKEN_URL, NOW)
    assert basic_pair(headers) == ("abc", "s3cr3t")


def test_client_secret_post_sends_fields_and_no_authorization() -> None:
    form, headers = build_form(
        request(ClientAuth.POST), Credentials("abc", "s:e%c"), TOKEN_URL, NOW
    )
    assert form["client_id"] == "abc"
    assert form["client_secret"] == "s:e%c"  # the form encoder encodes it, not us
    assert "Authorization" not in headers


def test_public_client_sends_client_id_only() -> None:
    creds = Credentials("pub", client_secret=None, refresh_token="r1")
    form, headers = build_form(
        request(ClientAuth.NONE, GrantType.REFRESH_TOKEN), creds, TOKEN_URL, NOW
    )
    assert form == {"grant_type": "refresh_token", "refresh_token": "r1", "client_id": "pub"}
    assert "Authorization" not in headers


def test_refresh_grant_without_refresh_token_needs_a_human() -> None:
    with pytest.raises(OAuthError) as err:
        build_form(
            request(ClientAuth.POST, GrantType.REFRESH_TOKEN), Credentials("a", "b"), TOKEN_URL, NOW
        )
    assert err.value.outcome is Outcome.NEEDS_HUMAN


@pytest.mark.parametrize("auth", [ClientAuth.BASIC, ClientAuth.POST])
def test_secret_auth_without_secret_needs_a_human(auth: ClientAuth) -> None:
    with pytest.raises(OAuthError) as err:
        build_form(request(auth), Credentials("a"), TOKEN_URL, NOW)
    assert err.value.outcome is Outcome.NEEDS_HUMAN


def test_scopes_audience_resources_and_extra_params() -> None:
    req = request(
        scopes=("openid", "email", "roles"),
        audience="api://x",
        resources=("https://a.example.com", "https://b.example.com"),
        extra_params=(("sub_type", "user"),),
    )
    form, _ = build_form(req, Credentials("a", "b"), TOKEN_URL, NOW)
    assert form["scope"] == "openid email roles"
    assert form["audience"] == "api://x"
    assert form["resource"] == ["https://a.example.com", "https://b.example.com"]
    assert form["sub_type"] == "user"


def test_no_scope_field_without_scopes() -> None:
    form, _ = build_form(request(), Credentials("a", "b"), TOKEN_URL, NOW)
    assert "scope" not in form
    assert "audience" not in form
    assert "resource" not in form


def rsa_pem() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


def ec_pem(curve: ec.EllipticCurve) -> tuple[str, Any]:
    key = ec.generate_private_key(curve)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


@pytest.mark.parametrize(("kind", "algorithm"), [("rsa", "RS256"), ("ec", "ES256")])
def test_private_key_jwt_assertion_is_signed_and_well_formed(kind: str, algorithm: str) -> None:
    pem, public = rsa_pem() if kind == "rsa" else ec_pem(ec.SECP256R1())
    creds = Credentials("client-1", private_key=pem)
    now = time.time()
    jtis = set()
    for _ in range(3):
        form, headers = build_form(request(ClientAuth.PRIVATE_KEY_JWT), creds, TOKEN_URL, now)
        assert "Authorization" not in headers
        assert form["client_id"] == "client-1"
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        assertion = form["client_assertion"]
        assert isinstance(assertion, str)
        assert jwt.get_unverified_header(assertion)["alg"] == algorithm
        claims = jwt.decode(assertion, public, algorithms=[algorithm], audience=TOKEN_URL)
        assert claims["iss"] == claims["sub"] == "client-1"
        assert claims["aud"] == TOKEN_URL
        assert claims["exp"] > time.time()
        assert claims["exp"] - now <= 600  # short-lived
        jtis.add(claims["jti"])
    assert len(jtis) == 3


def test_private_key_jwt_signature_fails_with_another_key() -> None:
    pem, _ = rsa_pem()
    _, other_public = rsa_pem()
    form, _ = build_form(
        request(ClientAuth.PRIVATE_KEY_JWT), Credentials("c", private_key=pem), TOKEN_URL, NOW
    )
    assertion = form["client_assertion"]
    assert isinstance(assertion, str)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            assertion,
            other_public,
            algorithms=["RS256"],
            audience=TOKEN_URL,
            options={"verify_exp": False},
        )


@pytest.mark.parametrize("private_key", ["not a key", None])
def test_private_key_jwt_with_bad_key_needs_a_human(private_key: str | None) -> None:
    with pytest.raises(OAuthError) as err:
        build_form(
            request(ClientAuth.PRIVATE_KEY_JWT),
            Credentials("c", private_key=private_key),
            TOKEN_URL,
            NOW,
        )
    assert err.value.outcome is Outcome.NEEDS_HUMAN
    assert err.value.reason == "CredentialsInvalid"


def test_private_key_jwt_refuses_unsupported_curve_without_showing_the_key() -> None:
    pem, _ = ec_pem(ec.SECP384R1())
    with pytest.raises(OAuthError) as err:
        build_form(
            request(ClientAuth.PRIVATE_KEY_JWT), Credentials("c", private_key=pem), TOKEN_URL, NOW
        )
    assert "PRIVATE KEY" not in str(err.value)


def test_reprs_never_show_secrets() -> None:
    creds = Credentials("id-1", "client-secret-x", "refresh-token-y", "private-key-z")
    token = Token(
        access_token="access-token-w",
        token_type="Bearer",
        issued_at=NOW,
        expires_at=NOW + 60,
        refresh_token="refresh-token-v",
        id_token="id-token-u",
    )
    text = repr(creds) + str(creds) + repr(token) + str(token)
    for secret in (
        "client-secret-x",
        "refresh-token-y",
        "private-key-z",
        "access-token-w",
        "refresh-token-v",
        "id-token-u",
    ):
        assert secret not in text
    assert "id-1" in repr(creds)  # the client id is not a secret and helps debugging


def test_credential_errors_do_not_show_secrets() -> None:
    creds = Credentials("a", client_secret="hunter2-secret")
    with pytest.raises(OAuthError) as err:
        build_form(request(ClientAuth.POST, GrantType.REFRESH_TOKEN), creds, TOKEN_URL, NOW)
    assert "hunter2-secret" not in str(err.value)


# --- check_endpoint -----------------------------------------------------------------------


async def test_plain_http_refused_by_default() -> None:
    with pytest.raises(OAuthError) as err:
        await check_endpoint("http://127.0.0.1/token", EndpointPolicy())
    assert err.value.reason == "EndpointNotAllowed"
    assert err.value.outcome is Outcome.NEEDS_HUMAN


async def test_plain_http_allowed_when_configured() -> None:
    await check_endpoint("http://127.0.0.1:8080/token", EndpointPolicy(allow_http=True))


async def test_https_loopback_allowed() -> None:
    await check_endpoint("https://127.0.0.1/token", EndpointPolicy())
    await check_endpoint("https://[::1]:8443/token", EndpointPolicy())


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "https:///token"])
async def test_non_https_or_hostless_urls_refused(url: str) -> None:
    with pytest.raises(OAuthError):
        await check_endpoint(url, EndpointPolicy(allow_http=True))


async def test_userinfo_in_url_refused() -> None:
    with pytest.raises(OAuthError):
        await check_endpoint("https://user:pw@127.0.0.1/token", EndpointPolicy())


async def test_allowed_hosts_enforced() -> None:
    policy = EndpointPolicy(allowed_hosts=frozenset({"127.0.0.1"}))
    await check_endpoint("https://127.0.0.1/token", policy)
    with pytest.raises(OAuthError) as err:
        await check_endpoint("https://127.0.0.2/token", policy)
    assert err.value.reason == "EndpointNotAllowed"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data",
        "https://169.254.10.1/token",
        "https://[fe80::1]/token",
        "https://[fd00:ec2::254]/token",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://METADATA.google.internal./token",
    ],
)
async def test_link_local_and_metadata_refused(url: str) -> None:
    with pytest.raises(OAuthError) as err:
        await check_endpoint(url, EndpointPolicy(allow_http=True))
    assert err.value.reason == "EndpointNotAllowed"


async def test_ipv4_mapped_metadata_address_refused() -> None:
    """::ffff:169.254.169.254 reaches the IPv4 metadata service through a dual-stack socket."""
    with pytest.raises(OAuthError) as err:
        await check_endpoint("https://[::ffff:169.254.169.254]/", EndpointPolicy())
    assert err.value.reason == "EndpointNotAllowed"


# --- bounds on what a provider answers (issue: no bad answer becomes a crash) ----------


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "a", "expires_in": 1' + b"0" * 400 + b"}",  # int too large for float
        b'{"access_token": "a", "expires_in": 1e400}',  # inf
        b'{"access_token": "a", "expires_in": -5}',
        b'{"access_token": "a", "expires_in": "9' + b"9" * 300 + b'"}',
        b'{"access_token": "a", "token_type": "' + b"B" * 100 + b'"}',
        b'{"access_token": "a", "scope": "' + b"s" * 5000 + b'"}',
    ],
)
def test_absurd_numbers_and_sizes_are_malformed_not_a_crash(body: bytes) -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_response(body, NOW, 3600.0)
    assert err.value.reason == "MalformedResponse"


def test_a_jwt_exp_too_large_for_a_float_falls_back_to_the_default_lifetime() -> None:
    payload = base64.urlsafe_b64encode(b'{"exp": 1' + b"0" * 400 + b"}").rstrip(b"=").decode()
    token = parse_token_response(
        json.dumps({"access_token": f"e30.{payload}.c2ln"}).encode(), NOW, 3600.0
    )
    assert token.expires_at == NOW + 3600.0


def test_a_malformed_answer_keeps_its_rotated_refresh_token_out_of_sight() -> None:
    body = b'{"access_token": "a", "expires_in": "soon", "refresh_token": "rotated-rt"}'
    with pytest.raises(OAuthError) as err:
        parse_token_response(body, NOW, 3600.0)
    assert err.value.rotated_refresh_token == "rotated-rt"
    assert "rotated-rt" not in str(err.value) + repr(err.value) + err.value.message


@pytest.mark.parametrize(
    "url", ["https://0.0.0.0/token", "https://[::]/token", "https://0.0.0.0:8443/token"]
)
async def test_unspecified_addresses_are_refused(url: str) -> None:
    with pytest.raises(OAuthError) as err:
        await check_endpoint(url, EndpointPolicy())
    assert err.value.reason == "EndpointNotAllowed"
    assert "unspecified" in err.value.message


def test_redact_removes_every_form_of_a_secret() -> None:
    text = "bad secret s3cr3t+/= (s3cr3t%2B%2F%3D, s3cr3t%2B%2F%3D) and rt-123456"
    cleaned = redact(text, ("s3cr3t+/=", "rt-123456", None, "ab"))
    assert "s3cr3t" not in cleaned and "rt-123456" not in cleaned
    assert cleaned.count("[redacted]") == 4
