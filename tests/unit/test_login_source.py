"""Where `login` and `token` take the provider from: the flags (--issuer, --provider,
--client, --operator-namespace) and what `login` makes of a provider or an OAuthClient
(issuer, CA bundle, scopes, client authentication, Secret and keys), over the fake API."""

from __future__ import annotations

import argparse
import base64
from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.cli.login_source import Source, check_flags, source_for
from oauth_token_operator.cli.main import build_parser
from oauth_token_operator.cli.reads import CHART_NAMESPACE, CommandError
from oauth_token_operator.exchange.providers import PLURALS
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.oauth.types import (
    CLUSTER_PROVIDER_KIND,
    PROVIDER_KIND,
    ClientAuth,
    OAuthError,
)
from oauth_token_operator.resource.spec import PLURAL, CredentialKeys
from tests.unit.fakes import FakeKube
from tests.unit.test_spec import body

ISSUER = "https://sso.example/realms/apps"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
OTHER_PEM = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
HOME = "platform"  # the operator's namespace in these tests
CLUSTER = PLURALS[CLUSTER_PROVIDER_KIND]


def login_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["login", "--client-id", "app", "-n", "ml", "--operator-namespace", HOME, *argv]
    )


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


def secret(**data: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def sso(namespaces: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sso"}, "spec": {"namespaces": namespaces or ["ml"], **spec}}


def client(**spec: Any) -> dict[str, Any]:
    """An OAuthClient ml/app; a field set to None is left out."""
    obj = body(**spec)
    obj["metadata"]["name"] = "app"
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    return obj


def by_ref(kind: str = CLUSTER_PROVIDER_KIND, **spec: Any) -> dict[str, Any]:
    ref = {"kind": kind, "name": "sso"}
    return client(providerRef=ref, issuer=None, grantType="refresh_token", **spec)


class Refusing(FakeKube):
    """An API server that refuses the user some reads, as RBAC does."""

    def __init__(self, *refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        if plural in self.refused:
            raise KubeError(403, f'{plural} "{name}" is forbidden: User "dev" cannot get it')
        return await super().get_object(group, version, plural, namespace, name)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        if "secrets" in self.refused:
            raise KubeError(403, f'secrets "{name}" is forbidden: User "dev" cannot get it')
        return await super().get_secret(namespace, name)


# --- the flags -----------------------------------------------------------------------------


def test_login_takes_exactly_one_of_issuer_provider_and_client(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["login", "--client-id", "app", "--secret", "s"]
    assert "one of the arguments --issuer --provider --client is required" in usage_error(
        capsys, *base
    )
    for a, b in (("--issuer", "--provider"), ("--provider", "--client"), ("--client", "--issuer")):
        message = usage_error(capsys, *base, a, "sso", b, "sso")
        assert f"argument {b}: not allowed with argument {a}" in message


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("sso", (CLUSTER_PROVIDER_KIND, "sso")),
        ("ClusterOAuthProvider/sso", (CLUSTER_PROVIDER_KIND, "sso")),
        ("OAuthProvider/sso", (PROVIDER_KIND, "sso")),
        ("oauthprovider/sso", (PROVIDER_KIND, "sso")),  # as kubectl takes kinds
        ("clusteroauthproviders/sso.corp", (CLUSTER_PROVIDER_KIND, "sso.corp")),
    ],
)
def test_provider_names_a_cluster_provider_unless_it_says_otherwise(
    value: str, parsed: tuple[str, str]
) -> None:
    assert login_args("--provider", value).provider == parsed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Issuer/sso", "the kind is ClusterOAuthProvider (the default) or OAuthProvider"),
        ("a/b/sso", "the kind is ClusterOAuthProvider"),
        ("OAuthProvider/", "'' is not an object name"),
        ("SSO", "'SSO' is not an object name"),
    ],
)
def test_a_bad_provider_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    error = usage_error(capsys, "login", "--client-id", "app", "--secret", "s", "--provider", value)
    assert "argument --provider:" in error and message in error


def test_secret_is_required_unless_the_client_names_it() -> None:
    assert "--secret is required" in (check_flags(login_args("--issuer", ISSUER)) or "")
    assert "--secret is required" in (check_flags(login_args("--provider", "sso")) or "")
    assert check_flags(login_args("--client", "app")) is None
    assert check_flags(login_args("--issuer", ISSUER, "--secret", "s")) is None


