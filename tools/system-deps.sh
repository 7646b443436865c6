#!/usr/bin/env bash
# Debian packages Grainhouse and its tests need. Installs only what is missing, only as
# root (a non-root user gets a one-line hint instead). Idempotent and quiet when done.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v setpriv >/dev/null || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v bwrap >/dev/null || need+=(bubblewrap)
# Not `grep -q`: it stops reading at the first match, ldconfig then dies of SIGPIPE, and under
# pipefail the package counted as missing (a needless apt-get run, once, in CI).
ldconfig -p 2>/dev/null | grep -F libseccomp.so.2 >/dev/null || need+=(libseccomp2)
command -v promtool >/dev/null || need+=(prometheus)
command -v apparmor_parser >/dev/null || need+=(apparmor)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v zip >/dev/null || need+=(zip)
command -v unzip >/dev/null || need+=(unzip)
command -v wrk >/dev/null || need+=(wrk)  # bench/bench_grains.py: HTTP load
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a cluster of its own on install; Grainhouse runs its own, so stop it.
if command -v pg_ctlcluster >/dev/null; then
  for c in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do pg_ctlcluster ${c%/*} ${c#*/} stop || true; done
fi
