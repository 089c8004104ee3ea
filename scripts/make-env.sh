#!/usr/bin/env bash
# Writes .env for docker compose with fresh random secrets (never overwrites one that exists).
# compose refuses to start without it: there are no default credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e .env ]; then
  echo ".env exists; remove it first to make new secrets" >&2
  exit 1
fi
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
umask 077
cat > .env <<ENV
# Made by scripts/make-env.sh: the secrets of this deployment. Keep this file private.
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=admin-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
MINIO_ROOT_PASSWORD=$(secret)
# The service's own S3 user (made by the create-bucket step), not MinIO's root.
BLOCKPRUNE_S3_ACCESS_KEY=blockprune-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
BLOCKPRUNE_S3_SECRET_KEY=$(secret)
# Grafana's admin (docker compose --profile monitoring).
GRAFANA_ADMIN_PASSWORD=$(secret)
ENV
echo "wrote .env (mode 600)"
