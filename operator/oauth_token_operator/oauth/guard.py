"""The endpoint guard: which token endpoints the operator may call (scheme, host list,
and never a cloud metadata service, by name or by any address the name resolves to)."""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit

from oauth_token_operator import reasons
from oauth_token_operator.oauth.types import (
    EndpointPolicy,
    OAuthError,
    Outcome,
)

_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


async def check_endpoint(url: str, policy: EndpointPolicy) -> None:
    """Refuses endpoints the operator's configuration does not allow, and link-local and
    cloud metadata addresses always (a token request carries credentials)."""

    def refuse(why: str) -> OAuthError:
        return OAuthError(Outcome.NEEDS_HUMAN, reasons.ENDPOINT_NOT_ALLOWED, f"{url}: {why}")

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise refuse("only https URLs are allowed")
    if parts.scheme == "http" and not policy.allow_http:
        raise refuse("plain http is not allowed (the operator runs without --allow-http)")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise refuse("the URL has no host")
    if parts.username or parts.password:
        raise refuse("credentials in the URL are not allowed")
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise refuse("the host is not in the operator's allowed hosts")
    if host in _METADATA_HOSTS:
        raise refuse("cloud metadata endpoints are refused")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443)
        except OSError:
            raise OAuthError(
                Outcome.TRANSIENT, reasons.PROVIDER_UNREACHABLE, f"{url}: cannot resolve {host}"
            ) from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:169.254.169.254 reaches the IPv4 address
        if address.is_link_local or address in _METADATA_ADDRESSES:
            raise refuse(f"{address} is a link-local or metadata address")
        if address.is_unspecified:
            raise refuse(f"{address} is the unspecified address (it reaches the operator's host)")
