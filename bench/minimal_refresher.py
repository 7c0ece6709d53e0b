#!/usr/bin/env python
"""The irreducible work of keeping N clients refreshed, and nothing else: bench_steady's
baseline for P5 (`bench_steady.py --minimal`), as bench_convergence's minimal client is
P1's.

A process of its own, like the operator, so that its CPU is measured apart and it shares
the machine the same way. It lists the OAuthClients of a namespace once, then keeps one heap
of due times and `--concurrency` workers; each refresh is one token request (httpx), one
Secret write (create, then replace with the resourceVersion it last wrote) and one status
merge patch with the fields the operator writes (kubernetes_asyncio, as the operator uses
it). No watch, no reads, no validation, no retries beyond a failed call being tried again
at the next due time: what a refresher cannot do without.

    python bench/minimal_refresher.py KUBECONFIG NAMESPACE ENDPOINT RENEW_BEFORE CONCURRENCY
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_convergence import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    ApiFailure,
    b64,
    call,
    output_like_secret,
    rfc3339,
)


async def main(kubeconfig: str, namespace: str, endpoint: str, renew: int, conc: int) -> None:
    import httpx
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    # As lean as the operator's client: no ~/.netrc and proxy lookup in a thread per call.
    api.rest_client.pool_manager._trust_env = False
    # Any: plain dicts travel as bodies (as in kube/client.py), not the client's model classes.
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    names: list[str] = []
    token: str | None = None
    while True:
        page = await call(
            custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, limit=500, _preload_content=False,
                **({"_continue": token} if token else {}),
            )
        )  # fmt: skip
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    due: list[tuple[float, str]] = [(0.0, name) for name in names]
    versions: dict[str, str] = {}  # output Secret resourceVersion, as last written
    wake = asyncio.Event()

    async def refresh(http: httpx.AsyncClient, name: str) -> float:
        answer = await http.post(
            endpoint,
            data={"grant_type": "client_credentials", "bench_client": f"{namespace}/{name}"},
            auth=("bench", "bench-secret"),
        )
        answer.raise_for_status()
        issued = time.time()
        body = answer.json()
        expires = issued + float(body["expires_in"])
        secret = output_like_secret(int(name.rsplit("-", 1)[1]), namespace)
        secret["metadata"]["name"] = f"{name}-token"
        secret["data"]["access_token"] = b64(body["access_token"])
        if name in versions:
            secret["metadata"]["resourceVersion"] = versions[name]
            written = await call(
                core.replace_namespaced_secret(
                    f"{name}-token", namespace, secret, _preload_content=False
                )
            )
        else:
            try:
                written = await call(
                    core.create_namespaced_secret(namespace, secret, _preload_content=False)
                )
            except ApiFailure as exc:
                if "HTTP 409" not in str(exc):
                    raise
                current = await call(
                    core.read_namespaced_secret(f"{name}-token", namespace, _preload_content=False)
                )
                secret["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                written = await call(
                    core.replace_namespaced_secret(
                        f"{name}-token", namespace, secret, _preload_content=False
                    )
                )
        versions[name] = written["metadata"]["resourceVersion"]
        next_at = expires - renew
        status = {
            "status": {
                "secretName": f"{name}-token",
                "expiresAt": rfc3339(expires),
                "lastRefreshTime": rfc3339(issued),
                "nextRefreshTime": rfc3339(next_at),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "TokenIssued",
                        "message": f"token valid until {rfc3339(expires)}",
                        "lastTransitionTime": rfc3339(issued),
                    }
                ],
            }
        }
        await call(
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, status,
                _preload_content=False, _content_type="application/merge-patch+json",
            )
        )  # fmt: skip
        return next_at

    async def worker(http: httpx.AsyncClient) -> None:
        while True:
            now = time.time()
            if not due or due[0][0] > now:
                wake.clear()
                timeout = min(due[0][0] - now, 1.0) if due else 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                continue
            _, name = heapq.heappop(due)
            try:
                next_at = await refresh(http, name)
            except (httpx.HTTPError, ApiFailure, KeyError, ValueError):
                versions.pop(name, None)  # a failed replace may be stale: create or 409
                next_at = time.time() + 5.0
            heapq.heappush(due, (next_at, name))
            wake.set()

    limits = httpx.Limits(max_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        await asyncio.gather(*(worker(http) for _ in range(conc)))


if __name__ == "__main__":
    kubeconfig, namespace, endpoint, renew, conc = sys.argv[1:6]
    asyncio.run(main(kubeconfig, namespace, endpoint, int(renew), int(conc)))
