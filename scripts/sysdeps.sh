#!/usr/bin/env bash
# Debian packages the demo and tests use; installed only when missing (needs root).
set -euo pipefail
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)  # the key-registry loopback test's server
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "sysdeps: missing Debian packages ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
  exit 0
fi
echo "sysdeps: installing ${need[*]}"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
