#!/usr/bin/env python
"""Steady-state refresh benchmark (issue 12 P4 and P5) against a real kube-apiserver + etcd.

N client-credentials OAuthClients get L-second tokens from a fake token endpoint and renew
them R seconds before expiry without jitter, so the operator refreshes about N / (L - R)
times a second. Once every client is in its refresh cycle, one measuring window of W
seconds reports:

- P5, lateness: each token request's arrival at the endpoint minus the refresh time the
  operator planned for the token it replaces. Without jitter the plan is exactly the old
  token's expiry minus R (the endpoint knows both), so the endpoint measures lateness on its
  own, per request, with no polling of the API server.
- P4, API calls per refresh: apiserver_request_total over the window divided by the token
  requests in it (reads, Secret writes, status writes, Events).
- The operator's CPU per refresh and its RSS.

    .venv/bin/python bench/bench_steady.py --clients 6000    # 100 refreshes/s

Nothing but refreshes happens in the window: the clients exist and converged beforehand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_convergence import (  # noqa: E402
    BASELINE_NAMESPACE,
    CONCURRENCY,
    CREDENTIALS,
    GROUP,
    NAMESPACE,
    PLURAL,
    POLL,
    RESULTS,
    VERSION,
    ApiserverMetrics,
    CpuMeter,
    Operator,
    ServerProcess,
    bounded,
    call,
    client_name,
    connect,
    count_namespace_secrets,
    create_credentials,
    delete_all,
    die_with_parent,
    free_port,
    histogram_quantiles,
    profile_summary,
    rss_mb,
    serve,
    warm_bytecode_cache,
)


def _steady_token_server(conn: Any, lifetime: int, renew_before: int) -> None:  # pragma: no cover
    die_with_parent()
    import hashlib
    import secrets
    from urllib.parse import parse_qs

    from aiohttp import web

    expiry: dict[str, float] = {}  # client -> expiry of the token it holds (endpoint clock)
    arrivals: list[tuple[float, str, float]] = []  # (arrival, client, lateness) of refreshes

    async def token(request: web.Request) -> web.Response:
        now = time.time()
        try:
            form = parse_qs((await request.read()).decode())
        except ConnectionResetError:  # a refresher stopped at the end of its phase
            return web.Response(status=400)
        client = form.get("bench_client", ["?"])[0]
        previous = expiry.get(client)
        granted = lifetime
        if previous is not None:
            arrivals.append((now, client, now - (previous - renew_before)))
        else:
            # A client's first token is shorter by its own fraction of the refresh cycle, so
            # that refreshes come evenly, as in a steady state, however fast the operator
            # converged (otherwise the cycle repeats the convergence: a burst, then nothing).
            fraction = int(hashlib.sha256(client.encode()).hexdigest()[:8], 16) / 2**32
            granted = lifetime - int(fraction * (lifetime - renew_before - 10))
        expiry[client] = now + granted
        body = {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": granted,
        }
        return web.json_response(body)

    async def window(request: web.Request) -> web.Response:
        start, end = float(request.query["start"]), float(request.query["end"])
        prefix = request.query.get("prefix", "") + "/"
        chosen = [
            (at, lateness) for at, client, lateness in arrivals
            if start <= at < end and client.startswith(prefix)
        ]  # fmt: skip
        late = sorted(lateness for _, lateness in chosen)
        # Whether the late ones come together (a stall) or spread out (a slow refresher).
        by_second = Counter(int(at - start) for at, lateness in chosen if lateness > 1.0)

        def pct(p: float) -> float | None:
            return round(late[min(int(p * len(late)), len(late) - 1)], 3) if late else None

        return web.json_response(
            {
                "refreshes": len(late),
                "per_second": round(len(late) / (end - start), 1),
                "p50": pct(0.5),
                "p99": pct(0.99),
                "max": round(late[-1], 3) if late else None,
                "min": round(late[0], 3) if late else None,
                "over_1s": sum(1 for x in late if x > 1.0),
                "over_1s_by_second": dict(by_second),
            }
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"clients": len(expiry), "refreshes": len(arrivals)})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/window", window)
    app.router.add_post("/{tail:.*}", token)
    asyncio.run(serve(app, conn))


class MinimalRefresher:
    """bench/minimal_refresher.py as a process, in the operator's place."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        namespace: str,
        endpoint: str,
        renew: int,
        concurrency: int,
    ) -> None:
        script = Path(__file__).with_name("minimal_refresher.py")
        args = [sys.executable, str(script), str(kubeconfig), namespace, endpoint,
                str(renew), str(concurrency)]  # fmt: skip
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


class SteadyEndpoint(ServerProcess):
    def __init__(self, lifetime: int, renew_before: int) -> None:
        super().__init__(_steady_token_server, lifetime, renew_before)

    async def get(self, path: str, **params: float | str) -> dict[str, Any]:
        import httpx

        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(f"http://127.0.0.1:{self.port}{path}", params=params)
            result: dict[str, Any] = response.json()
            return result


