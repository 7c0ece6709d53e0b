"""Crowd benchmark (issue 23): does the operator's cost follow its own clients, or every
Secret in the cluster? One control plane, N clients (each with its own credentials Secret, as
in real clusters), then in the same run:

1. **without**: kill -9 and restart the converged operator; then a quiet window.
2. U unrelated Secrets of 1 KB to 500 KB (Helm-release-like: type helm.sh/release.v1,
   `owner=helm` labels, a base64 release blob) are created in the operator's namespace.
3. **with**: kill -9 and restart again; then a churn window of `--churn-rate` unrelated
   Secret updates per second (merge patches of a new blob of the same size).

Reported per phase: restart time (spawn to all N resumed, by the operator's metrics), peak
RSS of the restarted process (VmHWM), RSS after settling, kube-apiserver + etcd CPU from
spawn to all resumed, the API calls of the restart, and operator CPU over the window; and
the ratios with/without. See bench/README.md ("Crowd benchmark")."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_convergence import (  # noqa: E402
    CONCURRENCY,
    GROUP,
    NAMESPACE,
    PLURAL,
    POLL,
    RESULTS,
    VERSION,
    ApiserverMetrics,
    CpuMeter,
    Operator,
    TokenEndpoint,
    b64,
    bounded,
    call,
    client_name,
    connect,
    count_labelled,
    free_port,
    rss_mb,
    wait_idle,
    warm_bytecode_cache,
)

MANAGED = "app.kubernetes.io/managed-by=oauth-token-operator"
SIZES = (1_000, 10_000, 50_000, 200_000, 500_000)  # cycled: 152 KB on average


def credentials_name(i: int) -> str:
    return f"{client_name(i)}-credentials"


def oauth_client(i: int, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OAuthClient",
        "metadata": {"name": client_name(i), "namespace": NAMESPACE},
        "spec": {
            "tokenEndpoint": endpoint,
            "grantType": "client_credentials",
            "clientAuthentication": "client_secret_basic",
            "credentialsSecretRef": {"name": credentials_name(i)},
            "scopes": ["openid"],
        },
    }


def blob(size: int) -> str:
    """A Helm release's shape: base64 of (gzipped, here random) bytes, `size` characters,
    base64-encoded once more as Secret data."""
    return b64(base64.b64encode(os.urandom(size * 3 // 4)).decode())


def release(i: int) -> dict[str, Any]:
    name = f"app-{i:05d}"
    return {
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v1",
            "labels": {"owner": "helm", "name": name, "status": "deployed", "version": "1"},
        },
        "type": "helm.sh/release.v1",
        "data": {"release": blob(SIZES[i % len(SIZES)])},
    }


async def restart(
    operator: Operator, cp: Any, n: int, args: argparse.Namespace, cpu: CpuMeter, api: Any
) -> tuple[Operator, dict[str, Any]]:
    """kill -9, start again; measure until every client is resumed, then until settled."""
    operator.kill9()
    log_path = RESULTS / "crowd-operator.log"
    before = await api.snapshot()
    cpu.mark()
    operator = Operator(
        cp.kubeconfig_path, log_path, args.concurrency, "warning", metrics_port=free_port()
    )
    cpu.add("operator", operator.pid)
    resumed = None
    peak = 0.0
    while time.perf_counter() < operator.started + args.timeout:
        if not operator.alive:
            raise RuntimeError(f"the operator exited; see {log_path}")
        peak = max(peak, rss_mb(operator.pid) or 0.0)
        reused = await operator.metric("oauth_token_operator_tokens_reused_total")
        exchanged = await operator.metric("oauth_token_operator_exchanges_total")
        if (reused or 0) + (exchanged or 0) >= n:
            resumed = time.perf_counter() - operator.started
            break
        await asyncio.sleep(POLL / 5)
    start_cpu = cpu.mark()
    await wait_idle(operator.pid, 3.0, 0.05, 120 + n / 50)
    await asyncio.sleep(5)
    cpu.mark()
    return operator, {
        "restart_seconds": round(resumed, 2) if resumed else None,
        "exchanges": await operator.metric("oauth_token_operator_exchanges_total"),
        "peak_rss_mb": rss_mb(operator.pid, "VmHWM"),
        "peak_rss_mb_sampled": peak,
        "rss_mb_settled": rss_mb(operator.pid),
        "apiserver_cpu_seconds_start": round(
            start_cpu.get("kube-apiserver", 0.0) + start_cpu.get("etcd", 0.0), 2
        ),
        "operator_cpu_seconds_start": start_cpu["operator"],
        "api_calls_start": ApiserverMetrics.diff(before, await api.snapshot(), n),
        "secret_fetches": await operator.metric("oauth_token_operator_secret_fetches_total"),
    }


async def restarts(
    operator: Operator, cp: Any, n: int, args: argparse.Namespace, cpu: CpuMeter, api: Any
) -> tuple[Operator, dict[str, Any]]:
    """`--restarts` restarts in a row; each figure is their median (the machine is shared),
    every restart's figures are kept under "each"."""
    each = []
    for _ in range(args.restarts):
        operator, figures = await restart(operator, cp, n, args, cpu, api)
        each.append(figures)
    median = dict(each[len(each) // 2])
    for key, value in median.items():
        if isinstance(value, float | int):
            median[key] = statistics.median(float(e[key] or 0) for e in each)
    return operator, {**median, "each": each}


async def window(
    core: Any, cpu: CpuMeter, seconds: float, rate: float, crowd: int
) -> dict[str, Any]:
    """Operator CPU over `seconds`, while `rate` unrelated Secrets a second are rewritten."""
    cpu.mark()
    started = time.perf_counter()
    updates = 0
    pending: set[asyncio.Task[Any]] = set()
    while crowd and rate and time.perf_counter() - started < seconds:
        i = random.randrange(crowd)
        patch = {"data": {"release": blob(SIZES[i % len(SIZES)])}}
        name = f"sh.helm.release.v1.app-{i:05d}.v1"
        task = asyncio.create_task(
            call(core.patch_namespaced_secret(name, NAMESPACE, patch, _preload_content=False))
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
        updates += 1
        await asyncio.sleep(max(started + updates / rate - time.perf_counter(), 0))
    await asyncio.gather(*pending)
    await asyncio.sleep(max(seconds - (time.perf_counter() - started), 0))
    elapsed = time.perf_counter() - started
    used = cpu.mark()
    return {
        "seconds": round(elapsed, 1),
        "updates_per_second": round(updates / elapsed, 1),
        "operator_cpu_share_of_a_core": round(used["operator"] / elapsed, 5),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.controlplane import ControlPlane

    n = args.clients
    RESULTS.mkdir(parents=True, exist_ok=True)
    cp = await asyncio.to_thread(ControlPlane().start)
    endpoint = TokenEndpoint()
    operator: Operator | None = None
    client: Any = None
    result: dict[str, Any] = {"clients": n, "concurrency": args.concurrency}
    try:
        procs = {name: proc.pid for name, proc, _ in cp._procs}
        cpu = CpuMeter(procs)
        api = ApiserverMetrics(cp.server, cp.log_dir / "pki")
        client, core, custom = await connect(cp, NAMESPACE)

        async def create_client(i: int) -> None:
            credentials = {"client_id": b64(f"c{i}"), "client_secret": b64(f"s{i}")}
            await call(core.create_namespaced_secret(
                NAMESPACE, {"metadata": {"name": credentials_name(i)}, "data": credentials},
                _preload_content=False))  # fmt: skip
            await call(custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, oauth_client(i, endpoint.url),
                _preload_content=False))  # fmt: skip

        print(f"creating {n} clients and their credentials Secrets ...")
        await bounded(n, 32, create_client)
        await asyncio.to_thread(warm_bytecode_cache)
        operator = Operator(cp.kubeconfig_path, RESULTS / "crowd-operator.log", args.concurrency,
                            "warning")  # fmt: skip
        while await count_labelled(core, NAMESPACE, MANAGED) < n:  # noqa: ASYNC110
            await asyncio.sleep(1)
        await wait_idle(operator.pid, 3.0, 0.05, 120 + n / 50)
        print("converged; restart without unrelated Secrets ...")
        operator, result["without"] = await restarts(operator, cp, n, args, cpu, api)
        result["without"]["window"] = await window(core, cpu, args.churn_window, 0, 0)

        u = args.unrelated or int(args.crowd_mb * 1e6 / (sum(SIZES) / len(SIZES)))
        print(f"creating {u} unrelated Secrets ...")
        t = time.perf_counter()

        async def create_release(i: int) -> None:
            await call(core.create_namespaced_secret(NAMESPACE, release(i), _preload_content=False))

        await bounded(u, 8, create_release)
        data_mb = sum(SIZES[i % len(SIZES)] for i in range(u)) / 1e6
        result["unrelated"] = {"secrets": u, "data_mb": round(data_mb, 1),
                               "create_seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
        print(f"  {data_mb:.0f} MB in {time.perf_counter() - t:.0f}s; restart with them ...")
        operator, result["with"] = await restarts(operator, cp, n, args, cpu, api)
        print(f"churn: {args.churn_rate} unrelated updates/s for {args.churn_window}s ...")
        result["with"]["window"] = await window(core, cpu, args.churn_window, args.churn_rate, u)
        w, wo = result["with"], result["without"]
        result["ratios_with_to_without"] = {
            k: round(w[k] / wo[k], 2) if w.get(k) and wo.get(k) else None
            for k in (
                "restart_seconds",
                "peak_rss_mb",
                "rss_mb_settled",
                "apiserver_cpu_seconds_start",
            )
        }
        return result
    finally:
        if operator is not None:
            operator.stop()
        if client is not None:
            await client.close()
        await endpoint.aclose()
        endpoint.stop()
        await asyncio.to_thread(cp.stop)


def table(result: dict[str, Any]) -> str:
    w, wo, r = result["with"], result["without"], result["ratios_with_to_without"]
    u = result["unrelated"]
    rows = [
        ("restart until all resumed, s", "restart_seconds"),
        ("peak RSS of the restart (VmHWM), MB", "peak_rss_mb"),
        ("RSS after settling, MB", "rss_mb_settled"),
        ("kube-apiserver + etcd CPU for the start, s", "apiserver_cpu_seconds_start"),
        ("token requests (exchanges) after restart", "exchanges"),
        ("Secret GETs by the metadata watch", "secret_fetches"),
    ]
    lines = [
        f"clients {result['clients']}; unrelated: {u['secrets']} Secrets, {u['data_mb']} MB",
        "| figure | without | with | with/without |",
        "| --- | --- | --- | --- |",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {wo.get(key)} | {w.get(key)} | {r.get(key, '')} |")
    lines.append(
        f"| operator CPU over the window, share of a core | "
        f"{wo['window']['operator_cpu_share_of_a_core']} (quiet) | "
        f"{w['window']['operator_cpu_share_of_a_core']} "
        f"({w['window']['updates_per_second']} updates/s) | |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--crowd-mb", type=float, default=400, help="unrelated data, MB")
    parser.add_argument("--unrelated", type=int, default=0, help="U (overrides --crowd-mb)")
    parser.add_argument("--churn-rate", type=float, default=50, help="updates per second")
    parser.add_argument("--churn-window", type=float, default=60, help="seconds")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--restarts", type=int, default=3, help="per phase; medians")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--output", type=Path, default=RESULTS / "crowd-latest.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
