"""The operator's main job on an embedded default: a local control plane (kube-apiserver +
etcd), a local identity provider (oidc-provider over TLS), the example OAuthClient, the
token Secret appearing, and then being refreshed before it expires."""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.idp import IdentityProvider  # noqa: E402
from tests.support.operator_process import OperatorProcess  # noqa: E402
from tests.support.pki import TestCA  # noqa: E402

TOKEN_TTL = 40  # seconds: short, so that the refresh is visible within the demo
NAMESPACE = "demo"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    result: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return result


def token_secret(cp: ControlPlane) -> dict[str, str]:
    out = cp.kubectl("get", "secret", "api-token", "-n", NAMESPACE, "-o", "json", check=False)
    if out.returncode:
        return {}
    data = json.loads(out.stdout).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def wait_for(check, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(1)
    raise SystemExit("demo: timed out")


def main() -> None:
    ca = TestCA()
    say("starting kube-apiserver + etcd and oidc-provider on loopback")
    with ControlPlane() as cp, IdentityProvider(ca, access_token_ttl=TOKEN_TTL) as idp:
        print(f"    apiserver {cp.server}\n    issuer    {idp.issuer}")
        cp.kubectl("apply", "-f", str(REPO / "crds"))
        cp.kubectl(
            "wait", "--for=condition=Established", "crd/oauthclients.oauth-token-operator.dev"
        )
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl(
            "create",
            "secret",
            "generic",
            "idp-ca",
            "-n",
            NAMESPACE,
            f"--from-literal=ca.crt={ca.cert_pem.decode()}",
        )

        say("applying examples/client-credentials.yaml (issuer pointed at the local provider)")
        docs = list(yaml.safe_load_all((REPO / "examples/client-credentials.yaml").read_text()))
        for doc in docs:
            if doc["kind"] == "OAuthClient":
                doc["spec"]["issuer"] = idp.issuer
                doc["spec"]["tls"] = {"caBundleSecretRef": {"name": "idp-ca"}}
        cp.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(docs))

        log = Path(tempfile.mkdtemp(prefix="oauth-token-operator-demo-")) / "operator.log"
        say(f"starting the operator (log: {log})")
        with OperatorProcess(cp.kubeconfig_path, NAMESPACE, log, ("--propagation-margin", "5s")):
            cp.kubectl(
                "wait",
                "--for=condition=Ready",
                "oauthclient/api",
                "-n",
                NAMESPACE,
                "--timeout=60s",
                timeout=70,
            )
            print(cp.kubectl("get", "oauthclients", "-n", NAMESPACE).stdout)
            first = token_secret(cp)
            c = claims(first["access_token"])
            print(f"    Secret api-token keys: {sorted(first)}")
            print(
                f"    token for client {c['client_id']}, scope {c['scope']!r}, "
                f"expires_at {first['expires_at']}"
            )

            say(f"waiting for the refresh (the token lives {TOKEN_TTL}s)")
            second = wait_for(
                lambda: (
                    (s := token_secret(cp)) and s["access_token"] != first["access_token"] and s
                ),
                TOKEN_TTL + 30,
            )
            print(
                f"    refreshed: new token expires_at {second['expires_at']} "
                f"(old one expires_at {first['expires_at']}: renewed before expiry)"
            )
            print(
                cp.kubectl(
                    "get",
                    "oauthclients",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "custom-columns=NAME:.metadata.name,READY:.status.conditions[0].status,"
                    "LAST:.status.lastRefreshTime,NEXT:.status.nextRefreshTime",
                ).stdout
            )
    say("demo complete: everything stopped")


if __name__ == "__main__":
    main()
