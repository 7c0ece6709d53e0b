"""Pure functions over Secret bodies: reading credentials, recognising the Secrets the
operator owns, reading back the token times they record, and building the output Secret."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.oauth.types import (
    ClientAuth,
    Credentials,
    GrantType,
    OAuthError,
    Outcome,
    Token,
)
from oauth_token_operator.resource.spec import (
    API_GROUP,
    API_VERSION,
    CLIENT_CERTIFICATE_ANNOTATION,
    EXPIRES_AT_ANNOTATION,
    ISSUED_AT_ANNOTATION,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_LABEL,
    SPEC_HASH_ANNOTATION,
    OAuthClientSpec,
)
from oauth_token_operator.resource.templates import TemplateError, compile_template, render
from oauth_token_operator.wire import decode_data, encode_data, parse_rfc3339, rfc3339

# A stand-in token for rendering templates before the exchange: a template that fails then
# fails without spending a token request (or a refresh token's rotation). Its sizes are
# those of a sizeable JWT (2 KB), so that the size bounds, which follow the sizes of what is
# rendered, hold for the real one too (a larger one is still checked after the exchange).
TRIAL_TOKEN_CHARS = 2048
_TRIAL_TOKEN = Token(
    "t" * TRIAL_TOKEN_CHARS,
    "Bearer",
    0.0,
    3600.0,
    scope="s" * 1024,
    id_token="i" * TRIAL_TOKEN_CHARS,
)
# The API server refuses a Secret whose values hold more than this in all.
MAX_SECRET_BYTES = 1024 * 1024


def credentials_from(
    spec: OAuthClientSpec, secret: dict[str, Any], tls_secret: dict[str, Any] | None = None
) -> Credentials:
    """The credentials the spec asks for, or a CredentialsInvalid error naming the missing key
    (never its value). `tls_secret`: the client certificate Secret, when the spec names one."""
    data = decode_data(secret)
    keys = spec.credentials
    request = spec.request

    def need(key: str, why: str) -> str:
        value = data.get(key, "").strip()
        if not value:
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.CREDENTIALS_INVALID,
                f"Secret {keys.secret_name} has no key {key!r} ({why})",
            )
        return value

    client_id = spec.client_id or need(keys.client_id, "the client ID")
    secret_value = refresh_token = private_key = None
    if request.client_auth in (ClientAuth.BASIC, ClientAuth.POST):
        secret_value = need(keys.client_secret, f"needed by {request.client_auth.value}")
    elif request.client_auth is ClientAuth.PRIVATE_KEY_JWT:
        private_key = need(keys.private_key, "needed by private_key_jwt")
    if request.grant_type is GrantType.REFRESH_TOKEN:
        refresh_token = need(keys.refresh_token, "needed by the refresh_token grant")
    certificate = key = None
    if spec.client_certificate:
        tls = decode_data(tls_secret or {})
        certificate, key = tls.get("tls.crt", "").strip(), tls.get("tls.key", "").strip()
        if not certificate or not key:
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.CREDENTIALS_INVALID,
                f"Secret {spec.client_certificate} has no tls.crt and tls.key (the client "
                "certificate; cert-manager's Certificate writes such a Secret)",
            )
    return Credentials(client_id, secret_value, refresh_token, private_key, certificate, key)


def fingerprint(creds: Credentials) -> str:
    """Identifies the client's identity (ID, secret, private key, client certificate)
    without keeping or showing it. The refresh token is left out: it rotates on every
    refresh (ours, a sibling OAuthClient's, the CLI's), which is no reason for an extra
    exchange."""
    identity = (
        creds.client_id,
        creds.client_secret,
        creds.private_key,
        creds.client_certificate,
        creds.client_key,
    )
    material = "\0".join(v or "" for v in identity)
    return hashlib.sha256(material.encode()).hexdigest()


def refresh_fingerprint(holder: Credentials | Token) -> str:
    """Identifies a refresh token without keeping or showing it."""
    return hashlib.sha256((holder.refresh_token or "").encode()).hexdigest()


def owned_by(secret: dict[str, Any], uid: str) -> bool:
    """True when the Secret names this OAuthClient (by uid) as its controller."""
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def ours(secret: dict[str, Any], spec: OAuthClientSpec) -> bool:
    """Owned by this OAuthClient, or written by the operator for an earlier OAuthClient of
    the same name (deleted and re-created, restored from a backup, orphaned by a delete):
    such a Secret is adopted, the next write names the current uid. Only one OAuthClient of
    a name exists at a time, so no live client loses its Secret to another."""
    if owned_by(secret, spec.uid):
        return True
    metadata = secret.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(OWNER_LABEL) != spec.key.name:
        return False
    controllers = [r for r in metadata.get("ownerReferences") or [] if r.get("controller")]
    return all(
        r.get("kind") == KIND
        and str(r.get("apiVersion", "")).startswith(f"{API_GROUP}/")
        and r.get("name") == spec.key.name
        for r in controllers
    )


# The annotations an output Secret's token times live in (drift repair restores them).
_TOKEN_ANNOTATIONS = (ISSUED_AT_ANNOTATION, EXPIRES_AT_ANNOTATION, SPEC_HASH_ANNOTATION)


def repaired(written: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any] | None:
    """`seen` (an output Secret as the watch shows it) with the data and token annotations
    the operator last wrote, or None when those did not drift. Keeps seen's resourceVersion,
    so the repair loses to a concurrent write instead of overwriting it."""

    def token_annotations(body: dict[str, Any]) -> dict[str, str]:
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        return {k: annotations[k] for k in _TOKEN_ANNOTATIONS if k in annotations}

    ours_now = token_annotations(written)
    if (written.get("data") or {}) == (seen.get("data") or {}) and ours_now == token_annotations(
        seen
    ):
        return None
    metadata = dict(seen.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **ours_now}
    return {**seen, "metadata": metadata, "data": dict(written.get("data") or {})}


@dataclass(frozen=True)
class RecordedToken:
    issued_at: float
    expires_at: float
    spec_hash: str


def recorded_token(secret: dict[str, Any], access_token_key: str) -> RecordedToken | None:
    """The token times an output Secret records, if it still holds a token."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    issued = parse_rfc3339(annotations.get(ISSUED_AT_ANNOTATION))
    expires = parse_rfc3339(annotations.get(EXPIRES_AT_ANNOTATION))
    if issued is None or expires is None or not (secret.get("data") or {}).get(access_token_key):
        return None
    return RecordedToken(issued, expires, annotations.get(SPEC_HASH_ANNOTATION, ""))


