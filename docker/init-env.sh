#!/usr/bin/env bash
# Create docker/.env from docker/env.example with a fresh random value for
# every empty secret (openssl rand). Refuses to overwrite an existing .env.
# The values are only written to docker/.env (mode 600), never printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:-$here/.env}"
if [ -e "$target" ]; then
  echo "$target exists; not overwriting it (delete it first to regenerate every secret)" >&2
  exit 1
fi
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }

umask 077
tmp="$(mktemp "$target.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    MINIO_ROOT_USER=)           line="MINIO_ROOT_USER=admin-$(openssl rand -hex 6)" ;;
    AWS_ACCESS_KEY_ID=)         line="AWS_ACCESS_KEY_ID=$(openssl rand -hex 10)" ;;
    AIRFLOW__CORE__FERNET_KEY=) line="AIRFLOW__CORE__FERNET_KEY=$(openssl rand -base64 32 | tr '+/' '-_')" ;;
    [A-Z_]*=)                   line="${line}$(openssl rand -hex 24)" ;;  # any other empty value is a secret
  esac
  printf '%s\n' "$line"
done < "$here/env.example" > "$tmp"
mv "$tmp" "$target"
trap - EXIT
echo "wrote $target (mode 600); the Airflow UI password is AIRFLOW_ADMIN_PASSWORD in it"
