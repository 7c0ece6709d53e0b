"""The operator's Kubernetes client: an API call runs on the event loop, with no thread hop
for environment lookups, and the proxy variables still apply (looked up once)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from oauth_token_operator.kube.client import Kube
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.secret_lists import SecretLists


def kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
async def apiserver() -> AsyncIterator[str]:
    """Answers every Secret read with 404, as the API server does for a missing Secret."""

    async def not_found(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_api_call_hops_to_no_thread(
    apiserver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # would be read per call if trusted
    kube = await Kube.connect(kubeconfig(tmp_path, apiserver))
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    try:
        for _ in range(3):
            assert await kube.get_secret("ns", "absent") is None
    finally:
        await kube.close()
    assert executor.calls == []


async def test_the_proxy_variables_are_honoured_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://someone:pw@127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    kube = await Kube.connect(kubeconfig(tmp_path, "https://127.0.0.1:6443"))
    rest = kube._api.rest_client
    try:
        assert rest.proxy == "http://127.0.0.1:3128"
        assert rest.proxy_headers["Proxy-Authorization"].startswith("Basic ")
        assert "pw" not in rest.proxy
    finally:
        await kube.close()

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    kube = await Kube.connect(kubeconfig(tmp_path, "https://127.0.0.1:6443"))
    try:
        assert kube._api.rest_client.proxy is None
    finally:
        await kube.close()


async def test_an_api_server_that_is_down_is_a_kube_error(tmp_path: Path) -> None:
    """Connection refused is one KubeError with a reason, not aiohttp's exception: every
    caller that keeps a rotated refresh token on an API failure must see it as one."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kube = await Kube.connect(kubeconfig(tmp_path, f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(KubeError) as raised:
            await kube.get_secret("ns", "creds")
        with pytest.raises(KubeError):
            await kube.replace_secret("ns", {"metadata": {"name": "creds"}, "data": {}})
        with pytest.raises(KubeError):
            async for _ in SecretLists(kube.api_client).watch_secrets("ns", "1", 5):
                pass
    finally:
        await kube.close()
    assert raised.value.unreachable
    assert "ClientConnectorError" in str(raised.value)


async def test_an_answer_cut_off_mid_body_is_a_kube_error(tmp_path: Path) -> None:
    """An apiserver that dies while answering (a half-read body)."""

    async def cut_off(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"kind": "Secret", "data": {"client_secret": "')
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", cut_off)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = await Kube.connect(kubeconfig(tmp_path, f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(KubeError) as raised:
            await kube.get_secret("ns", "creds")
    finally:
        await kube.close()
        await runner.cleanup()
    assert raised.value.unreachable
    assert "client_secret" not in str(raised.value)
