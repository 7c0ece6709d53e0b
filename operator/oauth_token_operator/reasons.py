"""Every reason the operator writes into the Ready condition and Events, in one place.
CamelCase words, as the Kubernetes API conventions ask; users alert and script on them."""

from __future__ import annotations

# Ready=True
TOKEN_ISSUED = "TokenIssued"
REFRESH_RETRYING = "RefreshRetrying"  # the last refresh failed; the token in place is valid

# A provider's own Ready=True (ClusterOAuthProvider, OAuthProvider;
# resource/provider_status.py): its discovery document was fetched and named its issuer, or
# (spec.tokenEndpoint) it is used as given. Ready=False carries the reason its clients
# would get (ProviderInvalid, DiscoveryFailed, TLSVerificationFailed, InvalidCABundle,
# EndpointNotAllowed, ProviderUnreachable, ...).
DISCOVERY_FETCHED = "DiscoveryFetched"
TOKEN_ENDPOINT_CONFIGURED = "TokenEndpointConfigured"

# The OAuthClient or its Secrets, as written, cannot work: a person must act.
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_OWNED = "SecretNotOwned"
CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
CREDENTIALS_INVALID = "CredentialsInvalid"
INVALID_CA_BUNDLE = "InvalidCABundle"
ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
DISCOVERY_FAILED = "DiscoveryFailed"
TLS_VERIFICATION_FAILED = "TLSVerificationFailed"  # the provider's certificate is not trusted
TOKEN_TOO_SHORT_LIVED = "TokenTooShortLived"
TEMPLATE_FAILED = "TemplateFailed"  # an output template names a missing value, or too much
# clientAuthentication service_account_token: the ServiceAccount is missing, has not opted in
# to the audience (or, token-endpoints annotation, to the endpoint), or the audience is one
# the kube-apiserver accepts.
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
SERVICE_ACCOUNT_NOT_OPTED_IN = "ServiceAccountNotOptedIn"
AUDIENCE_NOT_ALLOWED = "AudienceNotAllowed"
SERVICE_ACCOUNT_TOKEN_FAILED = "ServiceAccountTokenFailed"  # TokenRequest refused or failed
# Shared tenancy (resource/policy.py): a Secret whose values the client would send
# (credentials, client certificate, subject token) does not list it in its allowed-clients
# annotation; an inline issuer or token endpoint is not one the operator trusts
# (--trusted-endpoints).
SECRET_NOT_OPTED_IN = "SecretNotOptedIn"
ENDPOINT_NOT_TRUSTED = "EndpointNotTrusted"
# spec.providerRef: the provider does not exist, cannot be used as written, or does not
# serve the client's namespace (or allow its grant type or client authentication).
PROVIDER_NOT_FOUND = "ProviderNotFound"
PROVIDER_INVALID = "ProviderInvalid"
PROVIDER_NOT_ALLOWED = "ProviderNotAllowed"

# The provider's answers (RFC 6749 5.2 error codes and HTTP failures).
INVALID_CLIENT = "InvalidClient"
INVALID_GRANT = "InvalidGrant"
UNAUTHORIZED_CLIENT = "UnauthorizedClient"
UNSUPPORTED_GRANT_TYPE = "UnsupportedGrantType"
INVALID_SCOPE = "InvalidScope"
INVALID_TARGET = "InvalidTarget"
INVALID_REQUEST = "InvalidRequest"
PROVIDER_REJECTED = "ProviderRejected"
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
PROVIDER_UNREACHABLE = "ProviderUnreachable"
RATE_LIMITED = "RateLimited"
MALFORMED_RESPONSE = "MalformedResponse"
EXCHANGE_DEADLINE_EXCEEDED = "ExchangeDeadlineExceeded"  # a slow or drip-feeding provider
# A refresh request may have reached the provider, but no answer came back: if the provider
# rotated the refresh token, the new one is lost with the answer.
EXCHANGE_OUTCOME_UNKNOWN = "ExchangeOutcomeUnknown"

# Custody of a rotated refresh token.
REFRESH_TOKEN_NOT_PERSISTED = "RefreshTokenNotPersisted"
REFRESH_TOKEN_IN_USE = "RefreshTokenInUse"  # another process holds the refresh claim

KUBERNETES_ERROR = "KubernetesError"

# Events only: someone changed the output Secret; the operator put its token back.
SECRET_RESTORED = "SecretRestored"

# Rollout targets (Events only: the token itself is fine).
ROLLOUT_RESTARTED = "RolloutRestarted"
ROLLOUT_TARGET_NOT_FOUND = "RolloutTargetNotFound"
ROLLOUT_FAILED = "RolloutRestartFailed"
# Shared tenancy: the workload's allowed-clients annotation does not name the client.
ROLLOUT_TARGET_NOT_OPTED_IN = "RolloutTargetNotOptedIn"
