#!/usr/bin/env python
"""Convergence benchmark for oauth-token-operator against a real kube-apiserver + etcd.

One run: start a control plane (tests/support/controlplane.py) and install the CRD; start a
fake plain-http token endpoint in its own process; measure the raw Secret-write throughput
of this API server from Python (the baseline); create one credentials Secret and N
OAuthClients; start the operator and time it until all N output Secrets exist; then kill -9
it, start it again and check that the restart costs no token requests.

The headline is the RATIO of the operator's throughput (N / convergence seconds) to the
baseline Secret-write throughput measured in the same run on the same machine: absolute
numbers move with the machine and its noise, the ratio much less.

    .venv/bin/python bench/bench_convergence.py --clients 1000

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import ctypes
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from oauth_token_operator.engine.config import Settings  # noqa: E402

CRD = REPO / "crds" / "oauthclients.oauth-token-operator.dev.yaml"
RESULTS = REPO / "bench" / "results"
GROUP, VERSION, PLURAL = "oauth-token-operator.dev", "v1alpha1", "oauthclients"
MANAGED_BY = "app.kubernetes.io/managed-by"
NAMESPACE = "bench"
BASELINE_NAMESPACE = "bench-baseline"
CREDENTIALS = "bench-credentials"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.5  # seconds between samples while waiting
# Baselines run at the concurrency the operator gets, by default its own.
CONCURRENCY = Settings.concurrency


# --------------------------------------------------------------------------------------------
# The fake token endpoint: its own process, so that it never competes with the operator's
# event loop, only (a little) for CPU.
# --------------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """In a server's child process: die with the benchmark, even on SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def serve(app: Any, conn: Any) -> None:
    """Serves the aiohttp app on a free loopback port, sends the port through `conn`, and
    runs until the process is killed."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    conn.send(runner.addresses[0][1])
    conn.close()
    await asyncio.Event().wait()


class ServerProcess:
    """`target(conn, *args)` in a spawned process; it reports its port through `conn`."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        if not parent.poll(30):
            raise RuntimeError("fake token endpoint did not start")
        self.port: int = parent.recv()
        self.url = f"http://127.0.0.1:{self.port}/token"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _token_server(conn: Any) -> None:  # pragma: no cover - runs in the child process
    die_with_parent()
    from aiohttp import web

    count = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"requests": count})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", token)
    asyncio.run(serve(app, conn))


class TokenEndpoint(ServerProcess):
    def __init__(self) -> None:
        super().__init__(_token_server)
        self._http: Any = None

    async def requests(self) -> int:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10)
        response = await self._http.get(f"http://127.0.0.1:{self.port}/stats")
        return int(response.json()["requests"])

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# --------------------------------------------------------------------------------------------
# /proc helpers (no psutil)
# --------------------------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


class CpuMeter:
    """CPU seconds of named processes between mark() calls."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._last = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self._last[name] = cpu_seconds(pid)

    def mark(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        delta = {name: round(now[name] - self._last.get(name, 0.0), 2) for name in now}
        self._last = now
        return delta


# --------------------------------------------------------------------------------------------
# Kubernetes helpers
# --------------------------------------------------------------------------------------------


class ApiFailure(RuntimeError):
    pass


async def call(coro: Awaitable[Any]) -> Any:
    """Awaits a kubernetes_asyncio call made with _preload_content=False (as the operator
    does), returns the decoded JSON body, raises on a non-2xx answer."""
    response = await coro
    try:
        body = await response.read()
        if not 200 <= response.status < 300:
            raise ApiFailure(f"HTTP {response.status}: {body[:300]!r}")
        return json.loads(body) if body else None
    finally:
        response.release()


async def bounded(n: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> float:
    """Runs work(0..n-1) with `concurrency` in flight; returns the wall seconds taken."""
    indexes = iter(range(n))

    async def worker() -> None:
        for i in indexes:
            for attempt in range(5):
                try:
                    await work(i)
                    break
                except ApiFailure as exc:
                    if ("HTTP 429" not in str(exc) and "HTTP 5" not in str(exc)) or attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def rfc3339(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def client_name(i: int) -> str:
    return f"client-{i:05d}"


def output_like_secret(i: int, namespace: str) -> dict[str, Any]:
    """A Secret shaped and sized like the operator's output Secret (same keys, labels,
    annotations, ownerReference; a 43-character token like the fake endpoint's)."""
    now = time.time()
    name = client_name(i)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{name}-token",
            "namespace": namespace,
            "labels": {MANAGED_BY: "bench-baseline", f"{GROUP}/oauthclient": name},
            "annotations": {
                f"{GROUP}/issued-at": rfc3339(now),
                f"{GROUP}/expires-at": rfc3339(now + 3600),
                f"{GROUP}/spec-hash": hashlib.sha256(name.encode()).hexdigest()[:16],
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "OAuthClient",
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "type": "Opaque",
        "data": {
            "access_token": b64(secrets.token_urlsafe(32)),
            "token_type": b64("Bearer"),
            "expires_at": b64(rfc3339(now + 3600)),
        },
    }


