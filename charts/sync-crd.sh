#!/usr/bin/env bash
# Copies the OAuthClient CRD from crds/ (the single source of truth) into the Helm chart and
# deploy/. Helm only installs CRDs from files inside the chart directory and does not follow
# symlinks out of it, so these are byte-for-byte copies; tests/unit/test_manifests.py fails
# when one has drifted. Run this after editing crds/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crds/oauthclients.oauth-token-operator.dev.yaml"
cp "$src" "$root/charts/oauth-token-operator/crds/oauthclients.oauth-token-operator.dev.yaml"
mkdir -p "$root/deploy"
cp "$src" "$root/deploy/crd.yaml"
