#!/usr/bin/env bash
# Prints a JAVA_HOME with Java 21 or later (Keycloak 26 needs it): JAVA_HOME if it is one,
# else the newest such JDK under /usr/lib/jvm.
set -euo pipefail
major() { "$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
for home in ${JAVA_HOME:-} $(ls -d /usr/lib/jvm/*/ 2>/dev/null | sort -rV); do
  home=${home%/}
  if [[ -x "$home/bin/java" && "$(major "$home")" -ge 21 ]]; then
    echo "$home"; exit 0
  fi
done
echo "java-home.sh: Keycloak needs Java 21 or later (e.g. apt-get install openjdk-21-jdk-headless)" >&2
exit 1
