"""What the commands people type (`token`, `login`) share about providers: the operator's
namespace, where a ClusterOAuthProvider's CA bundle Secret is, and one line that says why
they stop. They read with the user's own credentials, which may lack what the operator's
RBAC gives it (tenants may not read ClusterOAuthProviders, nor Secrets in the operator's
namespace), so a refusal says what was read and what to ask for."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable
from typing import TypeVar

from oauth_token_operator.kube.errors import KubeError

T = TypeVar("T")

OPERATOR_NAMESPACE_VARIABLE = "OAUTH_TOKEN_OPERATOR_OPERATOR_NAMESPACE"
# The namespace the README's `helm install` (and deploy/) puts the operator in.
CHART_NAMESPACE = "oauth-token-operator"


class CommandError(Exception):
    """Stops a command; its text is the one line printed after "error: ". Never holds a
    secret value: the API server's refusals name objects, not their data."""


def add_operator_namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get(OPERATOR_NAMESPACE_VARIABLE) or CHART_NAMESPACE,
        metavar="NS",
        help="the operator's namespace, where a ClusterOAuthProvider's CA bundle Secret is "
        f"(default: ${OPERATOR_NAMESPACE_VARIABLE}, else {CHART_NAMESPACE}, the namespace "
        "of the README's helm install)",
    )


async def read_as_user(call: Awaitable[T], what: str, advice: str, plural: str = "") -> T:
    """Awaits an API read of `what` ("ClusterOAuthProvider sso, the provider of ..."); the
    API server's refusal (401, 403) becomes a CommandError that names it and ends with
    `advice`, and so does a missing CRD of `plural`. Anything else is raised as it was."""
    try:
        return await call
    except KubeError as exc:
        if exc.status in (401, 403):
            raise CommandError(
                f"the API server refused to let you read {what} ({exc}); {advice}"
            ) from None
        if exc.kind_missing and plural:
            raise CommandError(
                f"the API server does not serve {plural}: install the provider CRDs "
                f"(kubectl apply -f crds/{plural}.oauth-token-operator.dev.yaml)"
            ) from None
        raise