def oauth_client(i: int, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OAuthClient",
        "metadata": {"name": client_name(i), "namespace": NAMESPACE},
        "spec": {
            "tokenEndpoint": endpoint,
            "grantType": "client_credentials",
            "clientAuthentication": "client_secret_basic",
            "credentialsSecretRef": {"name": CREDENTIALS},
            "scopes": ["openid"],
        },
    }


async def count_namespace_secrets(core: Any, namespace: str) -> int:
    """All Secrets in the namespace, cheaply: a list with limit=1 and remainingItemCount,
    so polling does not load the API server with full lists while the operator works."""
    body = await call(core.list_namespaced_secret(namespace, limit=1, _preload_content=False))
    items = len(body.get("items") or [])
    remaining = (body.get("metadata") or {}).get("remainingItemCount")
    if remaining is None and (body.get("metadata") or {}).get("continue"):
        return await count_labelled(core, namespace, None)
    return items + int(remaining or 0)


async def count_labelled(core: Any, namespace: str, selector: str | None) -> int:
    """Full count by paged list (limit/continue), with an optional label selector."""
    total, token = 0, None
    while True:
        kwargs: dict[str, Any] = {"limit": 500, "_preload_content": False}
        if selector:
            kwargs["label_selector"] = selector
        if token:
            kwargs["_continue"] = token
        body = await call(core.list_namespaced_secret(namespace, **kwargs))
        total += len(body.get("items") or [])
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return total


