"""A chaos soak: many OAuthClients on the real provider (half of them refresh-token clients
whose tokens rotate, with reuse detection), while the operator is stopped with SIGTERM or
killed with SIGKILL, the provider is cut off, and kube-apiserver restarts. A sampler reads
every output Secret each second. `bench/soak.py` runs it for minutes or hours;
`tests/integration/test_soak.py` for two minutes.

What it reports is what a user would count: refreshes done, expired tokens seen in Secrets,
grants lost (every stored refresh token is tried at the end), outcome-unknown exchanges,
operator exits nobody asked for, and the rotation persist window (the operator's own
histogram, summed over its lifetimes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from oauth_token_operator.wire import parse_rfc3339
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane, _free_port
from tests.support.idp import (
    CC_POST,
    CC_POST_SECRET,
    RT_POST,
    RT_POST_SECRET,
    IdentityProvider,
    authorization_code_grant,
)
from tests.support.operator_process import OperatorProcess

EXPIRES_AT = "oauth-token-operator.dev/expires-at"
MANAGED = "app.kubernetes.io/managed-by=oauth-token-operator"
PERSIST_METRIC = "oauth_token_operator_rotation_persist_seconds_bucket"


@dataclass
class Faults:
    """What happens during the soak; None turns a fault off."""

    restart_every: float | None = 45.0  # stop and start the operator this often
    sigkill: bool = False  # every other restart is a SIGKILL instead of a SIGTERM
    outage_every: float | None = 35.0  # cut the provider off this often ...
    outage_seconds: float = 12.0  # ... for this long (shorter than the renew window)
    apiserver_restart_at: float | None = 0.5  # one kube-apiserver restart, at this fraction
    # At that time, token answers are first held back this long, so that refreshes are in
    # flight when kube-apiserver stops; it stays down this long, past the operator's own
    # retries of a rotated refresh token's write (0: a plain restart).
    apiserver_hold_ms: int = 3000
    apiserver_down_seconds: float = 10.0


@dataclass
class SoakConfig:
    clients: int = 40  # half client-credentials, half refresh-token
    duration: float = 600.0
    token_ttl: int = 60
    margin: str = "15s"
    faults: Faults = field(default_factory=Faults)


@dataclass
class SoakReport:
    seconds: float = 0.0
    refreshes: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    expired: set[tuple[str, str]] = field(default_factory=set)  # (Secret, expires-at) seen late
    grants_lost: list[str] = field(default_factory=list)
    reuse_reasons: dict[str, int] = field(default_factory=dict)
    outcome_unknown: int = 0
    unexpected_exits: int = 0
    sigterms: int = 0
    sigkills: int = 0
    outages: int = 0
    apiserver_restarts: int = 0
    in_flight_at_apiserver_stop: int = 0  # token requests the provider was answering
    # (Secret, expires-at) that expired while kube-apiserver was down or just back: no
    # operator can write a Secret then; counted apart from `expired`.
    expired_while_apiserver_down: set[tuple[str, str]] = field(default_factory=set)
    apiserver_down: list[tuple[float, float]] = field(default_factory=list)  # epoch windows
    persist_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def persist_quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q of the persist window."""
        finite = sorted(le for le in self.persist_buckets if le != float("inf"))
        total = self.persist_buckets.get(float("inf"), 0.0)
        if not total:
            return None
        for le in finite:
            if self.persist_buckets[le] >= q * total:
                return le
        return float("inf")

    def lines(self) -> list[str]:
        p50, p99 = self.persist_quantile(0.5), self.persist_quantile(0.99)
        rotations = int(self.persist_buckets.get(float("inf"), 0))
        return [
            f"duration                      {self.seconds:.0f} s",
            f"refreshes (provider)          {self.refreshes}",
            f"Secret samples                {self.samples}",
            f"expired tokens seen           {len(self.expired)}",
            f"grants lost                   {len(self.grants_lost)} {self.grants_lost}",
            f"reuse errors at the provider  {sum(self.reuse_reasons.values())} "
            f"{self.reuse_reasons}",
            f"outcome-unknown exchanges     {self.outcome_unknown}",
            f"operator exits not asked for  {self.unexpected_exits}",
            f"faults                        {self.sigterms} SIGTERM, {self.sigkills} SIGKILL, "
            f"{self.outages} provider outages, {self.apiserver_restarts} apiserver restarts "
            f"({self.in_flight_at_apiserver_stop} refreshes in flight at the stop)",
            f"expired while apiserver down  {len(self.expired_while_apiserver_down)}",
            f"rotation persist window       p50 <= {_ms(p50)}, p99 <= {_ms(p99)} "
            f"(histogram bucket bounds, {rotations} rotations)",
        ]


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


