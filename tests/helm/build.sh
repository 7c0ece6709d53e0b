#!/usr/bin/env bash
# Builds the helm CLI from the helm.sh/helm/v3 module pinned in go.mod (release binaries
# cannot be downloaded here) into a cache directory keyed by the pin and this script, and
# prints the binary's path. A warm cache costs nothing.
set -euo pipefail
cd "$(dirname "$0")"
helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' go.mod)
client_go_version=$(awk '$1 == "k8s.io/client-go" {print $2}' go.mod)
key=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-12)
out="${OAUTH_TOKEN_OPERATOR_CACHE:-$HOME/.cache/oauth-token-operator}/helm-${helm_version}-${key}"
if [[ -x "$out/helm" ]]; then
  echo "$out/helm"; exit 0
fi
# The version stamps helm's own Makefile sets. Without them `helm version` says v3.x and
# `helm template`/`helm lint` assume Kubernetes v1.20 (.Capabilities.KubeVersion); the
# Kubernetes version is derived from client-go v0.N.M -> 1.N, as upstream does.
minor=${client_go_version#v0.}; minor=${minor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${minor}"
done
# Build next to the destination, then rename: a concurrent or interrupted build never
# leaves a half-written binary at the path that the check above trusts.
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm >&2
if ! mv -T "$tmp" "$out" 2>/dev/null; then
  # Another build won the race; its result is equivalent.
  [[ -x "$out/helm" ]] || { echo "build.sh: could not install $out" >&2; exit 1; }
fi
echo "$out/helm"