class ApiserverMetrics:
    """apiserver_request_total by verb/resource/subresource/code, scraped from /metrics with
    the admin client certificate, so that each phase reports the API calls it made."""

    def __init__(self, server: str, pki: Path) -> None:
        self.url = f"{server}/metrics"
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    async def snapshot(self) -> collections.Counter[str]:
        return await asyncio.to_thread(self._snapshot)

    def _snapshot(self) -> collections.Counter[str]:
        import urllib.request

        counts: collections.Counter[str] = collections.Counter()
        with urllib.request.urlopen(self.url, context=self.context, timeout=30) as response:
            for raw in response:
                line = raw.decode()
                if not line.startswith("apiserver_request_total{"):
                    continue
                labels_text, value = line.rsplit(" ", 1)
                labels = dict(
                    part.split("=", 1)
                    for part in labels_text[len("apiserver_request_total{") : -1].split(",")
                )
                labels = {k: v.strip('"') for k, v in labels.items()}
                resource = labels.get("resource", "")
                if labels.get("subresource"):
                    resource += "/" + labels["subresource"]
                counts[f"{labels.get('verb')} {resource} {labels.get('code')}"] += int(float(value))
        return counts

    @staticmethod
    def diff(
        before: collections.Counter[str], after: collections.Counter[str], clients: int
    ) -> dict[str, dict[str, float]]:
        """Calls made between two snapshots; only those that are at least 1% of N (noise
        from the apiserver's own controllers stays out)."""
        out: dict[str, dict[str, float]] = {}
        for key in sorted(after):
            delta = after[key] - before.get(key, 0)
            if delta >= max(clients // 100, 5):
                out[key] = {"calls": delta, "per_client": round(delta / clients, 2)}
        return out


# --------------------------------------------------------------------------------------------
# The operator process
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


BYTECODE_CACHE = True  # --no-bytecode-cache turns it off


def operator_env() -> dict[str, str]:
    """As the image runs it: with compiled bytecode (the Dockerfile compiles it at build
    time). A venv without __pycache__ under PYTHONDONTWRITEBYTECODE=1 recompiles every
    module (kubernetes_asyncio is large) at each start; the cache lives in bench/results."""
    env = {"PYTHONUNBUFFERED": "1"}
    if BYTECODE_CACHE:
        env["PYTHONPYCACHEPREFIX"] = str(RESULTS / "pycache")
        env["PYTHONDONTWRITEBYTECODE"] = ""
    return env


def warm_bytecode_cache() -> None:
    modules = "oauth_token_operator." + ", oauth_token_operator.".join(
        ["cli.main", "app.handlers", "cli.token", "cli.login", "engine.refresh", "metrics"]
    )
    env = {k: v for k, v in {**os.environ, **operator_env()}.items() if v != ""}
    if BYTECODE_CACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", f"import {modules}"], env=env, check=True)


class Operator:
    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        concurrency: int,
        log_level: str,
        metrics_port: int = 0,
        profile_path: Path | None = None,
        selector: str | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "oauth_token_operator",
            "run",  # --log-level belongs to the subcommand
            "--log-level",
            log_level,
            "--namespace",
            NAMESPACE,
            "--allow-http",
            "--tenancy",
            "single",  # inline endpoints, Secrets without an opt-in
            "--concurrency",
            str(concurrency),
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            "0",
            *(["--selector", selector] if selector else []),
        ]
        self.metrics_port = metrics_port
        self.wrapper: subprocess.Popen[bytes] | None = None
        if profile_path is not None:
            pyspy = os.environ.get("PY_SPY", "py-spy")
            args = [pyspy, "record", "--format", "raw", "--rate", "100", "--nonblocking",
                    "-o", str(profile_path), "--", *args]  # fmt: skip
        env = {**os.environ, **operator_env(), "KUBECONFIG": str(kubeconfig)}
        env = {k: v for k, v in env.items() if not (k == "PYTHONDONTWRITEBYTECODE" and not v)}
        with log_path.open("ab") as log:
            self.started = time.perf_counter()
            popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        if profile_path is None:
            self.process = popen
            self.pid = popen.pid
        else:
            self.wrapper = popen
            self.pid = self._wait_child(popen.pid)

    @staticmethod
    def _wait_child(pid: int) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kids = children(pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError("py-spy did not start the operator")

    @property
    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.wrapper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wrapper.wait(60)  # py-spy writes its profile when its target dies
        else:
            self.process.wait(10)

    def stop(self) -> None:
        if self.alive:
            self.kill9()

    async def scrape(self, name: str) -> str:
        """The lines of one metric from the operator's /metrics (only when started with a
        metrics port). Asks for that metric alone: the whole page (per-client series) would
        cost the operator some 0.4 s of CPU per scrape at 10,000 clients, every poll."""
        import httpx

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(url, params={"name[]": name})).text

    async def metric(self, name: str) -> float | None:
        """A counter's total, or None while the operator does not answer."""
        import httpx

        try:
            text = await self.scrape(name)
        except httpx.HTTPError:
            return None
        total = None
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    async def histogram(self, name: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts: upper bound -> count."""
        text = await self.scrape(f"{name}_bucket")
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket{{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
        return buckets


def histogram_quantiles(
    before: dict[float, float], after: dict[float, float], quantiles: tuple[float, ...]
) -> dict[str, float | None]:
    """Quantiles of what a histogram counted between two scrapes, as bucket upper bounds."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    result: dict[str, float | None] = {}
    for q in quantiles:
        bound = next((b for b, c in counts.items() if total and c >= q * total), None)
        result[f"p{round(q * 100)}"] = bound
    return result


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


async def wait_idle(pid: int, window: float, threshold: float, limit: float) -> float | None:
    """Waits until the process used < threshold of one core over `window` seconds; returns
    the seconds waited, or None on timeout."""
    started = time.perf_counter()
    samples: collections.deque[tuple[float, float]] = collections.deque()
    while time.perf_counter() - started < limit:
        now = time.perf_counter()
        samples.append((now, cpu_seconds(pid)))
        while samples and now - samples[0][0] > window:
            samples.popleft()
        if now - started >= window and len(samples) > 1:
            (t0, c0), (t1, c1) = samples[0], samples[-1]
            if t1 - t0 >= window * 0.8 and (c1 - c0) / (t1 - t0) < threshold:
                return now - started
        await asyncio.sleep(0.25)
    return None


def profile_summary(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].rsplit(":", 1)[0].split("/")[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]  # fmt: skip
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count

    def pct(count: int) -> float:
        return round(100 * count / total, 1) if total else 0.0

    return {
        "samples": total,
        "self_pct": {f: pct(c) for f, c in own.most_common(top)},
        "inclusive_pct": {f: pct(c) for f, c in incl.most_common(top * 2)},
    }


async def minimal_client(
    core: Any,
    custom: Any,
    endpoint: TokenEndpoint,
    n: int,
    conc: int,
    create_conc: int,
    cpu: CpuMeter,
    apimetrics: ApiserverMetrics,
    log: Callable[..., None],
) -> dict[str, Any]:
    import httpx

    async def create_client(i: int) -> None:
        body = oauth_client(i, endpoint.url)
        body["metadata"]["namespace"] = BASELINE_NAMESPACE
        await call(
            custom.create_namespaced_custom_object(
                GROUP, VERSION, BASELINE_NAMESPACE, PLURAL, body, _preload_content=False
            )
        )

    await bounded(n, create_conc, create_client)
    log(f"minimal client: {n} clients at concurrency {conc} ...")
    cpu.mark()
    before = await apimetrics.snapshot()
    limits = httpx.Limits(max_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def work(i: int) -> None:
            answer = await http.post(
                endpoint.url,
                data={"grant_type": "client_credentials", "scope": "openid"},
                auth=("bench", "bench-secret"),
            )
            answer.raise_for_status()
            token = answer.json()
            secret = output_like_secret(i, BASELINE_NAMESPACE)
            secret["data"]["access_token"] = b64(token["access_token"])
            await call(
                core.create_namespaced_secret(BASELINE_NAMESPACE, secret, _preload_content=False)
            )
            expires = rfc3339(time.time() + float(token["expires_in"]))
            status = {"status": {"secretName": f"{client_name(i)}-token", "expiresAt": expires}}
            await call(
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, BASELINE_NAMESPACE, PLURAL, client_name(i), status,
                    _preload_content=False, _content_type="application/merge-patch+json",
                )
            )  # fmt: skip

        seconds = await bounded(n, conc, work)
    figures = {
        "seconds": round(seconds, 2),
        "clients_per_second": round(n / seconds, 1),
        "cpu_seconds": cpu.mark(),
        "api_calls": ApiserverMetrics.diff(before, await apimetrics.snapshot(), n),
    }
    log(f"  {n / seconds:.1f} clients/s ({seconds:.1f}s)")
    await delete_all(core, custom, BASELINE_NAMESPACE)
    return figures


async def delete_all(core: Any, custom: Any, namespace: str) -> None:
    """Deletes a namespace's Secrets and OAuthClients and waits until the Secrets are gone,
    so that the next phase works on a store of the same size."""
    for delete in (
        core.delete_collection_namespaced_secret(namespace, _preload_content=False),
        custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _preload_content=False
        ),
    ):
        await call(delete)
    while await count_namespace_secrets(core, namespace):  # noqa: ASYNC110
        await asyncio.sleep(POLL)