def test_the_operator_namespace_defaults_to_the_charts_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OAUTH_TOKEN_OPERATOR_OPERATOR_NAMESPACE", raising=False)
    parse = build_parser().parse_args
    assert CHART_NAMESPACE == "oauth-token-operator"
    assert parse(["token", "api"]).operator_namespace == CHART_NAMESPACE
    assert parse(["token", "api", "--operator-namespace", "ops"]).operator_namespace == "ops"
    login = ["login", "--client", "api", "--client-id", "x"]
    assert parse(login).operator_namespace == CHART_NAMESPACE
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_OPERATOR_NAMESPACE", "ops")
    assert build_parser().parse_args(["token", "api"]).operator_namespace == "ops"
    assert build_parser().parse_args(login).operator_namespace == "ops"


def test_the_help_says_where_the_operator_namespace_comes_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping
    for command in ("token", "login"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert (
            "(default: $OAUTH_TOKEN_OPERATOR_OPERATOR_NAMESPACE, else oauth-token-operator, the "
            "namespace of the README's helm install)"
        ) in capsys.readouterr().out


# --- --issuer: as before -------------------------------------------------------------------


async def test_issuer_keeps_the_flags_and_logins_defaults() -> None:
    source = await source_for(
        login_args("--issuer", ISSUER, "--secret", "s", "--scope", "openid"), FakeKube()
    )
    assert source == Source(
        ISSUER, "--issuer", CredentialKeys("s"), ClientAuth.NONE, ("openid",), None
    )
    keyed = login_args("--issuer", ISSUER, "--secret", "s", "--refresh-token-key", "rt")
    keyed.client_secret_file = "secret.txt"
    source = await source_for(keyed, FakeKube())
    assert source.keys == CredentialKeys("s", refresh_token="rt")
    assert source.client_auth is ClientAuth.POST  # a secret: client_secret_post, as before


async def test_a_method_that_needs_a_secret_stops_before_the_browser() -> None:
    args = login_args("--issuer", ISSUER, "--secret", "s")
    args.client_authentication = "client_secret_basic"
    with pytest.raises(CommandError, match="client_secret_basic needs --client-secret-file"):
        await source_for(args, FakeKube())
    args.client_authentication = "tls_client_auth"
    with pytest.raises(CommandError, match="tls_client_auth needs --client-certificate-file"):
        await source_for(args, FakeKube())


# --- --provider ----------------------------------------------------------------------------


async def test_a_cluster_provider_gives_its_issuer_ca_from_the_operators_namespace_and_scopes() -> (
    None
):
    kube = FakeKube()
    kube.cluster_objects[CLUSTER, "sso"] = sso(
        issuer=ISSUER,
        tls={"caBundleSecretRef": {"name": "sso-ca"}},
        defaults={
            "scopes": ["openid", "offline_access"],
            "clientAuthentication": "client_secret_basic",
        },
    )
    kube.secrets[HOME, "sso-ca"] = secret(**{"ca.crt": PEM})
    kube.secrets["ml", "sso-ca"] = secret(**{"ca.crt": OTHER_PEM})  # not this one
    source = await source_for(login_args("--provider", "sso", "--secret", "s"), kube)
    assert (source.issuer, source.ca_pem, source.scopes) == (
        ISSUER,
        PEM,
        ("openid", "offline_access"),
    )
    assert source.origin == "spec.issuer of ClusterOAuthProvider sso"
    assert source.client_auth is ClientAuth.NONE  # no secret: its default needs one
    confidential = login_args("--provider", "sso", "--secret", "s", "--scope", "email")
    confidential.client_secret_file = "secret.txt"
    source = await source_for(confidential, kube)
    assert (source.client_auth, source.scopes) == (ClientAuth.BASIC, ("email",))  # flags win
    with_file = await source_for(
        login_args("--provider", "sso", "--secret", "s", "--ca-file", "x"), kube
    )
    assert with_file.ca_pem is None  # --ca-file wins: the Secret is not read
    assert kube.reads.count("sso-ca") == 2


async def test_a_namespaced_provider_is_the_one_in_the_namespace_with_its_inline_ca() -> None:
    kube = FakeKube()
    own = {
        "metadata": {"name": "sso", "namespace": "ml"},
        "spec": {"issuer": ISSUER, "tls": {"caBundle": PEM}},
    }
    kube.cluster_objects[PLURALS[PROVIDER_KIND], "ml/sso"] = own
    source = await source_for(login_args("--provider", "OAuthProvider/sso", "--secret", "s"), kube)
    assert (source.issuer, source.ca_pem) == (ISSUER, PEM)
    elsewhere = login_args("--provider", "OAuthProvider/sso", "--secret", "s")
    elsewhere.namespace = "other"
    with pytest.raises(
        OAuthError, match=r"OAuthProvider sso \(--provider\) not found in namespace other"
    ) as missing:
        await source_for(elsewhere, kube)
    assert missing.value.reason == reasons.PROVIDER_NOT_FOUND


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            {"tokenEndpoint": ISSUER + "/token"},
            CommandError,
            "ClusterOAuthProvider sso has spec.tokenEndpoint and no spec.issuer: "
            "login needs an issuer",
        ),
        (
            {"issuer": ISSUER, "allowedGrantTypes": ["client_credentials"]},
            CommandError,
            "does not allow grantType refresh_token",
        ),
        (
            {"issuer": ISSUER, "allowedClientAuthentications": ["client_secret_basic"]},
            CommandError,
            "does not allow clientAuthentication none",
        ),
        ({"issuer": ISSUER, "namespaces": ["other"]}, OAuthError, "does not list namespace ml"),
        (
            {"issuer": ISSUER, "tls": {"caBundleSecretRef": {"name": "gone"}}},
            CommandError,
            f"InvalidCABundle: the CA bundle Secret {HOME}/gone of ClusterOAuthProvider sso not "
            f"found or has no key 'ca.crt'; if the operator runs in another namespace than "
            f"{HOME}, say which with --operator-namespace; or give --ca-file",
        ),
        ({}, OAuthError, "ClusterOAuthProvider sso: set exactly one"),
    ],
)
async def test_a_provider_login_cannot_use_says_why(
    spec: dict[str, Any], error: type[Exception], message: str
) -> None:
    kube = FakeKube()
    kube.cluster_objects[CLUSTER, "sso"] = sso(**spec)
    with pytest.raises(error) as raised:
        await source_for(login_args("--provider", "sso", "--secret", "s"), kube)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("refused", "message"),
    [
        (CLUSTER, "the API server refused to let you read ClusterOAuthProvider sso (HTTP 403: "),
        (
            "secrets",
            f"the API server refused to let you read the CA bundle Secret {HOME}/sso-ca of "
            "ClusterOAuthProvider sso (HTTP 403: ",
        ),
    ],
)
async def test_a_refused_read_names_what_and_what_to_do(refused: str, message: str) -> None:
    kube = Refusing(refused)
    kube.cluster_objects[CLUSTER, "sso"] = sso(
        issuer=ISSUER, tls={"caBundleSecretRef": {"name": "sso-ca"}}
    )
    with pytest.raises(CommandError) as raised:
        await source_for(login_args("--provider", "sso", "--secret", "s"), kube)
    assert message in str(raised.value)
    assert str(raised.value).endswith(("or give --issuer and --ca-file", "or give --ca-file"))


