"""Parse an OAuthClient object into the immutable values of resource/spec.py, or say in a
SpecError what is wrong with it. Admission (the CRD schema and CEL rules) rejects most bad
input first; this re-checks what the operator relies on, so an object admitted by an older
CRD still gets a clear error instead of a crash."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from oauth_token_operator.oauth.types import (
    ACCESS_TOKEN_TYPE,
    CLUSTER_PROVIDER_KIND,
    JWT_TOKEN_TYPE,
    PROVIDER_KIND,
    ClientAuth,
    Endpoint,
    GrantType,
    TokenRequest,
)
from oauth_token_operator.resource.policy import (
    KUBERNETES_AUDIENCES,
    SERVICE_ACCOUNT_TOKEN_SECONDS,
    minting_output_refusal,
)
from oauth_token_operator.resource.spec import (
    MIN_DEFAULT_LIFETIME,
    RESERVED_PARAMS,
    SECRETLESS_AUTH,
    CredentialKeys,
    OAuthClientSpec,
    ObjectKey,
    OutputSecret,
    RefreshPolicy,
    RolloutTarget,
    ServiceAccountToken,
    SpecError,
    WorkloadKind,
)
from oauth_token_operator.resource.templates import TemplateError, compile_template

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
# The API server's rule for Secret data keys: at most 253 of these characters, never "."
# and never starting with "..".
_SECRET_KEY = re.compile(r"^(?!\.\.)(?!\.$)[-._a-zA-Z0-9]{1,253}$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_E = TypeVar("_E", bound=StrEnum)


def parse_duration(value: str, field_name: str) -> float:
    """Go-style durations as Kubernetes users write them: 90s, 10m, 1h30m, 1.5h."""
    if not _DURATION.match(value):
        raise SpecError(f"{field_name}: {value!r} is not a duration such as 90s, 10m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def _str(obj: dict[str, Any], name: str, default: str, path: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        raise SpecError(f"{path}.{name} must be a string")
    return value


def _string_map(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(f"{path} must map strings to strings")
    return tuple(sorted(value.items()))


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{path} must be a list of non-empty strings")
    return tuple(value)


def _enum(cls: type[_E], value: Any, path: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise SpecError(f"{path}: {value!r} is not one of {allowed}") from None


def _endpoint(spec: dict[str, Any]) -> Endpoint:
    issuer, token_endpoint, ref = (spec.get(k) for k in ("issuer", "tokenEndpoint", "providerRef"))
    if [bool(issuer), bool(token_endpoint), bool(ref)].count(True) != 1:
        raise SpecError("set exactly one of spec.issuer, spec.tokenEndpoint or spec.providerRef")
    if isinstance(ref, dict):
        kind = _str(ref, "kind", CLUSTER_PROVIDER_KIND, "spec.providerRef")
        if kind not in (CLUSTER_PROVIDER_KIND, PROVIDER_KIND):
            raise SpecError(
                f"spec.providerRef.kind {kind!r} is not one of {CLUSTER_PROVIDER_KIND}, "
                f"{PROVIDER_KIND}"
            )
        name = _str(ref, "name", "", "spec.providerRef")
        if not name:
            raise SpecError("spec.providerRef.name is required")
        return Endpoint(provider=name, provider_kind=kind)
    for name, url in (("issuer", issuer), ("tokenEndpoint", token_endpoint)):
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("https://", "http://"))
        ):
            raise SpecError(f"spec.{name} must be an http(s) URL")
        if isinstance(url, str) and "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise SpecError(
                f"spec.{name} must not contain credentials (user:password@): the client's "
                "credentials belong in credentialsSecretRef"
            )
    return Endpoint(issuer=issuer, token_endpoint=token_endpoint)


def _refresh_policy(refresh: dict[str, Any]) -> RefreshPolicy:
    defaults = RefreshPolicy()
    if "renewBefore" in refresh and "renewBeforePercentage" in refresh:
        raise SpecError(
            "set at most one of spec.refresh.renewBefore and spec.refresh.renewBeforePercentage"
        )

    def duration(name: str, default: float) -> float:
        raw = refresh.get(name)
        return default if raw is None else parse_duration(str(raw), f"spec.refresh.{name}")

    pct = refresh.get("renewBeforePercentage", defaults.renew_before_percentage)
    jitter = refresh.get("jitterPercentage", defaults.jitter_percentage)
    if not isinstance(pct, int) or not 1 <= pct <= 90:
        raise SpecError("spec.refresh.renewBeforePercentage must be an integer from 1 to 90")
    if not isinstance(jitter, int) or not 0 <= jitter <= 50:
        raise SpecError("spec.refresh.jitterPercentage must be an integer from 0 to 50")
    default_lifetime = duration("defaultLifetime", defaults.default_lifetime)
    if default_lifetime < MIN_DEFAULT_LIFETIME:
        raise SpecError(
            "spec.refresh.defaultLifetime must be at least 1m: a shorter token cannot be "
            "refreshed before it expires"
        )
    return RefreshPolicy(
        renew_before_percentage=pct,
        renew_before=duration("renewBefore", 0.0) or None,
        jitter_percentage=jitter,
        min_interval=duration("minInterval", defaults.min_interval),
        default_lifetime=default_lifetime,
    )


def _check_templates(output: OutputSecret) -> None:
    for key, source in output.templates:
        if not _SECRET_KEY.match(key):
            raise SpecError(f"spec.secret.templates: {key!r} is not a valid Secret data key")
        if key in output.fixed_keys():
            raise SpecError(
                f"spec.secret.templates[{key}]: the operator writes this key itself "
                "(accessTokenKey, tokenTypeKey, expiresAtKey or idTokenKey)"
            )
        try:
            compile_template(key, source)
        except TemplateError as exc:
            raise SpecError(str(exc)) from None


def _rollout_targets(value: Any) -> tuple[RolloutTarget, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise SpecError("spec.rolloutTargets must be a list of {kind, name}")
    targets = []
    for i, target in enumerate(value):
        path = f"spec.rolloutTargets[{i}]"
        name = _str(target, "name", "", path)
        if not _SECRET_NAME.match(name):
            raise SpecError(f"{path}.name {name!r} is not a valid workload name")
        targets.append(RolloutTarget(_enum(WorkloadKind, target.get("kind"), f"{path}.kind"), name))
    if len(set(targets)) != len(targets):
        raise SpecError("spec.rolloutTargets lists a workload twice")
    return tuple(targets)


def _service_account_token(value: Any, auth: ClientAuth) -> ServiceAccountToken | None:
    path = "spec.serviceAccountToken"
    if auth is not ClientAuth.SERVICE_ACCOUNT_TOKEN:
        if value:
            raise SpecError(f"{path} is used only with clientAuthentication service_account_token")
        return None
    if not isinstance(value, dict):
        raise SpecError(f"clientAuthentication service_account_token needs {path}")
    return _service_account(value, path)


@dataclass(frozen=True)
class _Exchange:
    secret: tuple[str, str] | None
    service_account: ServiceAccountToken | None
    subject_token_type: str | None
    requested_token_type: str | None


def _token_exchange(value: Any, grant: GrantType) -> _Exchange:
    path = "spec.tokenExchange"
    if grant is not GrantType.TOKEN_EXCHANGE:
        if value:
            raise SpecError(f"{path} is used only with grantType token_exchange")
        return _Exchange(None, None, None, None)
    if not isinstance(value, dict) or not isinstance(value.get("subjectToken"), dict):
        raise SpecError(f"grantType token_exchange needs {path}.subjectToken")
    subject = value["subjectToken"]
    ref, account = subject.get("secretKeyRef"), subject.get("serviceAccountToken")
    if bool(ref) == bool(account):
        raise SpecError(
            f"{path}.subjectToken: set exactly one of secretKeyRef and serviceAccountToken"
        )
    secret = service_account = None
    if ref:
        where = f"{path}.subjectToken.secretKeyRef"
        secret = (_str(ref, "name", "", where), _str(ref, "key", "", where))
        if not secret[0] or not secret[1]:
            raise SpecError(f"{where} needs name and key")
    else:
        service_account = _service_account(account, f"{path}.subjectToken.serviceAccountToken")
    default_type = JWT_TOKEN_TYPE if service_account else ACCESS_TOKEN_TYPE
    return _Exchange(
        secret,
        service_account,
        _str(value, "subjectTokenType", default_type, path) or default_type,
        _str(value, "requestedTokenType", "", path) or None,
    )


def _service_account(value: Any, path: str) -> ServiceAccountToken:
    if not isinstance(value, dict):
        raise SpecError(f"{path} must be an object")
    name = _str(value, "serviceAccountName", "", path)
    if not _SECRET_NAME.match(name):
        raise SpecError(
            f"{path}.serviceAccountName {name!r} is not a ServiceAccount name (only one in the "
            "OAuthClient's own namespace can be used)"
        )
    audience = _str(value, "audience", "", path)
    if not audience:
        raise SpecError(f"{path}.audience is required (the audience the provider expects)")
    if audience in KUBERNETES_AUDIENCES:
        raise SpecError(f"{path}.audience {audience!r} is one the Kubernetes API accepts")
    seconds = value.get("expirationSeconds", 600)
    low, high = SERVICE_ACCOUNT_TOKEN_SECONDS
    if not isinstance(seconds, int) or not low <= seconds <= high:
        raise SpecError(f"{path}.expirationSeconds must be an integer from {low} to {high}")
    return ServiceAccountToken(name, audience, seconds)


def parse(body: dict[str, Any]) -> OAuthClientSpec:
    """Turns an OAuthClient object (as a dict) into an OAuthClientSpec or raises SpecError."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec is missing")
    key = ObjectKey(meta.get("namespace", ""), meta.get("name", ""))

    grant = _enum(GrantType, spec.get("grantType", "client_credentials"), "spec.grantType")
    # Unset: client_secret_basic, unless the client's provider has a default
    # (exchange/providers.py).
    auth_defaulted = spec.get("clientAuthentication") is None
    auth = _enum(
        ClientAuth,
        spec.get("clientAuthentication") or "client_secret_basic",
        "spec.clientAuthentication",
    )
    if auth is ClientAuth.NONE and grant is not GrantType.REFRESH_TOKEN:
        raise SpecError(
            "clientAuthentication 'none' (a public client) only works with grantType "
            "refresh_token; client_credentials needs a client secret or private key"
        )

    client_id = spec.get("clientId")
    creds = spec.get("credentialsSecretRef")
    if client_id is not None:
        if not isinstance(client_id, str) or not client_id:
            raise SpecError("spec.clientId must be a non-empty string")
        if creds:
            raise SpecError("set one of spec.clientId and spec.credentialsSecretRef, not both")
        if auth not in SECRETLESS_AUTH or grant is GrantType.REFRESH_TOKEN:
            raise SpecError(
                "spec.clientId (no credentials Secret) works only with clientAuthentication "
                "service_account_token, tls_client_auth or self_signed_tls_client_auth and a "
                "grant other than refresh_token; otherwise use spec.credentialsSecretRef"
            )
        creds = {"name": ""}
    elif not isinstance(creds, dict) or not creds.get("name"):
        raise SpecError(
            "spec.credentialsSecretRef.name (or, without a secret, spec.clientId) is required"
        )
    path = "spec.credentialsSecretRef"
    credentials = CredentialKeys(
        secret_name=_str(creds, "name", "", path),
        client_id=_str(creds, "clientIdKey", "client_id", path),
        client_secret=_str(creds, "clientSecretKey", "client_secret", path),
        refresh_token=_str(creds, "refreshTokenKey", "refresh_token", path),
        private_key=_str(creds, "privateKeyKey", "private_key", path),
    )

    extra = _string_map(spec.get("extraParams"), "spec.extraParams")
    clashing = sorted(k for k, _ in extra if k in RESERVED_PARAMS)
    if clashing:
        raise SpecError(
            f"spec.extraParams must not set {', '.join(clashing)}: the operator sets it itself"
        )
    audience = spec.get("audience")
    if audience is not None and not isinstance(audience, str):
        raise SpecError("spec.audience must be a string")

    out = spec.get("secret") or {}
    path = "spec.secret"
    output = OutputSecret(
        name=_str(out, "name", f"{key.name}-token", path) or f"{key.name}-token",
        type=_str(out, "type", "Opaque", path),
        access_token_key=_str(out, "accessTokenKey", "access_token", path),
        token_type_key=_str(out, "tokenTypeKey", "token_type", path),
        expires_at_key=_str(out, "expiresAtKey", "expires_at", path),
        id_token_key=_str(out, "idTokenKey", "", path),
        labels=_string_map(out.get("labels"), "spec.secret.labels"),
        annotations=_string_map(out.get("annotations"), "spec.secret.annotations"),
        templates=_string_map(out.get("templates"), "spec.secret.templates"),
        values=_string_map(out.get("values"), "spec.secret.values"),
        values_config_map=_str(out.get("valuesFrom") or {}, "configMapName", "", path) or None,
    )
    if output.name == credentials.secret_name:
        raise SpecError("spec.secret.name must differ from spec.credentialsSecretRef.name")
    if not _SECRET_NAME.match(output.name) or len(output.name) > 253:
        raise SpecError(f"spec.secret.name {output.name!r} is not a valid Secret name")
    keys = output.fixed_keys()
    if len(keys) != len(set(keys)):
        raise SpecError(
            "spec.secret: accessTokenKey, tokenTypeKey, expiresAtKey and idTokenKey must be "
            "different keys (one would overwrite another)"
        )
    _check_templates(output)
    if refusal := minting_output_refusal(output.type, output.labels, output.annotations):
        raise SpecError(refusal)

    tls = spec.get("tls") or {}
    certificate_ref = tls.get("clientCertificateSecretRef") or {}
    client_certificate = (
        _str(certificate_ref, "name", "", "spec.tls.clientCertificateSecretRef") or None
    )
    if auth.mutual_tls and client_certificate is None:
        raise SpecError(
            f"clientAuthentication {auth.value} needs spec.tls.clientCertificateSecretRef "
            "(a kubernetes.io/tls Secret with the client certificate)"
        )
    service_account_token = _service_account_token(spec.get("serviceAccountToken"), auth)
    exchange = _token_exchange(spec.get("tokenExchange"), grant)
    endpoint = _endpoint(spec)
    if (service_account_token or exchange.service_account or exchange.secret) and not (
        endpoint.issuer or endpoint.token_endpoint or "https://"  # a provider's: checked later
    ).startswith("https://"):
        raise SpecError(
            "a ServiceAccount token or a subject token is a credential: the "
            "issuer or tokenEndpoint must be https"
        )
    ca = tls.get("caBundleSecretRef")
    ca_bundle = None
    if ca and endpoint.provider:
        raise SpecError(
            "spec.tls.caBundleSecretRef is not used with spec.providerRef: the provider's CA "
            "bundle is (spec.tls of the provider)"
        )
    if ca:
        ca_bundle = (
            _str(ca, "name", "", "spec.tls.caBundleSecretRef"),
            _str(ca, "key", "ca.crt", "spec.tls.caBundleSecretRef"),
        )

    return OAuthClientSpec(
        key=key,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        request=TokenRequest(
            endpoint=endpoint,
            grant_type=grant,
            client_auth=auth,
            scopes=_string_list(spec.get("scopes"), "spec.scopes"),
            audience=audience or None,
            resources=_string_list(spec.get("resource"), "spec.resource"),
            extra_params=extra,
            subject_token_type=exchange.subject_token_type,
            requested_token_type=exchange.requested_token_type,
        ),
        credentials=credentials,
        output=output,
        refresh=_refresh_policy(spec.get("refresh") or {}),
        ca_bundle=ca_bundle,
        client_certificate=client_certificate,
        service_account_token=service_account_token,
        client_id=client_id,
        subject_secret=exchange.secret,
        subject_service_account=exchange.service_account,
        rollout_targets=_rollout_targets(spec.get("rolloutTargets")),
        client_auth_defaulted=auth_defaulted,
    )