class OutageProxy:
    """The provider behind a loopback TCP proxy that can be cut off. During an outage new
    connections are refused (the listening socket is closed) and a kept-alive connection is
    closed when its next request starts; a request already forwarded gets its answer, as
    when a provider's load balancer drains."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._down = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> OutageProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._down = False
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        self._down = True
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        awaiting = False  # a request was forwarded and its answer has not started

        async def upstream() -> None:
            nonlocal awaiting
            while chunk := await client_r.read(65536):
                if self._down and not awaiting:
                    return  # a new request on a kept-alive connection: refused
                awaiting = True
                server_w.write(chunk)
                await server_w.drain()

        async def downstream() -> None:
            nonlocal awaiting
            while chunk := await server_r.read(65536):
                awaiting = False
                client_w.write(chunk)
                await client_w.drain()

        with contextlib.suppress(OSError):
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
        for writer in (client_w, server_w):
            writer.close()


class Soak:
    def __init__(
        self,
        cp: ControlPlane,
        cluster: Cluster,
        idp: IdentityProvider,
        ca_secret: str,
        workdir: Path,
        config: SoakConfig,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.cp, self.cluster, self.idp = cp, cluster, idp
        # The apiserver outage's progress: None (not yet), armed, down, done.
        self._apiserver_phase: str | None = None
        self._apiserver_step_at = 0.0
        self._apiserver_stopped = 0.0
        self.ca_secret = ca_secret
        self.workdir = workdir
        self.config = config
        self.say = say
        self.report = SoakReport()
        self.metrics_port = _free_port()
        self.operator = OperatorProcess(
            cp.kubeconfig_path,
            cluster.namespace,
            workdir / "operator.log",
            (
                "--log-level",
                "info",
                "--metrics-port",
                str(self.metrics_port),
                "--propagation-margin",
                config.margin,
                "--drain-timeout",
                "20s",
            ),
        )
        self.proxy = OutageProxy(int(idp.issuer.rsplit(":", 1)[1])).start()
        self._expected_stop = False
        self._last_scrape: dict[float, float] = {}
        self.rt_names: list[str] = []

    # -- setup ------------------------------------------------------------------------------

    def create_clients(self) -> None:
        endpoint = f"https://127.0.0.1:{self.proxy.port}/token"
        self.cluster.create_secret(
            "cc-creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET}
        )
        for i in range(self.config.clients):
            refresh = i % 2 == 1
            name = f"{'rt' if refresh else 'cc'}-{i:03d}"
            spec: dict[str, Any] = {
                "tokenEndpoint": endpoint,
                "clientAuthentication": "client_secret_post",
                "credentialsSecretRef": {"name": "cc-creds"},
                "tls": {"caBundleSecretRef": {"name": self.ca_secret}},
            }
            if refresh:
                grant = authorization_code_grant(self.idp, RT_POST, RT_POST_SECRET)
                self.cluster.create_secret(
                    f"{name}-creds",
                    {
                        "client_id": RT_POST,
                        "client_secret": RT_POST_SECRET,
                        "refresh_token": grant["refresh_token"],
                    },
                )
                spec |= {
                    "grantType": "refresh_token",
                    "credentialsSecretRef": {"name": f"{name}-creds"},
                }
                self.rt_names.append(name)
            self.cluster.apply(
                {
                    "apiVersion": "oauth-token-operator.dev/v1alpha1",
                    "kind": "OAuthClient",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            )

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> SoakReport:
        cfg, faults, report = self.config, self.config.faults, self.report
        self.create_clients()
        self.operator.start()
        eventually(self._all_written, timeout=120, interval=1, what="every output Secret")
        self.idp.reset_stats()
        self.say(f"{cfg.clients} clients ready; soaking for {cfg.duration:.0f} s")
        start = time.monotonic()
        next_restart = start + (faults.restart_every or float("inf"))
        next_outage = start + (faults.outage_every or float("inf"))
        outage_ends: float | None = None
        apiserver_at = (
            start + cfg.duration * faults.apiserver_restart_at
            if faults.apiserver_restart_at is not None
            else float("inf")
        )
        if faults.apiserver_restart_at is None:
            self._apiserver_phase = "done"
        while (now := time.monotonic()) < start + cfg.duration:
            self._sample()
            if not self.operator.alive:
                report.unexpected_exits += 1
                self.say("the operator exited on its own; starting it again")
                self.operator.start()
            if now >= next_restart and self._apiserver_phase not in ("armed", "down"):
                self._restart(kill=faults.sigkill and (report.sigterms + report.sigkills) % 2 == 1)
                next_restart = now + (faults.restart_every or float("inf"))
            if outage_ends is None and now >= next_outage:
                self.proxy.cut()
                report.outages += 1
                outage_ends = now + faults.outage_seconds
                self.say(f"provider cut off for {faults.outage_seconds:.0f} s")
            if outage_ends is not None and now >= outage_ends:
                self.proxy.restore()
                outage_ends = None
                next_outage = now + (faults.outage_every or float("inf"))
            if now >= apiserver_at:
                self._apiserver_outage(now)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        if outage_ends is not None:
            self.proxy.restore()
        if self._apiserver_phase in ("armed", "down"):
            self.idp.delay_token_answers(0)
            if self._apiserver_phase == "down":
                self.cp.start_apiserver()
        report.seconds = time.monotonic() - start
        self._finish()
        return report

    def _apiserver_outage(self, now: float) -> None:
        """One step of the kube-apiserver outage: hold the provider's answers back, stop
        the apiserver once a refresh is in flight (rotated refresh tokens then arrive while
        nothing can be written), start it again after apiserver_down_seconds. Operator
        restarts wait meanwhile: a stop while nothing can be persisted is another test."""
        faults, report = self.config.faults, self.report
        if self._apiserver_phase is None:
            self.idp.delay_token_answers(faults.apiserver_hold_ms)
            self._apiserver_phase, self._apiserver_step_at = "armed", now
        elif self._apiserver_phase == "armed":
            in_flight = self.idp.in_flight()
            waited = now >= self._apiserver_step_at + 2 * self.config.token_ttl
            if in_flight or waited or not faults.apiserver_hold_ms:
                report.in_flight_at_apiserver_stop += in_flight
                self.say(f"stopping kube-apiserver ({in_flight} refreshes in flight)")
                self._apiserver_stopped = time.time()
                self.cp.stop_apiserver()
                self._apiserver_phase, self._apiserver_step_at = "down", now
        elif (
            self._apiserver_phase == "down"
            and now >= self._apiserver_step_at + faults.apiserver_down_seconds
        ):
            self.idp.delay_token_answers(0)
            self.cp.start_apiserver()
            report.apiserver_restarts += 1
            report.apiserver_down.append((self._apiserver_stopped, time.time()))
            self._apiserver_phase = "done"
            self.say("kube-apiserver is back")

    def _while_apiserver_down(self, at: float) -> bool:
        # Back up, the operator retries an API failure within BACKOFF_BASE (5 s) and writes.
        return any(start <= at <= end + 10.0 for start, end in self.report.apiserver_down)

    def _restart(self, *, kill: bool) -> None:
        self._bank_metrics()
        if kill:
            self.operator.kill()
            self.report.sigkills += 1
        else:
            self.operator.terminate(timeout=60)
            self.report.sigterms += 1
        self.say(f"operator {'killed (SIGKILL)' if kill else 'stopped (SIGTERM)'}; restarting")
        self.operator.start()

    def _finish(self) -> None:
        report = self.report
        self._sample()
        self._bank_metrics()
        self.operator.terminate(timeout=60)
        self.report.sigterms += 1
        stats = self.idp.stats()
        report.refreshes = dict(stats["byGrant"])
        report.reuse_reasons = dict(stats["invalidGrantReasons"])
        report.outcome_unknown = len(
            re.findall(r"\(ExchangeOutcomeUnknown\)", self.operator.logs())
        )
        with self.idp.http_client() as http:
            for name in self.rt_names:
                stored = (self.cluster.secret_data(f"{name}-creds") or {}).get("refresh_token")
                answer = http.post(
                    self.idp.token_endpoint,
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": stored or "",
                        "client_id": RT_POST,
                        "client_secret": RT_POST_SECRET,
                    },
                )
                if answer.status_code != 200:
                    report.grants_lost.append(name)
        self.proxy.stop()

    # -- observation ------------------------------------------------------------------------

    def _secrets(self) -> list[dict[str, Any]] | None:
        result = self.cp.kubectl(
            "get",
            "secrets",
            "-n",
            self.cluster.namespace,
            "-l",
            MANAGED,
            "-o",
            "json",
            check=False,
        )
        if result.returncode != 0:
            return None  # kube-apiserver restarting
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items

    def _all_written(self) -> bool:
        return len(self._secrets() or []) >= self.config.clients

    def _sample(self) -> None:
        secrets = self._secrets()
        if secrets is None:
            return
        self.report.samples += 1
        now = time.time()
        for secret in secrets:
            expires = (secret["metadata"].get("annotations") or {}).get(EXPIRES_AT)
            at = parse_rfc3339(expires)
            if expires and at is not None and at <= now:
                seen = (secret["metadata"]["name"], expires)
                if self._while_apiserver_down(at):
                    self.report.expired_while_apiserver_down.add(seen)
                else:
                    self.report.expired.add(seen)
        self._scrape()

    def _scrape(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
            buckets = {}
            for line in text.splitlines():
                if line.startswith(PERSIST_METRIC):
                    le = re.search(r'le="([^"]+)"', line)
                    if le:
                        buckets[float(le.group(1))] = float(line.rsplit(" ", 1)[1])
            self._last_scrape = buckets

    def _bank_metrics(self) -> None:
        """The histogram lives as long as the process: add its last reading to the total."""
        self._scrape()
        for le, count in self._last_scrape.items():
            self.report.persist_buckets[le] = self.report.persist_buckets.get(le, 0.0) + count
        self._last_scrape = {}
