"""Chaos soak: never losing a grant, measured. 40 OAuthClients (half refresh-token, rotating,
with reuse detection at the real oidc-provider), 60 s tokens, renew margin 15 s; the operator
restarted every 45 s (SIGTERM, and with --sigkill every other restart a SIGKILL), the provider
cut off for 12 s every 35 s, and half way kube-apiserver stopped for 10 s once refreshes are
in flight (the provider holds its answers back 3 s first, so rotated refresh tokens arrive
while nothing can be written). Prints refreshes, expired tokens seen by a sampler that reads
every output Secret each second (those that expired while the apiserver was away, or within
10 s of its return, apart), grants lost (every stored refresh token is tried at the end),
reuse errors, outcome-unknown exchanges, operator exits nobody asked for, and the rotation
persist window (p50/p99).

    .venv/bin/python bench/soak.py --minutes 10            # SIGTERM restarts and outages
    .venv/bin/python bench/soak.py --minutes 11 --sigkill   # SIGKILL too: the crash window
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.cluster import Cluster  # noqa: E402
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.idp import IdentityProvider  # noqa: E402
from tests.support.pki import TestCA  # noqa: E402
from tests.support.soak import Faults, Soak, SoakConfig  # noqa: E402

CRD = REPO / "crds" / "oauthclients.oauth-token-operator.dev.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--token-ttl", type=int, default=60)
    parser.add_argument("--margin", default="15s")
    parser.add_argument("--restart-every", type=float, default=45.0)
    parser.add_argument("--sigkill", action="store_true", help="every other restart a SIGKILL")
    parser.add_argument("--outage-every", type=float, default=35.0)
    parser.add_argument("--outage-seconds", type=float, default=12.0)
    parser.add_argument("--no-apiserver-restart", action="store_true")
    args = parser.parse_args()
    config = SoakConfig(
        clients=args.clients,
        duration=args.minutes * 60,
        token_ttl=args.token_ttl,
        margin=args.margin,
        faults=Faults(
            restart_every=args.restart_every,
            sigkill=args.sigkill,
            outage_every=args.outage_every,
            outage_seconds=args.outage_seconds,
            apiserver_restart_at=None if args.no_apiserver_restart else 0.5,
        ),
    )
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - began:6.0f} s] {text}", flush=True)

    ca = TestCA()
    with ControlPlane() as cp, IdentityProvider(ca, access_token_ttl=args.token_ttl) as idp:
        cp.kubectl("apply", "-f", str(CRD))
        cp.kubectl(
            "wait", "--for=condition=Established", "crd/oauthclients.oauth-token-operator.dev"
        )
        namespace = f"soak-{uuid.uuid4().hex[:6]}"
        cp.kubectl("create", "namespace", namespace)
        cluster = Cluster(cp, namespace)
        cluster.create_secret("idp-ca", {"ca.crt": ca.cert_pem.decode()})
        report = Soak(cp, cluster, idp, "idp-ca", workdir, config, say).run()
    print("\n".join(report.lines()))
    print(f"operator log: {workdir / 'operator.log'}")
    lost = report.grants_lost or report.expired
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
