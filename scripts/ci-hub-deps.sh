#!/usr/bin/env bash
# System dependencies of the hub-service and database tests: JupyterHub's proxy, PostgreSQL and MariaDB.
#
# Idempotent: each step checks first and says what it did. Needs root for apt-get and `npm install -g`.
#   configurable-http-proxy  npm package; JupyterHub starts it as its proxy.
#   postgresql               Debian package; tests/hub starts a throwaway cluster from its initdb/pg_ctl.
#   mariadb-server           Debian package; tests start a throwaway server (hub service on MariaDB, migrations).
set -euo pipefail

if command -v configurable-http-proxy >/dev/null 2>&1; then
  echo "ci-hub-deps: configurable-http-proxy already installed: $(command -v configurable-http-proxy)"
else
  if ! command -v npm >/dev/null 2>&1; then
    echo "ci-hub-deps: npm is missing; installing Debian's nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  echo "ci-hub-deps: installing configurable-http-proxy with npm install -g"
  npm install -g --no-fund --no-audit configurable-http-proxy
  echo "ci-hub-deps: configurable-http-proxy is $(command -v configurable-http-proxy)"
fi

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "ci-hub-deps: PostgreSQL already installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n1)"
else
  echo "ci-hub-deps: installing Debian's postgresql (apt-get update first)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
  echo "ci-hub-deps: PostgreSQL installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n1)"
fi

# MariaDB (MySQL's Debian successor): tests/hub and the migration tests start a throwaway server from
# mariadb-install-db / mariadbd, as they do PostgreSQL.
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
  echo "ci-hub-deps: MariaDB already installed: $(command -v mariadbd || echo /usr/sbin/mariadbd)"
else
  echo "ci-hub-deps: installing Debian's mariadb-server (apt-get update first)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server
  # The package starts a system service on some images; the tests start their own server.
  (service mariadb stop || service mysql stop || true) >/dev/null 2>&1
  echo "ci-hub-deps: MariaDB installed: $(command -v mariadbd || echo /usr/sbin/mariadbd)"
fi