def steady_client(i: int, namespace: str, endpoint: str, renew_before: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OAuthClient",
        "metadata": {"name": client_name(i), "namespace": namespace},
        "spec": {
            "tokenEndpoint": endpoint,
            "credentialsSecretRef": {"name": CREDENTIALS},
            # The endpoint tells clients apart by this; the phases use other namespaces.
            "extraParams": {"bench_client": f"{namespace}/{client_name(i)}"},
            "refresh": {
                "renewBefore": f"{renew_before}s",
                "jitterPercentage": 0,
                "minInterval": "10s",
            },
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The minimal refresher's phase (with --baseline, or alone with --minimal), then the
    operator's, on one control plane and one endpoint; each phase's objects are deleted
    before the next, so both work on a store of the same size."""
    from tests.support.controlplane import ControlPlane

    n, lifetime, renew = args.clients, args.lifetime, args.renew_before
    result: dict[str, Any] = {
        "clients": n,
        "concurrency": args.concurrency,
        "token_lifetime_seconds": lifetime,
        "renew_before_seconds": renew,
        "expected_refreshes_per_second": round(n / (lifetime - renew), 1),
        "window_seconds": args.window,
    }
    if args.minimal:
        kinds = ["minimal"]
    else:
        kinds = ["minimal", "operator"] if args.baseline else ["operator"]
    cp = await asyncio.to_thread(ControlPlane().start)
    endpoint = SteadyEndpoint(lifetime, renew)
    api: Any = None
    try:
        api, core, custom = await connect(cp, NAMESPACE, BASELINE_NAMESPACE)
        await asyncio.to_thread(warm_bytecode_cache)
        RESULTS.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            namespace = NAMESPACE if kind == "operator" else BASELINE_NAMESPACE
            result[kind] = await phase(args, cp, core, custom, endpoint, kind, namespace)
            if kind != kinds[-1]:
                await delete_all(core, custom, namespace)
        if len(kinds) == 2:
            operator, minimal = result["operator"], result["minimal"]
            result["ratio_refreshes_per_second"] = round(
                operator["lateness_seconds"]["per_second"]
                / max(minimal["lateness_seconds"]["per_second"], 0.1),
                3,
            )
        return result
    finally:
        if api is not None:
            await api.close()
        endpoint.stop()
        await asyncio.to_thread(cp.stop)


async def phase(
    args: argparse.Namespace,
    cp: Any,
    core: Any,
    custom: Any,
    endpoint: SteadyEndpoint,
    kind: str,
    namespace: str,
) -> dict[str, Any]:
    n, lifetime, renew = args.clients, args.lifetime, args.renew_before
    log = print
    result: dict[str, Any] = {}
    refresher: Operator | MinimalRefresher | None = None
    try:
        if kind == "operator":
            await create_credentials(core)

        async def create(i: int) -> None:
            body = steady_client(i, namespace, endpoint.url, renew)
            await call(
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, body, _preload_content=False
                )
            )

        log(f"{kind}: creating {n} OAuthClients ({lifetime} s tokens, renewed {renew} s before)")
        await bounded(n, 32, create)
        run_log = RESULTS / f"{kind}-steady.log"
        run_log.unlink(missing_ok=True)
        if kind == "minimal":
            refresher = MinimalRefresher(
                cp.kubeconfig_path, run_log, namespace, endpoint.url, renew, args.concurrency
            )
        else:
            # The operator runs with its default 90 s propagation margin; with R >= 90 the
            # plan is exactly expiry - R (the larger of the two wins), which the endpoint
            # measures.
            refresher = Operator(
                cp.kubeconfig_path, run_log, args.concurrency, "warning", metrics_port=free_port()
            )
        started = time.perf_counter()
        # The operator's namespace also holds the credentials Secret.
        extra = 1 if kind == "operator" else 0
        while await count_namespace_secrets(core, namespace) - extra < n:
            if not refresher.alive:
                raise RuntimeError(f"the {kind} refresher exited; see {run_log}")
            if time.perf_counter() - started > args.timeout:
                raise RuntimeError("not converged")
            await asyncio.sleep(POLL)
        converged = time.perf_counter() - started
        log(f"  converged in {converged:.1f}s; waiting one lifetime for the refresh cycle ...")
        await asyncio.sleep(lifetime)

        cpu = CpuMeter({"refresher": refresher.pid})
        for name, proc, _ in cp._procs:
            cpu.add(name, proc.pid)
        apimetrics = ApiserverMetrics(cp.server, cp.log_dir / "pki")
        before = await apimetrics.snapshot()
        histograms = ("run_start_delay_seconds", "run_duration_seconds")
        operator = refresher if isinstance(refresher, Operator) else None

        async def buckets() -> list[dict[float, float]]:
            names = [f"oauth_token_operator_{h}" for h in histograms]
            # None for the minimal refresher, which has no metrics.
            return [await operator.histogram(name) for name in names] if operator else []

        buckets_before = await buckets()
        cpu.mark()
        start = time.time()
        log(f"  measuring for {args.window} s ...")
        profiler = None
        if args.profile and kind == "operator":
            # py-spy attached for the window only: what a refresh costs, without start-up.
            profile_raw = RESULTS / "profile-steady.txt"
            profile_raw.unlink(missing_ok=True)
            pyspy = os.environ.get("PY_SPY", "py-spy")
            profiler = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                [pyspy, "record", "--format", "raw", "--rate", "100", "--nonblocking",
                 "--duration", str(args.window), "-o", str(profile_raw),
                 "--pid", str(refresher.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        await asyncio.sleep(args.window)
        end = time.time()
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
            result["profile_window"] = profile_summary(RESULTS / "profile-steady.txt")
        cpu_window = cpu.mark()
        after = await apimetrics.snapshot()
        buckets_after = await buckets()
        lateness = await endpoint.get("/window", start=start, end=end, prefix=namespace)
        lateness["window_start"] = round(start, 3)
        refreshes = max(int(lateness["refreshes"]), 1)
        calls = {
            key: {"calls": after[key] - before.get(key, 0),
                  "per_refresh": round((after[key] - before.get(key, 0)) / refreshes, 3)}
            for key in sorted(after)
            if after[key] - before.get(key, 0) >= max(refreshes // 100, 5)
        }  # fmt: skip
        result.update(
            {
                "convergence_seconds": round(converged, 1),
                "lateness_seconds": lateness,
                "api_calls_per_refresh": calls,
                "cpu_seconds": cpu_window,
                "cpu_ms_per_refresh": round(1000 * cpu_window["refresher"] / refreshes, 2),
                "cpu_share_of_a_core": round(cpu_window["refresher"] / args.window, 3),
                "rss_mb": rss_mb(refresher.pid),
                # From the operator's own histograms (bucket upper bounds): how late runs
                # started (waiting for a slot) and how long each held its slot.
                **{
                    histogram: histogram_quantiles(b, a, (0.5, 0.99))
                    # none for the minimal refresher
                    for histogram, b, a in zip(
                        histograms, buckets_before, buckets_after, strict=False
                    )
                },
            }
        )
        return result
    finally:
        if refresher is not None:
            refresher.stop()


def table(result: dict[str, Any]) -> str:
    kinds = [k for k in ("minimal", "operator") if k in result]
    phases = [result[k] for k in kinds]

    def row(label: str, value: Any, goal: str = "") -> tuple[str, ...]:
        return (label, *(str(value(p)) for p in phases), goal)

    def late(p: dict[str, Any]) -> dict[str, Any]:
        return dict(p["lateness_seconds"])

    rows = [
        ("", *kinds, "goal"),
        row("refreshes/s in the window", lambda p: late(p)["per_second"],
            f"{result['expected_refreshes_per_second']} asked for"),
        row("P5 lateness p50 / p99 / max (s)",
            lambda p: f"{late(p)['p50']} / {late(p)['p99']} / {late(p)['max']}", "p99 <= 1 s"),
        row("refreshes later than 1 s",
            lambda p: f"{late(p)['over_1s']} of {late(p)['refreshes']}"),
    ]  # fmt: skip
    for key in sorted({key for p in phases for key in p["api_calls_per_refresh"]}):
        rows.append(
            row(f"P4 {key} per refresh",
                lambda p, k=key: p["api_calls_per_refresh"].get(k, {}).get("per_refresh", 0))
        )  # fmt: skip
    rows += [
        row("CPU per refresh (ms)", lambda p: p["cpu_ms_per_refresh"]),
        row("CPU share of a core", lambda p: p["cpu_share_of_a_core"]),
        row("kube-apiserver CPU share of a core",
            lambda p: round(p["cpu_seconds"]["kube-apiserver"] / result["window_seconds"], 3)),
        row("RSS (MB)", lambda p: p["rss_mb"]),
    ]  # fmt: skip
    for histogram in ("run_start_delay_seconds", "run_duration_seconds"):
        rows.append(
            row(f"{histogram} p50 / p99 (<=)",
                lambda p, h=histogram: f"{p[h]['p50']} / {p[h]['p99']}" if h in p else "-")
        )  # fmt: skip
    if "ratio_refreshes_per_second" in result:
        rows.append(("RATIO refreshes/s operator / minimal", "", str(
            result["ratio_refreshes_per_second"]), ""))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    operator = result.get("operator", {})
    if "profile_window" in operator:
        frames = list(operator["profile_window"]["self_pct"].items())[:15]
        text += "\nprofile over the window, self time:\n"
        text += "\n".join(f"  {pct:5.1f}  {frame}" for frame, pct in frames)
        frames = list(operator["profile_window"]["inclusive_pct"].items())[:40]
        text += "\nprofile over the window, inclusive:\n"
        text += "\n".join(f"  {pct:5.1f}  {frame}" for frame, pct in frames)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--lifetime", type=int, default=180, help="token lifetime, seconds")
    parser.add_argument(
        "--renew-before",
        type=int,
        default=120,
        help="seconds before expiry; at least the operator's 90 s margin",
    )
    parser.add_argument("--window", type=int, default=120, help="measuring window, seconds")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy (PY_SPY) over the measuring window"
    )
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="the minimal refresher (bench/minimal_refresher.py) alone, not the operator",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="the minimal refresher first, then the operator, in one run (and their ratio)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "steady-latest.json")
    args = parser.parse_args()  # fmt: skip
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