async def connect(cp: Any, *namespaces: str) -> tuple[Any, Any, Any]:
    """Installs the CRD, creates the namespaces; returns (api client, CoreV1Api,
    CustomObjectsApi) for the control plane's admin."""
    from kubernetes_asyncio import client, config

    cp.kubectl("apply", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    for ns in namespaces:
        cp.kubectl("create", "namespace", ns)
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(cp.kubeconfig_path), client_configuration=configuration
    )
    api = client.ApiClient(configuration)
    return api, client.CoreV1Api(api), client.CustomObjectsApi(api)


async def create_credentials(core: Any) -> None:
    """The one credentials Secret every bench client uses."""
    await call(
        core.create_namespaced_secret(
            NAMESPACE,
            {
                "metadata": {"name": CREDENTIALS},
                "data": {"client_id": b64("bench"), "client_secret": b64("bench-secret")},
            },
            _preload_content=False,
        )
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.controlplane import ControlPlane

    n, conc = args.clients, args.concurrency
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "clients": n,
        "concurrency": conc,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "started_at": rfc3339(time.time()),
        "bytecode_cache": BYTECODE_CACHE,
    }
    log = print if not args.quiet else (lambda *a, **k: None)

    t = time.perf_counter()
    cp = await asyncio.to_thread(ControlPlane().start)
    endpoint = TokenEndpoint()
    operator: Operator | None = None
    api: Any = None
    try:
        result["control_plane_start_seconds"] = round(time.perf_counter() - t, 1)
        procs = {name: proc.pid for name, proc, _ in cp._procs}
        cpu = CpuMeter({**procs, "token-endpoint": endpoint.process.pid or 0, "bench": os.getpid()})
        apimetrics = ApiserverMetrics(cp.server, cp.log_dir / "pki")
        log(f"control plane up in {result['control_plane_start_seconds']}s at {cp.server}; "
            f"token endpoint {endpoint.url}")  # fmt: skip
        api, core, custom = await connect(cp, NAMESPACE, BASELINE_NAMESPACE)

        # ---- 1. baseline: raw Secret writes at the operator's concurrency --------------------
        log(f"baseline: creating {n} Secrets at concurrency {conc} ...")
        cpu.mark()
        before = await apimetrics.snapshot()

        async def write(i: int) -> None:
            await call(
                core.create_namespaced_secret(
                    BASELINE_NAMESPACE,
                    output_like_secret(i, BASELINE_NAMESPACE),
                    _preload_content=False,
                )
            )

        seconds = await bounded(n, conc, write)
        size = len(json.dumps(output_like_secret(0, BASELINE_NAMESPACE)))
        result["baseline"] = {
            "secrets": n,
            "seconds": round(seconds, 2),
            "writes_per_second": round(n / seconds, 1),
            "secret_json_bytes": size,
            "cpu_seconds": cpu.mark(),
            "api_calls": ApiserverMetrics.diff(before, await apimetrics.snapshot(), n),
        }
        log(f"  {n / seconds:.1f} Secret writes/s ({seconds:.1f}s)")
        # Out of the way, so that the operator runs on a store of the same size it would
        # have had without the baseline (the namespace is not watched by the operator).
        t = time.perf_counter()
        await call(
            core.delete_collection_namespaced_secret(BASELINE_NAMESPACE, _preload_content=False)
        )
        while await count_namespace_secrets(core, BASELINE_NAMESPACE):  # noqa: ASYNC110
            await asyncio.sleep(POLL)
        log(f"  baseline Secrets deleted in {time.perf_counter() - t:.1f}s")

        # ---- 1b. minimal client: the irreducible work per client, nothing else (P1) ---------
        # Per client: one token request, one Secret create, one status patch, with plain
        # httpx and kubernetes_asyncio at the same concurrency. Its OAuthClients are created
        # beforehand (not timed) in the baseline namespace, which the operator never watches.
        result["minimal"] = await minimal_client(
            core, custom, endpoint, n, conc, args.create_concurrency, cpu, apimetrics, log
        )
        tokens_offset = await endpoint.requests()

        # ---- 2. the objects, created before the operator starts -----------------------------
        await create_credentials(core)

        async def create_client(i: int) -> None:
            await call(
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, oauth_client(i, endpoint.url),
                    _preload_content=False,
                )
            )  # fmt: skip

        log(f"creating {n} OAuthClients ...")
        cpu.mark()
        seconds = await bounded(n, args.create_concurrency, create_client)
        result["create_oauthclients"] = {
            "seconds": round(seconds, 2),
            "per_second": round(n / seconds, 1),
            "concurrency": args.create_concurrency,
        }
        log(f"  {n / seconds:.1f} OAuthClients/s ({seconds:.1f}s)")
        assert await count_namespace_secrets(core, NAMESPACE) == 1

        # ---- 3. convergence ------------------------------------------------------------------
        await asyncio.to_thread(warm_bytecode_cache)
        log("starting the operator; waiting for all output Secrets ...")
        profile_raw = RESULTS / "profile-run1.txt" if args.profile else None
        if profile_raw is not None:
            profile_raw.unlink(missing_ok=True)
        run1_log = RESULTS / "operator-run1.log"
        run1_log.unlink(missing_ok=True)
        cpu.mark()
        before = await apimetrics.snapshot()
        operator = Operator(
            cp.kubeconfig_path, run1_log, conc, args.log_level, profile_path=profile_raw
        )
        cpu.add("operator", operator.pid)
        started = operator.started
        timeline: list[tuple[float, int, int]] = []
        first_secret = converged = None
        peak_rss = 0.0
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            if not operator.alive:
                raise RuntimeError(f"the operator exited; see {run1_log}")
            made = await count_namespace_secrets(core, NAMESPACE) - 1
            tokens = await endpoint.requests() - tokens_offset
            elapsed = time.perf_counter() - started
            timeline.append((round(elapsed, 2), made, tokens))
            peak_rss = max(peak_rss, rss_mb(operator.pid) or 0.0)
            if made and first_secret is None:
                first_secret = elapsed
            if made >= n:
                converged = elapsed
                break
            if len(timeline) % 20 == 0:
                log(f"  {elapsed:6.1f}s  secrets {made:6d}  token requests {tokens:6d}  "
                    f"rss {rss_mb(operator.pid) or 0:.0f} MB")  # fmt: skip
            await asyncio.sleep(POLL)
        rss_converged = rss_mb(operator.pid)
        cpu_converge = cpu.mark()
        calls = ApiserverMetrics.diff(before, await apimetrics.snapshot(), n)
        labelled = await count_labelled(core, NAMESPACE, f"{MANAGED_BY}=oauth-token-operator")
        tokens_converged = await endpoint.requests() - tokens_offset
        if converged is None:
            result["error"] = f"not converged within {args.timeout}s ({labelled}/{n} Secrets)"
        # Let the operator finish what follows the writes (status patches, Events) before
        # it is killed, so that the restart starts from a settled state.
        idle = await wait_idle(operator.pid, 3.0, 0.05, 120 + n / 50)
        settled = time.perf_counter() - started
        cpu_settle = cpu.mark()
        throughput = n / converged if converged else None
        baseline_wps = result["baseline"]["writes_per_second"]
        minimal_cps = result["minimal"]["clients_per_second"]
        result["convergence"] = {
            "converged": converged is not None,
            "seconds": round(converged, 2) if converged else None,
            "first_secret_seconds": round(first_secret, 2) if first_secret else None,
            "throughput_per_second": round(throughput, 1) if throughput else None,
            "ratio_to_baseline": round(throughput / baseline_wps, 3) if throughput else None,
            "ratio_to_minimal": round(throughput / minimal_cps, 3) if throughput else None,
            # From the first output Secret to the last: without the operator's start-up.
            "steady_throughput_per_second": (
                round((n - 1) / (converged - first_secret), 1)
                if converged and first_secret and converged > first_secret
                else None
            ),
            "labelled_secrets": labelled,
            "token_requests": tokens_converged,
            "token_requests_after_settle": await endpoint.requests() - tokens_offset,
            "settled_seconds": round(settled, 2) if idle is not None else None,
            "rss_mb_at_convergence": rss_converged,
            "rss_mb_after_settle": rss_mb(operator.pid),
            "rss_mb_peak_sampled": round(peak_rss, 1),
            "vmhwm_mb": rss_mb(operator.pid, "VmHWM"),
            "cpu_seconds_to_convergence": cpu_converge,
            "cpu_seconds_convergence_to_settle": cpu_settle,
            "operator_cpu_ms_per_client": round(
                1000 * (cpu_converge["operator"] + cpu_settle["operator"]) / n, 2
            ),
            "api_calls_to_convergence": calls,
            "timeline": timeline,
        }
        log(f"  converged in {converged and round(converged, 1)}s; settled after "
            f"{settled:.1f}s; RSS {rss_converged} MB")  # fmt: skip

        # ---- 4. restart: kill -9, start again, expect no token requests ---------------------
        log("kill -9 and restart ...")
        operator.kill9()
        if profile_raw is not None and profile_raw.exists():
            result["profile_run1"] = profile_summary(profile_raw)
        requests_before = await endpoint.requests()
        before = await apimetrics.snapshot()
        run2_log = RESULTS / "operator-restart.log"
        run2_log.unlink(missing_ok=True)
        cpu.mark()
        operator = Operator(
            cp.kubeconfig_path, run2_log, conc, args.log_level, metrics_port=free_port()
        )
        cpu.add("operator", operator.pid)
        started = operator.started
        reused_all = None
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            if not operator.alive:
                raise RuntimeError(f"the restarted operator exited; see {run2_log}")
            reused = await operator.metric("oauth_token_operator_tokens_reused_total")
            exchanged = await operator.metric("oauth_token_operator_exchanges_total")
            if (reused or 0) + (exchanged or 0) >= n:
                reused_all = time.perf_counter() - started
                break
            await asyncio.sleep(POLL)
        idle = await wait_idle(operator.pid, 3.0, 0.05, 120 + n / 50)
        idle_at = time.perf_counter() - started if idle is not None else None
        await asyncio.sleep(args.restart_watch)  # anything late would show up here
        result["restart"] = {
            "settle_seconds": round(reused_all, 2) if reused_all else None,
            "idle_seconds": round(idle_at, 2) if idle_at else None,
            "token_requests": await endpoint.requests() - requests_before,
            "tokens_reused": await operator.metric("oauth_token_operator_tokens_reused_total"),
            "exchanges": await operator.metric("oauth_token_operator_exchanges_total"),
            "rss_mb": rss_mb(operator.pid),
            "vmhwm_mb": rss_mb(operator.pid, "VmHWM"),
            "cpu_seconds": cpu.mark(),
            "api_calls": ApiserverMetrics.diff(before, await apimetrics.snapshot(), n),
        }
        # P2, idle: every token valid for most of an hour, nothing due; what does waiting cost?
        await asyncio.sleep(args.idle_window)
        idle_cpu = cpu.mark()
        result["idle"] = {
            "window_seconds": args.idle_window,
            "operator_cpu_share_of_a_core": round(idle_cpu["operator"] / args.idle_window, 4),
            "rss_mb": rss_mb(operator.pid),
        }
        operator.kill9()
        operator = None
        return result
    finally:
        if operator is not None:
            operator.stop()
        if api is not None:
            await api.close()
        await endpoint.aclose()
        endpoint.stop()
        await asyncio.to_thread(cp.stop)


