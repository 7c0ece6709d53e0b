#!/usr/bin/env python
"""Shards benchmark (issue 12): K operators, each started with `--selector shard=sI`, split N
new OAuthClients labelled shard=s0 … s(K-1) round robin, against one real kube-apiserver +
etcd and the fake token endpoint of bench_convergence.

It reports convergence (all N output Secrets), each shard's RSS and CPU, then kills every
shard with SIGKILL, starts them again and reports how long until every client was resumed
and how many token requests that made (expected: 0). One run, this machine; compare with
bench_convergence.py at N/K clients for what one replica does alone.

    .venv/bin/python bench/bench_shards.py --clients 20000 --shards 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    CpuMeter,
    Operator,
    TokenEndpoint,
    bounded,
    call,
    connect,
    count_namespace_secrets,
    create_credentials,
    free_port,
    oauth_client,
    rss_mb,
    wait_idle,
    warm_bytecode_cache,
)


def shard_of(i: int, shards: int) -> str:
    return f"s{i % shards}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.controlplane import ControlPlane

    n, k = args.clients, args.shards
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"clients": n, "shards": k, "concurrency": args.concurrency}
    cp = await asyncio.to_thread(ControlPlane().start)
    endpoint = TokenEndpoint()
    operators: list[Operator] = []
    api: Any = None
    try:
        procs = {name: proc.pid for name, proc, _ in cp._procs}
        cpu = CpuMeter({**procs, "token-endpoint": endpoint.process.pid or 0})
        api, core, custom = await connect(cp, NAMESPACE)
        await create_credentials(core)

        async def create_client(i: int) -> None:
            body = oauth_client(i, endpoint.url)
            body["metadata"]["labels"] = {"shard": shard_of(i, k)}
            await call(
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, body, _preload_content=False
                )
            )

        print(f"creating {n} OAuthClients in {k} shards ...")
        await bounded(n, 32, create_client)
        await asyncio.to_thread(warm_bytecode_cache)

        def start(phase: str, metrics: bool) -> list[Operator]:
            started = []
            for s in range(k):
                log = RESULTS / f"shard{s}-{phase}.log"
                log.unlink(missing_ok=True)
                operator = Operator(
                    cp.kubeconfig_path,
                    log,
                    args.concurrency,
                    "warning",
                    metrics_port=free_port() if metrics else 0,
                    selector=f"shard={shard_of(s, k)}",
                )
                cpu.add(f"shard{s}", operator.pid)
                started.append(operator)
            return started

        # ---- convergence ---------------------------------------------------------------------
        print(f"starting {k} shards; waiting for {n} output Secrets ...")
        cpu.mark()
        operators = start("run1", metrics=False)
        t0 = time.perf_counter()
        converged = None
        while time.perf_counter() - t0 < args.timeout:
            if not all(o.alive for o in operators):
                raise RuntimeError("a shard exited; see bench/results/shard*-run1.log")
            made = await count_namespace_secrets(core, NAMESPACE) - 1
            if made >= n:
                converged = time.perf_counter() - t0
                break
            await asyncio.sleep(POLL)
        cpu_converge = cpu.mark()
        for o in operators:
            await wait_idle(o.pid, 3.0, 0.05, 120 + n / 50)
        cpu_settle = cpu.mark()
        result["convergence"] = {
            "seconds": round(converged, 2) if converged else None,
            "throughput_per_second": round(n / converged, 1) if converged else None,
            "token_requests": await endpoint.requests(),
            "cpu_seconds_to_convergence": cpu_converge,
            "shards": [
                {
                    "rss_mb": rss_mb(o.pid),
                    "cpu_ms_per_client": round(
                        1000 * (cpu_converge[f"shard{s}"] + cpu_settle[f"shard{s}"]) / (n / k),
                        2,
                    ),
                }
                for s, o in enumerate(operators)
            ],
        }
        print(f"  converged in {converged and round(converged, 1)}s")

        # ---- restart every shard ---------------------------------------------------------------
        print("kill -9 and restart every shard ...")
        for o in operators:
            o.kill9()
        requests_before = await endpoint.requests()
        cpu.mark()
        operators = start("restart", metrics=True)
        t0 = time.perf_counter()
        resumed = None
        while time.perf_counter() - t0 < args.timeout:
            counted = 0.0
            for o in operators:
                for name in ("tokens_reused_total", "exchanges_total"):
                    counted += await o.metric(f"oauth_token_operator_{name}") or 0.0
            if counted >= n:
                resumed = time.perf_counter() - t0
                break
            await asyncio.sleep(POLL)
        for o in operators:
            await wait_idle(o.pid, 3.0, 0.05, 120 + n / 50)
        result["restart"] = {
            "all_resumed_seconds": round(resumed, 2) if resumed else None,
            "token_requests": await endpoint.requests() - requests_before,
            "cpu_seconds": cpu.mark(),
            "rss_mb": [rss_mb(o.pid) for o in operators],
        }
        return result
    finally:
        for o in operators:
            o.stop()
        if api is not None:
            await api.close()
        await endpoint.aclose()
        endpoint.stop()
        await asyncio.to_thread(cp.stop)


def table(result: dict[str, Any]) -> str:
    c, r = result.get("convergence", {}), result.get("restart", {})
    rows = [
        ("clients / shards", f"{result['clients']} / {result['shards']}"),
        ("convergence seconds", c.get("seconds")),
        ("throughput, all shards (clients/s)", c.get("throughput_per_second")),
        ("token requests (expect N)", c.get("token_requests")),
        ("CPU s to convergence", c.get("cpu_seconds_to_convergence")),
    ]
    for s, shard in enumerate(c.get("shards", [])):
        rows.append(
            (
                f"shard {s}: RSS MB / CPU ms per client",
                f"{shard['rss_mb']} / {shard['cpu_ms_per_client']}",
            )
        )
    rows += [
        ("restart: all resumed after (s)", r.get("all_resumed_seconds")),
        ("restart: token requests (expect 0)", r.get("token_requests")),
        ("restart: RSS MB per shard (goal <= 250)", r.get("rss_mb")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="each shard's")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--output", type=Path, default=RESULTS / "shards-latest.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
