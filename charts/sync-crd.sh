#!/usr/bin/env bash
# Copies the CRDs (OAuthClient, ClusterOAuthProvider, OAuthProvider) from crds/ (the single source of truth) into the Helm chart and
# deploy/. Helm only installs CRDs from files inside the chart directory and does not follow
# symlinks out of it, so these are byte-for-byte copies; tests/integration/test_manifests.py fails
# when one has drifted. Run this after editing crds/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cp "$root"/crds/*.yaml "$root/charts/oauth-token-operator/crds/"
mkdir -p "$root/deploy"
cp "$root/crds/oauthclients.oauth-token-operator.dev.yaml" "$root/deploy/crd.yaml"
{
  cat "$root/crds/clusteroauthproviders.oauth-token-operator.dev.yaml"
  echo "---"
  cat "$root/crds/oauthproviders.oauth-token-operator.dev.yaml"
} >"$root/deploy/crd-providers.yaml"
