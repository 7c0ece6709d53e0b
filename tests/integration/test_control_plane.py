"""Proves that the control plane fixture is the real thing: a kube-apiserver of the pinned
version that authenticates client certificates, enforces RBAC and runs CEL validation."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.controlplane import ControlPlane, KubectlError

pytestmark = pytest.mark.integration

_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader, namespace: default}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: nobody-reads-secrets, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: nobody}
"""

_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.test}
spec:
  group: example.test
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: min must not exceed max
"""


def _widget(name: str, low: int, high: int) -> str:
    return json.dumps(
        {
            "apiVersion": "example.test/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"min": low, "max": high},
        }
    )


def test_apiserver_is_ready_and_pinned_version(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"


def test_rbac_is_enforced_for_client_cert_users(control_plane: ControlPlane) -> None:
    nobody = control_plane.user_kubeconfig("nobody")

    with pytest.raises(KubectlError) as denied:
        control_plane.kubectl("get", "secrets", "-n", "default", kubeconfig=nobody)
    assert 'User "nobody" cannot list resource "secrets"' in denied.value.stderr

    control_plane.kubectl("apply", "-f", "-", input=_ROLE)
    # The RBAC authorizer reads from an informer cache, so a new binding takes a moment.
    deadline = time.monotonic() + 10
    while True:
        result = control_plane.kubectl(
            "get", "secrets", "-n", "default", kubeconfig=nobody, check=False
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.returncode == 0, result.stderr


def test_crd_cel_rule_rejects_invalid_object(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", "-", input=_CRD)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.example.test", "--timeout=30s"
    )

    control_plane.kubectl("create", "-f", "-", input=_widget("good", 1, 2))
    with pytest.raises(KubectlError) as rejected:
        control_plane.kubectl("create", "-f", "-", input=_widget("bad", 3, 2))
    assert "min must not exceed max" in rejected.value.stderr