# --- --client ------------------------------------------------------------------------------


async def test_a_client_gives_its_providers_issuer_and_ca_its_scopes_secret_and_keys() -> None:
    kube = FakeKube()
    kube.cluster_objects[CLUSTER, "sso"] = sso(
        issuer=ISSUER,
        tls={"caBundleSecretRef": {"name": "sso-ca", "key": "bundle.pem"}},
        defaults={"scopes": ["openid", "offline_access"]},
    )
    kube.secrets[HOME, "sso-ca"] = secret(**{"bundle.pem": PEM})
    kube.cluster_objects[PLURAL, "ml/app"] = by_ref(
        clientAuthentication="none",
        credentialsSecretRef={"name": "app-creds", "refreshTokenKey": "rt"},
    )
    source = await source_for(login_args("--client", "app"), kube)
    assert (source.issuer, source.ca_pem) == (ISSUER, PEM)
    assert source.scopes == ("openid", "offline_access")  # the provider's defaults
    assert source.keys == CredentialKeys("app-creds", refresh_token="rt")
    assert source.client_auth is ClientAuth.NONE
    assert (
        source.origin
        == "spec.issuer of ClusterOAuthProvider sso (the provider of OAuthClient ml/app)"
    )
    kube.cluster_objects[PLURAL, "ml/app"] = by_ref(
        clientAuthentication="client_secret_post", scopes=["openid"]
    )
    args = login_args("--client", "app", "--secret", "rapidata-credentials")  # the same: fine
    args.client_secret_file = "secret.txt"
    source = await source_for(args, kube)
    assert (source.client_auth, source.scopes) == (ClientAuth.POST, ("openid",))


