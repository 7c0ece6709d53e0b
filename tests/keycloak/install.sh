#!/usr/bin/env bash
# Installs Keycloak (the server distribution from Maven Central, pinned by version and
# SHA-256) into a cache directory keyed by this script, pre-built for the tests: in-memory
# database, the federated client authentication and Kubernetes ServiceAccount features on.
# Prints the Keycloak home. A warm cache costs nothing.
#
# Why Keycloak beside oidc-provider: clientAuthentication service_account_token needs a
# provider that validates a Kubernetes ServiceAccount token as a client assertion against
# the cluster's issuer (iss = the apiserver, sub = system:serviceaccount:ns:name).
# oidc-provider's private_key_jwt requires iss = sub = client_id, so it cannot; Keycloak's
# Kubernetes identity provider with federated client authentication is built for it.
set -euo pipefail
cd "$(dirname "$0")"
version=26.7.3
sha256=27a6535553c3cdcd083872ba40629efafb3475e3b758e0c6f691395561dd0f1f
key=$(cat install.sh | sha256sum | cut -c1-12)
cache="${OAUTH_TOKEN_OPERATOR_CACHE:-$HOME/.cache/oauth-token-operator}"
out="$cache/keycloak-${version}-${key}"
if [[ -x "$out/bin/kc.sh" && -f "$out/.built" ]]; then
  echo "$out"; exit 0
fi
java_home=$(./java-home.sh)
mkdir -p "$cache"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
url="https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/${version}/keycloak-quarkus-dist-${version}.zip"
curl -sSfL --retry 3 -o "$tmp/kc.zip" "$url"
echo "$sha256  $tmp/kc.zip" | sha256sum -c --quiet
unzip -q "$tmp/kc.zip" -d "$tmp"
# Build-time options once, so that every test start is an optimized start (seconds).
JAVA_HOME="$java_home" "$tmp/keycloak-${version}/bin/kc.sh" build --db=dev-mem --cache=local \
  --features=client-auth-federated,kubernetes-service-accounts >&2
touch "$tmp/keycloak-${version}/.built"
if ! mv -T "$tmp/keycloak-${version}" "$out" 2>/dev/null; then
  [[ -f "$out/.built" ]] || { echo "install.sh: could not install $out" >&2; exit 1; }
fi
echo "$out"
