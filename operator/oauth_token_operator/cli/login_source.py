"""Where `login` goes and what it asks for, decided before the browser opens: from the flags
(--issuer, --ca-file, --scope), from a provider (--provider: its issuer, CA bundle, default
scopes and client authentication) or from an OAuthClient (--client: the issuer and CA bundle
of its provider or its own, its scopes, client authentication, credentials Secret and
keys). The flags a user gives win over what a provider says; an OAuthClient's Secret and
keys are where the operator reads the refresh token, so a flag naming others is refused.
Everything is read with the user's own credentials."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from oauth_token_operator import reasons
from oauth_token_operator.cli.reads import CommandError, read_as_user
from oauth_token_operator.exchange.providers import PLURALS, provider_for, resolve
from oauth_token_operator.kube.ports import ProviderAPI
from oauth_token_operator.oauth.types import (
    CLUSTER_PROVIDER_KIND,
    PROVIDER_KIND,
    ClientAuth,
    GrantType,
)
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    CredentialKeys,
    OAuthClientSpec,
    ProviderCA,
    SpecError,
)
from oauth_token_operator.wire import decode_data

# The methods login authenticates the code exchange with (--client-authentication).
LOGIN_AUTHS = (
    ClientAuth.BASIC,
    ClientAuth.POST,
    ClientAuth.TLS_CLIENT_AUTH,
    ClientAuth.SELF_SIGNED_TLS_CLIENT_AUTH,
    ClientAuth.NONE,
)
# --provider's KIND/ as kubectl takes it: any case, the kind or its plural.
_KINDS = {kind.lower(): kind for kind in PLURALS} | {
    plural: kind for kind, plural in PLURALS.items()
}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# The flags that say where the refresh token is stored, and the CredentialKeys field of each.
_KEY_FLAGS = (
    ("secret", "secret_name"),
    ("client_id_key", "client_id"),
    ("client_secret_key", "client_secret"),
    ("refresh_token_key", "refresh_token"),
)


class SourceAPI(ProviderAPI, Protocol):
    """The reads: OAuthClients and providers, namespace labels, CA bundle Secrets."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Source:
    issuer: str
    # What named the issuer, for messages: "--issuer", "spec.issuer of ClusterOAuthProvider sso".
    origin: str
    keys: CredentialKeys  # the Secret to store in, and its keys
    client_auth: ClientAuth
    scopes: tuple[str, ...] = ()
    # A provider's or OAuthClient's CA bundle; None: --ca-file's, or the system's.
    ca_pem: str | None = field(default=None, repr=False)


def provider_arg(value: str) -> tuple[str, str]:
    """--provider's value as (kind, name): NAME or ClusterOAuthProvider/NAME, or
    OAuthProvider/NAME (in -n's namespace)."""
    prefix, slash, name = value.rpartition("/")
    kind = _KINDS.get(prefix.lower()) if slash else CLUSTER_PROVIDER_KIND
    if kind is None:
        raise argparse.ArgumentTypeError(
            f"{value!r}: the kind is {CLUSTER_PROVIDER_KIND} (the default) or {PROVIDER_KIND}"
        )
    if not _NAME.match(name) or len(name) > 253:
        raise argparse.ArgumentTypeError(f"{value!r}: {name!r} is not an object name")
    return kind, name


def check_flags(args: argparse.Namespace) -> str | None:
    """What argparse cannot say: --secret is required unless --client names the Secret."""
    if args.client is None and args.secret is None:
        return (
            "--secret is required (the credentials Secret to store the refresh token in), "
            "unless --client names the OAuthClient that reads it"
        )
    return None


async def source_for(args: argparse.Namespace, api: SourceAPI) -> Source:
    """The issuer, CA, scopes, client authentication and Secret, from the flags, --provider
    or --client. Raises CommandError, or OAuthError (a provider missing, invalid, or not
    serving the namespace)."""
    if args.issuer:
        return _finish(args, args.issuer, "--issuer", _keys(args), tuple(args.scope), None)
    if args.provider:
        return await _from_provider(args, api, *args.provider)
    return await _from_client(args, api)


async def _from_provider(args: argparse.Namespace, api: SourceAPI, kind: str, name: str) -> Source:
    what = f"{kind} {name}"
    provider = await read_as_user(
        provider_for(api, kind, name, args.namespace, args.operator_namespace, "--provider"),
        what,
        "login reads it as you: ask for get on it, or give --issuer and --ca-file",
        PLURALS[kind],
    )
    issuer = _issuer(provider.endpoint.issuer, what)
    if provider.grant_types and GrantType.REFRESH_TOKEN not in provider.grant_types:
        raise CommandError(
            f"{what} does not allow grantType refresh_token (spec.allowedGrantTypes): there is "
            "no refresh token to log in for"
        )
    default = provider.default_auth if args.client_secret_file else None
    source = _finish(
        args,
        issuer,
        f"spec.issuer of {what}",
        _keys(args),
        tuple(args.scope) or provider.scopes,
        default if default in LOGIN_AUTHS else None,
    )
    if provider.client_auths and source.client_auth not in provider.client_auths:
        raise CommandError(
            f"{what} does not allow clientAuthentication {source.client_auth.value} (it allows "
            f"{', '.join(sorted(a.value for a in provider.client_auths))}); choose one with "
            "--client-authentication"
        )
    if args.ca_file:
        return source
    cluster = kind == CLUSTER_PROVIDER_KIND
    return replace(source, ca_pem=await _ca_pem(api, provider.ca, what, cluster))


