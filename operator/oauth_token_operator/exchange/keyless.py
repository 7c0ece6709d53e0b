"""Keyless client authentication: a Kubernetes ServiceAccount token as the RFC 7523 client
assertion (`clientAuthentication: service_account_token`) or as the RFC 8693 subject token
(`grantType: token_exchange`). The provider trusts the cluster's ServiceAccount issuer; no
secret is stored anywhere.

Whoever may create an OAuthClient must not gain more than they could already do, so a token
is minted only when
- the ServiceAccount is in the OAuthClient's own namespace (the spec names no namespace),
- the ServiceAccount opts in: its annotation `oauth-token-operator.dev/token-audiences`
  lists the audience, and its annotation `oauth-token-operator.dev/token-endpoints` (required
  in shared tenancy, honoured in both) lists the OAuthClient's issuer or token endpoint: its
  owner says where its tokens may be sent, not only for whom,
- the audience is not one the kube-apiserver accepts: never a well-known Kubernetes audience
  (spec.parse refuses those) or the cluster's ServiceAccount issuer (checked before
  minting), and never an audience for which the apiserver authenticates the minted token (a
  TokenReview once per audience and process; such a token is dropped unsent),
- and it goes only to an https token endpoint (spec and oauth.TokenClient check that).
A token is minted for each exchange, used once, and never stored or logged."""

from __future__ import annotations

import logging
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import ServiceAccountAPI
from oauth_token_operator.oauth.types import OAuthError, Outcome
from oauth_token_operator.resource.policy import (
    SERVICE_ACCOUNT_AUDIENCES_ANNOTATION,
    Tenancy,
    service_account_endpoint_refusal,
)
from oauth_token_operator.resource.spec import ServiceAccountToken

log = logging.getLogger(__name__)


def opted_in_audiences(service_account: dict[str, Any]) -> frozenset[str]:
    annotations = (service_account.get("metadata") or {}).get("annotations") or {}
    listed = str(annotations.get(SERVICE_ACCOUNT_AUDIENCES_ANNOTATION, ""))
    return frozenset(a.strip() for a in listed.split(",") if a.strip())


class ServiceAccountAssertions:
    def __init__(self, api: ServiceAccountAPI, tenancy: Tenancy = Tenancy.SINGLE) -> None:
        self.api = api
        self.tenancy = tenancy  # shared: the ServiceAccount must also name the destination
        self._issuer: str | None = None
        # Audiences whose minted token the apiserver did not authenticate: a property of the
        # cluster's configuration, so asked once per process.
        self._not_the_apiservers: set[str] = set()

    async def mint(self, namespace: str, wanted: ServiceAccountToken, destination: str) -> str:
        """`destination`: the issuer or token endpoint the token is for."""
        ns, name, audience = namespace, wanted.name, wanted.audience
        try:
            account = await self.api.get_service_account(ns, name)
            if account is None:
                raise OAuthError(
                    Outcome.TRANSIENT,  # no ServiceAccount watch: retried with the backoff
                    reasons.SERVICE_ACCOUNT_NOT_FOUND,
                    f"ServiceAccount {name} not found in {ns}",
                )
            if audience not in opted_in_audiences(account):
                raise OAuthError(
                    Outcome.TRANSIENT,
                    reasons.SERVICE_ACCOUNT_NOT_OPTED_IN,
                    f"ServiceAccount {name} has not opted in to tokens for audience "
                    f"{audience!r}: its annotation {SERVICE_ACCOUNT_AUDIENCES_ANNOTATION} must "
                    "list it (comma-separated)",
                )
            refusal = service_account_endpoint_refusal(account, name, destination, self.tenancy)
            if refusal:
                raise OAuthError(Outcome.TRANSIENT, reasons.SERVICE_ACCOUNT_NOT_OPTED_IN, refusal)
            await self._refuse_known_apiserver_audience(audience)
            token = await self.api.create_service_account_token(
                ns, name, audience, wanted.expiration_seconds
            )
            if not token:
                raise KubeError(500, "TokenRequest returned no token")
            if audience not in self._not_the_apiservers:
                if await self.api.apiserver_accepts(token):
                    raise _apiserver_audience(audience, "the Kubernetes API accepts its tokens")
                self._not_the_apiservers.add(audience)
        except KubeError as exc:
            hint = (
                " (the operator needs serviceaccounts get, serviceaccounts/token create and "
                "tokenreviews create: chart value serviceAccountTokens.enabled)"
                if exc.status == 403
                else ""
            )
            raise OAuthError(
                Outcome.TRANSIENT,
                reasons.SERVICE_ACCOUNT_TOKEN_FAILED,
                f"could not mint a token of ServiceAccount {name}: {exc}{hint}",
            ) from None
        return token

    async def _refuse_known_apiserver_audience(self, audience: str) -> None:
        # The well-known Kubernetes audiences never get here: spec.parse refuses them.
        if self._issuer is None:
            self._issuer = await self.api.service_account_issuer()
        if self._issuer is not None and audience.rstrip("/") == self._issuer.rstrip("/"):
            raise _apiserver_audience(audience, "the cluster's ServiceAccount issuer")


def _apiserver_audience(audience: str, why: str) -> OAuthError:
    return OAuthError(
        Outcome.NEEDS_HUMAN,
        reasons.AUDIENCE_NOT_ALLOWED,
        f"the ServiceAccount token audience {audience!r} is {why}: such a token would let "
        "whoever reads it act as the ServiceAccount in the cluster; use the audience the "
        "provider expects",
    )