def table(result: dict[str, Any]) -> str:
    c, r, b = result.get("convergence", {}), result.get("restart", {}), result.get("baseline", {})
    rows = [
        ("clients", result["clients"]),
        ("concurrency", result["concurrency"]),
        ("baseline Secret writes/s", b.get("writes_per_second")),
        ("OAuthClients created/s (setup)", result.get("create_oauthclients", {}).get("per_second")),
        ("convergence seconds", c.get("seconds")),
        ("  first Secret after (s)", c.get("first_secret_seconds")),
        ("operator throughput (clients/s)", c.get("throughput_per_second")),
        ("RATIO operator / raw writes", c.get("ratio_to_baseline")),
        (
            "minimal client (token, Secret, status) clients/s",
            result.get("minimal", {}).get("clients_per_second"),
        ),
        ("RATIO operator / minimal client (goal >= 0.8)", c.get("ratio_to_minimal")),
        ("  throughput after first Secret (/s)", c.get("steady_throughput_per_second")),
        ("token requests (expect N)", c.get("token_requests_after_settle")),
        ("settled (CPU idle) after (s)", c.get("settled_seconds")),
        ("operator RSS at convergence (MB)", c.get("rss_mb_at_convergence")),
        ("operator RSS after settle (MB)", c.get("rss_mb_after_settle")),
        ("operator peak RSS VmHWM (MB)", c.get("vmhwm_mb")),
        ("operator CPU ms per client", c.get("operator_cpu_ms_per_client")),
        ("CPU s to convergence", c.get("cpu_seconds_to_convergence")),
        ("restart: token requests (expect 0)", r.get("token_requests")),
        ("restart: all N resumed after (s)", r.get("settle_seconds")),
        ("restart: CPU idle after (s)", r.get("idle_seconds")),
        ("restart: RSS (MB)", r.get("rss_mb")),
        ("restart: CPU s", r.get("cpu_seconds")),
        (
            "idle: operator CPU share of a core (goal <= 0.02)",
            result.get("idle", {}).get("operator_cpu_share_of_a_core"),
        ),
        ("idle: RSS (MB)", result.get("idle", {}).get("rss_mb")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for title, calls in (
        ("API calls per client, minimal client", result.get("minimal", {}).get("api_calls")),
        ("API calls per client, convergence", c.get("api_calls_to_convergence")),
        ("API calls per client, restart", r.get("api_calls")),
    ):
        if calls:
            lines.append(f"{title}:")
            lines += [f"  {k:<44} {v['per_client']:>6}" for k, v in calls.items()]
    if "profile_run1" in result:
        lines.append("py-spy, first run, self time % (top 12):")
        lines += [
            f"  {pct:5.1f}  {f}" for f, pct in list(result["profile_run1"]["self_pct"].items())[:12]
        ]
    if "error" in result:
        lines.append(f"ERROR: {result['error']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help="operator --concurrency and baseline writers in flight")  # fmt: skip
    parser.add_argument("--create-concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for convergence (default 120 + N/10)")  # fmt: skip
    parser.add_argument("--restart-watch", type=float, default=5.0,
                        help="seconds to keep watching after the restart settled")  # fmt: skip
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="run the first operator under "
                        "py-spy (PY_SPY=path or py-spy on PATH)")  # fmt: skip
    parser.add_argument(
        "--idle-window", type=float, default=60.0, help="seconds of nothing due, after the restart"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="start the operator as this environment does (PYTHONDONTWRITEBYTECODE=1: "
        "compiles at every start) instead of with compiled bytecode as the image does",
    )
    args = parser.parse_args()
    global BYTECODE_CACHE
    BYTECODE_CACHE = not args.no_bytecode_cache
    if args.timeout is None:
        args.timeout = 120 + args.clients / 10
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {args.output} (total {result['total_seconds']}s)")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
