#!/usr/bin/env bash
# A rehearsal of `docker compose up` with the cpu profile, on a machine without Docker or an image
# registry: the images are built from the repository's Dockerfile with podman on a Debian base
# made with debootstrap, compose.yaml's cpu services run as containers with compose's own
# volumes and environment, and a tiny run must reach M2's evaluation rows.
#   deploy/rehearse.sh DATASETS_DIR        (or DATASETS_DIR=... deploy/rehearse.sh)
# Needs root (podman, debootstrap) and PostgreSQL on 127.0.0.1:5432 with trust auth (it makes
# the database dualphase_rehearsal afresh). Installs what it lacks (Debian): podman, runc,
# debootstrap, docker-compose; .venv (make install).
set -euo pipefail
datasets=$(realpath "${1:-${DATASETS_DIR:?usage: deploy/rehearse.sh DATASETS_DIR}}")
cd "$(dirname "$0")/.."

missing=()
for tool in podman runc debootstrap docker-compose; do
  command -v $tool >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
make -s install

work=build/rehearsal
mkdir -p $work
# No default ulimits: podman raises nofile for every container, which a sandboxed host refuses
# ("error setting rlimit type 7: operation not permitted"). runc: crun, podman's first choice,
# refuses a host whose cgroups are in hybrid mode, as here.
cat >$work/containers.conf <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$PWD/$work/containers.conf

# The base image, once: Debian bookworm from Debian's archive (no image registry is reachable);
# the images' Dockerfile installs Python on it, as it does on debian:bookworm-slim.
base=localhost/debian-base:bookworm
if ! podman image exists $base; then
  if [[ ! -f $work/debian-bookworm.tar ]]; then
    rm -rf $work/rootfs
    debootstrap --variant=minbase bookworm $work/rootfs http://deb.debian.org/debian >/dev/null
    tar -C $work/rootfs -cf $work/debian-bookworm.tar . && rm -rf $work/rootfs
  fi
  podman import $work/debian-bookworm.tar $base
fi

exec .venv/bin/python deploy/rehearse.py --base $base --datasets "$datasets"
