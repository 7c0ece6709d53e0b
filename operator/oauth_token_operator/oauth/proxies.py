"""HTTPS_PROXY/HTTP_PROXY/NO_PROXY, looked up once per server rather than per request:
aiohttp's trust_env would look them up (and ~/.netrc, which has no place here: the operator
brings its own credentials) in a worker thread on every request."""

from __future__ import annotations

import contextlib

from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL


def proxy_for(url: str) -> tuple[str | None, dict[str, str]]:
    """The proxy the environment names for `url` (None: go direct), with the header that
    carries the proxy URL's credentials, if it has any."""
    with contextlib.suppress(LookupError):
        proxy, auth = get_env_proxy_for_url(URL(url))
        return str(proxy), {"Proxy-Authorization": auth.encode()} if auth is not None else {}
    return None, {}