async def _from_client(args: argparse.Namespace, api: SourceAPI) -> Source:
    key = f"{args.namespace}/{args.client}"
    body = await api.get_object(API_GROUP, API_VERSION, PLURAL, args.namespace, args.client)
    if body is None:
        raise CommandError(f"OAuthClient {key} not found")
    try:
        spec = parse(body)
    except SpecError as exc:
        raise CommandError(f"{reasons.INVALID_SPEC}: OAuthClient {key}: {exc}") from None
    request = spec.request
    if request.grant_type is not GrantType.REFRESH_TOKEN:
        raise CommandError(
            f"OAuthClient {key} has grantType {request.grant_type.value}: login obtains the "
            "refresh token of a refresh_token client"
        )
    what = f"OAuthClient {key}"
    endpoint = request.endpoint
    if endpoint.provider is not None:
        what = f"{endpoint.provider_ref} (the provider of OAuthClient {key})"
        spec = await read_as_user(
            resolve(api, spec, args.operator_namespace),
            f"{endpoint.provider_ref}, the provider of OAuthClient {key}",
            "login reads it as you: ask for get on it, or give --issuer and --ca-file",
            PLURALS[endpoint.provider_kind],
        )
        request = spec.request
    issuer = _issuer(request.endpoint.issuer, what)
    auth = request.client_auth
    if args.client_authentication is None and auth not in LOGIN_AUTHS:
        raise CommandError(
            f"OAuthClient {key} authenticates with {auth.value}, which login does not do; "
            "choose one with --client-authentication"
        )
    source = _finish(
        args,
        issuer,
        f"spec.issuer of {what}",
        _keys(args, spec),
        tuple(args.scope) or request.scopes,
        auth,
    )
    if args.ca_file:
        return source
    ca, cluster = spec.provider_ca, endpoint.provider_kind == CLUSTER_PROVIDER_KIND
    if ca is None and spec.ca_bundle:
        ca, cluster = ProviderCA(secret=(spec.key.namespace, *spec.ca_bundle)), False
    return replace(source, ca_pem=await _ca_pem(api, ca, what, cluster))


def _issuer(issuer: str | None, what: str) -> str:
    if not issuer:
        raise CommandError(
            f"{what} has spec.tokenEndpoint and no spec.issuer: login needs an issuer, whose "
            "OpenID discovery names the authorization endpoint; give --issuer (and --ca-file)"
        )
    return issuer


def _keys(args: argparse.Namespace, spec: OAuthClientSpec | None = None) -> CredentialKeys:
    """Where the refresh token goes: the flags (defaults: client_id, client_secret,
    refresh_token), or the OAuthClient's credentials Secret and keys, which a flag may only
    repeat."""
    if spec is None:
        given = {name: getattr(args, flag) for flag, name in _KEY_FLAGS if getattr(args, flag)}
        return CredentialKeys(**{"secret_name": "", **given})
    for flag, name in _KEY_FLAGS:
        given, needed = getattr(args, flag), getattr(spec.credentials, name)
        if given is not None and given != needed:
            option = "--" + flag.replace("_", "-")
            raise CommandError(
                f"OAuthClient {spec.key} reads {'Secret' if name == 'secret_name' else 'key'} "
                f"{needed!r} ({option} {given!r} names another): leave {option} out"
            )
    return spec.credentials


def _finish(
    args: argparse.Namespace,
    issuer: str,
    origin: str,
    keys: CredentialKeys,
    scopes: tuple[str, ...],
    default_auth: ClientAuth | None,
) -> Source:
    """The client authentication: --client-authentication, else `default_auth` (the
    provider's or the client's), else client_secret_post with a secret and none without."""
    secret = bool(args.client_secret_file)
    auth = ClientAuth(
        args.client_authentication
        or default_auth
        or (ClientAuth.POST if secret else ClientAuth.NONE)
    )
    if auth in (ClientAuth.BASIC, ClientAuth.POST) and not secret:
        raise CommandError(f"client authentication {auth.value} needs --client-secret-file")
    if auth.mutual_tls and not args.client_certificate_file:
        raise CommandError(f"{auth.value} needs --client-certificate-file")
    return Source(issuer, origin, keys, auth, scopes)


async def _ca_pem(
    api: SourceAPI,
    ca: ProviderCA | None,
    whose: str,
    cluster: bool,
) -> str | None:
    """The CA bundle's PEM: inline, or read from its Secret (`cluster`: a
    ClusterOAuthProvider's, in --operator-namespace)."""
    if ca is None or ca.secret is None:
        return ca.pem if ca else None
    namespace, name, key = ca.secret
    secret = await read_as_user(
        api.get_secret(namespace, name),
        f"the CA bundle Secret {namespace}/{name} of {whose}",
        "login reads it as you: ask for get on that Secret, or give --ca-file",
    )
    pem = decode_data(secret).get(key)
    if not pem:
        hint = ""
        if secret is None and cluster:
            hint = (
                f"; if the operator runs in another namespace than {namespace}, say which "
                "with --operator-namespace"
            )
        raise CommandError(
            f"{reasons.INVALID_CA_BUNDLE}: the CA bundle Secret {namespace}/{name} of {whose} "
            f"not found or has no key {key!r}{hint}; or give --ca-file"
        )
    return pem
