"""Output templates against the real API server (which validates a dockerconfigjson Secret's
content) and the real provider: the shapes consumers read, and the errors a user sees."""

from __future__ import annotations

import base64
import json
import netrc
import shlex
from pathlib import Path

import pytest
import yaml

from tests.integration.test_operator import claims, oauth_client
from tests.paths import EXAMPLES as PATHS_EXAMPLES
from tests.support.cluster import Cluster, eventually
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

EXAMPLES = PATHS_EXAMPLES / "templates"

DOCKER_CONFIG = (
    '{{ {"auths": {values.registry: {"username": values.username, "password": access_token,'
    ' "auth": (values.username ~ ":" ~ access_token) | b64encode}}} | tojson }}'
)


def test_templated_keys_and_a_docker_registry_secret(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.kubectl(
        "create",
        "configmap",
        "registry",
        "-n",
        cluster.namespace,
        "--from-literal=registry=registry.example.com",
    )
    secret = {
        "type": "kubernetes.io/dockerconfigjson",
        "templates": {
            ".dockerconfigjson": DOCKER_CONFIG,
            "authorization": "Authorization: {{ token_type }} {{ access_token }}",
            "token.json": '{{ {"token": access_token, "expires_at": expires_at} | tojson }}',
        },
        "values": {"username": "oauth2"},
        "valuesFrom": {"configMapName": "registry"},
    }
    cluster.apply(oauth_client("pull", identity_provider.issuer, "creds", secret=secret))
    cluster.wait_ready("pull")

    body = cluster.get("secret", "pull-token")
    assert body is not None and body["type"] == "kubernetes.io/dockerconfigjson"
    data = cluster.secret_data("pull-token")
    assert data is not None
    token = data["access_token"]
    assert claims(token)["client_id"] == CC_BASIC
    auth = json.loads(data[".dockerconfigjson"])["auths"]["registry.example.com"]
    assert auth["password"] == token
    assert base64.b64decode(auth["auth"]).decode() == f"oauth2:{token}"
    assert data["authorization"] == f"Authorization: Bearer {token}"
    assert json.loads(data["token.json"]) == {"token": token, "expires_at": data["expires_at"]}


def test_template_errors_say_where_and_cost_no_token(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    identity_provider.reset_stats()
    broken = {
        "templates": {"env": "TOKEN={{ access_token }}\nTYPE={% for x in scope %}{% endfor %}"}
    }
    cluster.apply(oauth_client("broken", identity_provider.issuer, "creds", secret=broken))
    missing = {
        "templates": {"who": "{{ values.user }}"},
        "valuesFrom": {"configMapName": "absent"},
    }
    cluster.apply(oauth_client("missing", identity_provider.issuer, "creds", secret=missing))

    ready = cluster.wait_not_ready("broken")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"] == (
        "spec.secret.templates[env], line 2: loops are not allowed in output templates"
    )
    ready = cluster.wait_not_ready("missing")
    assert ready["reason"] == "TemplateFailed"
    assert "ConfigMap absent" in ready["message"]
    assert identity_provider.stats()["byGrant"].get("client_credentials", 0) == 0
    assert cluster.get("secret", "missing-token") is None

    # The ConfigMap arrives without the value: still no token; then with it: the retry
    # (short backoff, ConfigMaps are not watched) writes the token.
    cluster.kubectl(
        "create", "configmap", "absent", "-n", cluster.namespace, "--from-literal=other=x"
    )
    eventually(
        lambda: "no value named 'user'" in (cluster.ready("missing") or {}).get("message", ""),
        timeout=60,
        what="the missing value named",
    )
    assert identity_provider.stats()["byGrant"].get("client_credentials", 0) == 0
    cluster.kubectl(
        "patch", "configmap", "absent", "-n", cluster.namespace, "-p", '{"data": {"user": "bob"}}'
    )
    cluster.wait_ready("missing", timeout=120)
    data = cluster.secret_data("missing-token")
    assert data is not None and data["who"] == "bob"


def test_admission_refuses_templates_over_fixed_keys(cluster: Cluster) -> None:
    clash = {"templates": {"access_token": "{{ access_token }}"}}
    result = cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(oauth_client("clash", "https://idp.example", "creds", secret=clash)),
        check=False,
    )
    assert result.returncode != 0
    assert "must not render a key the operator writes itself" in result.stderr


def test_every_example_shape_renders_what_its_consumer_reads(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    """examples/templates/*.yaml as shipped, pointed at the test provider."""
    cluster.create_secret(
        "api-credentials", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET}
    )
    names = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "OAuthClient":
                doc["spec"]["issuer"] = identity_provider.issuer
                doc["spec"]["tls"] = {"caBundleSecretRef": {"name": idp_ca_secret}}
                names.append(doc["metadata"]["name"])
            cluster.apply(doc)
    assert len(names) == 5
    outputs = {}
    for name in names:
        obj = cluster.wait_ready(name)
        outputs[name] = cluster.secret_data(obj["status"]["secretName"])
    header = outputs["api-header"]
    assert header is not None
    assert claims(header["access_token"])["client_id"] == CC_BASIC
    assert header["authorization"] == f"Authorization: Bearer {header['access_token']}"

    registry = outputs["registry-pull"]
    assert registry is not None
    auth = json.loads(registry[".dockerconfigjson"])["auths"]["registry.example.com"]
    assert auth["password"] == registry["access_token"]

    git = outputs["git-netrc"]
    assert git is not None
    (tmp_path / "netrc").write_text(git[".netrc"])
    entry = netrc.netrc(str(tmp_path / "netrc")).authenticators("git.example.com")
    assert entry is not None
    login, _, password = entry
    assert (login, password) == ("oauth2", git["access_token"])

    document = outputs["api-json"]
    assert document is not None
    assert json.loads(document["token.json"])["access_token"] == document["access_token"]

    env = outputs["api-env"]
    assert env is not None
    parsed = dict(line.split("=", 1) for line in shlex.split(env["token.env"]))
    assert parsed["API_TOKEN"] == env["access_token"]