def template_values(spec: OAuthClientSpec, config_map: dict[str, Any] | None) -> dict[str, str]:
    """The values templates see: the ConfigMap's data, then the literal values over them."""
    if spec.output.values_config_map and config_map is None:
        raise OAuthError(
            Outcome.TRANSIENT,  # no ConfigMap watch: retried with the short backoff
            reasons.TEMPLATE_FAILED,
            f"ConfigMap {spec.output.values_config_map} (spec.secret.valuesFrom) not found in "
            f"{spec.key.namespace}",
        )
    data = (config_map or {}).get("data") or {}
    return {**{str(k): str(v) for k, v in data.items()}, **dict(spec.output.values)}


def rendered(spec: OAuthClientSpec, token: Token, values: Mapping[str, str]) -> dict[str, str]:
    """The templated keys of the output Secret, or a TemplateFailed error naming the
    template (never a value)."""
    if not spec.output.templates:
        return {}
    context = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": rfc3339(token.expires_at),
        "issued_at": rfc3339(token.issued_at),
        "expires_in": str(max(int(token.expires_at - token.issued_at), 0)),
        "scope": token.scope or "",
        "id_token": token.id_token or "",
    }
    try:
        return {
            key: render(compile_template(key, source), context, values)
            for key, source in spec.output.templates
        }
    except TemplateError as exc:
        # A value may yet appear in the ConfigMap (not watched): the short backoff.
        raise OAuthError(Outcome.TRANSIENT, reasons.TEMPLATE_FAILED, str(exc)) from None