async def test_a_client_with_an_inline_issuer_gives_its_own_ca() -> None:
    kube = FakeKube()
    kube.cluster_objects[PLURAL, "ml/app"] = client(
        issuer=ISSUER,
        grantType="refresh_token",
        clientAuthentication="none",
        tls={"caBundleSecretRef": {"name": "app-ca"}},
    )
    kube.secrets["ml", "app-ca"] = secret(**{"ca.crt": PEM})
    source = await source_for(login_args("--client", "app"), kube)
    assert (source.issuer, source.ca_pem, source.origin) == (
        ISSUER,
        PEM,
        "spec.issuer of OAuthClient ml/app",
    )
    assert source.keys.secret_name == "rapidata-credentials"


@pytest.mark.parametrize(
    ("argv", "obj", "message"),
    [
        ((), None, "OAuthClient ml/app not found"),
        (
            (),
            client(),
            "OAuthClient ml/app has grantType client_credentials: login obtains the refresh "
            "token of a refresh_token client",
        ),
        (
            (),
            client(grantType="refresh_token", issuer=None, tokenEndpoint=ISSUER + "/token"),
            "OAuthClient ml/app has spec.tokenEndpoint and no spec.issuer: login needs an issuer",
        ),
        (
            (),
            client(grantType="refresh_token", clientAuthentication="private_key_jwt"),
            "authenticates with private_key_jwt, which login does not do; choose one with "
            "--client-authentication",
        ),
        (
            (),
            client(grantType="refresh_token"),
            "client authentication client_secret_basic needs --client-secret-file",
        ),
        (
            ("--secret", "other"),
            client(grantType="refresh_token", clientAuthentication="none"),
            "OAuthClient ml/app reads Secret 'rapidata-credentials' (--secret 'other' names "
            "another): leave --secret out",
        ),
        (
            ("--refresh-token-key", "rt"),
            client(grantType="refresh_token", clientAuthentication="none"),
            "reads key 'refresh_token' (--refresh-token-key 'rt' names another)",
        ),
        ((), client(grantType="nope"), "InvalidSpec: OAuthClient ml/app: spec.grantType"),
    ],
)
async def test_a_client_login_cannot_use_says_why(
    argv: tuple[str, ...], obj: dict[str, Any] | None, message: str
) -> None:
    kube = FakeKube()
    if obj is not None:
        kube.cluster_objects[PLURAL, "ml/app"] = obj
    with pytest.raises(CommandError) as raised:
        await source_for(login_args("--client", "app", *argv), kube)
    assert message in str(raised.value)


async def test_a_clients_provider_is_checked_as_the_operator_checks_it() -> None:
    kube = FakeKube()
    kube.cluster_objects[PLURAL, "ml/app"] = by_ref(clientAuthentication="none")
    with pytest.raises(OAuthError) as missing:
        await source_for(login_args("--client", "app"), kube)
    assert missing.value.reason == reasons.PROVIDER_NOT_FOUND
    kube.cluster_objects[CLUSTER, "sso"] = sso(
        issuer=ISSUER, allowedGrantTypes=["client_credentials"]
    )
    with pytest.raises(OAuthError) as refused:
        await source_for(login_args("--client", "app"), kube)
    assert refused.value.reason == reasons.PROVIDER_NOT_ALLOWED
    refusing = Refusing(CLUSTER)
    refusing.cluster_objects = kube.cluster_objects
    with pytest.raises(
        CommandError,
        match="refused to let you read ClusterOAuthProvider sso, the provider of OAuthClient "
        "ml/app",
    ):
        await source_for(login_args("--client", "app"), refusing)