def check_output(spec: OAuthClientSpec, values: Mapping[str, str]) -> None:
    """Builds the output Secret over a stand-in token (see _TRIAL_TOKEN) before any exchange,
    so that what the API server would refuse costs no token request (nor a rotation)."""
    data = rendered(spec, _TRIAL_TOKEN, values)
    data[spec.output.access_token_key] = _TRIAL_TOKEN.access_token
    if spec.output.id_token_key:
        data[spec.output.id_token_key] = _TRIAL_TOKEN.id_token or ""
    size = sum(len(value.encode()) for value in data.values())
    if size > MAX_SECRET_BYTES:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.TEMPLATE_FAILED,
            f"the output Secret could hold {size} bytes with a token of "
            f"{TRIAL_TOKEN_CHARS} characters; the API server refuses more than "
            f"{MAX_SECRET_BYTES} in all (fewer or smaller spec.secret.templates)",
        )
    problem = type_problem(spec.output.type, data)
    if problem:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.INVALID_SPEC,
            f"spec.secret.type {spec.output.type}: {problem}; the API server would refuse "
            "the Secret (add the key with spec.secret.templates, or use type Opaque)",
        )


# Secret types whose keys the API server checks: (keys of which one at least is required,
# whether each must hold JSON).
_TYPE_RULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "kubernetes.io/dockerconfigjson": ((".dockerconfigjson",), True),
    "kubernetes.io/dockercfg": ((".dockercfg",), True),
    "kubernetes.io/basic-auth": (("username", "password"), False),
    "kubernetes.io/ssh-auth": (("ssh-privatekey",), False),
}


def type_problem(secret_type: str, data: Mapping[str, str]) -> str | None:
    """What the API server would say about an output Secret of this type and these keys."""
    if secret_type == "kubernetes.io/tls" and not {"tls.crt", "tls.key"} <= data.keys():
        return "needs keys tls.crt and tls.key"
    keys, json_only = _TYPE_RULES.get(secret_type, ((), False))
    present = [k for k in keys if k in data]
    if keys and not present:
        return f"needs key {' or '.join(keys)}"
    for key in present if json_only else ():
        try:
            json.loads(data[key])
        except ValueError:
            return f"key {key} must render to JSON"
    return None


def access_token_in(spec: OAuthClientSpec, output: dict[str, Any]) -> str:
    """The access token an output Secret holds."""
    return decode_data(output).get(spec.output.access_token_key, "")


def owner_reference(spec: OAuthClientSpec) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": spec.key.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def adopted(secret: dict[str, Any], spec: OAuthClientSpec) -> dict[str, Any]:
    """The Secret with this OAuthClient as its only controller (see ours())."""
    metadata = dict(secret.get("metadata") or {})
    others = [r for r in metadata.get("ownerReferences") or [] if not r.get("controller")]
    metadata["ownerReferences"] = [*others, owner_reference(spec)]
    return {**secret, "metadata": metadata}


def output_secret(
    spec: OAuthClientSpec,
    token: Token,
    existing: dict[str, Any] | None,
    values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The full output Secret for a fresh token; carries the existing resourceVersion so
    that a replace fails instead of overwriting a concurrent change."""
    out = spec.output
    data = rendered(spec, token, values or {})
    data[out.access_token_key] = token.access_token
    if out.token_type_key:
        data[out.token_type_key] = token.token_type
    if out.expires_at_key:
        data[out.expires_at_key] = rfc3339(token.expires_at)
    if out.id_token_key and token.id_token:
        data[out.id_token_key] = token.id_token
    metadata: dict[str, Any] = {
        "name": out.name,
        "namespace": spec.key.namespace,
        "labels": {
            **dict(out.labels),
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            OWNER_LABEL: spec.key.name,
        },
        "annotations": {
            **dict(out.annotations),
            ISSUED_AT_ANNOTATION: rfc3339(token.issued_at),
            EXPIRES_AT_ANNOTATION: rfc3339(token.expires_at),
            SPEC_HASH_ANNOTATION: spec.spec_hash,
            **(
                {CLIENT_CERTIFICATE_ANNOTATION: spec.client_certificate}
                if spec.client_certificate
                else {}
            ),
        },
        "ownerReferences": [owner_reference(spec)],
    }
    if existing is not None:
        metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": (existing or {}).get("type") or out.type,  # type is immutable once created
        "data": encode_data(data),
    }
