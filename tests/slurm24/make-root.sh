#!/usr/bin/env bash
# Builds (once) a Debian 13 (trixie) root with Slurm 24.11, munge, runc and busybox for the
# Slurm 24.11 end-to-end test, in DIR (default target/slurm24-root). A finished root carries
# DIR/.gres-oci-ready and is reused; an unfinished one is removed and rebuilt.
# Usage: make-root.sh [DIR] [MIRROR]
set -euo pipefail
dir=${1:-target/slurm24-root}
mirror=${2:-http://deb.debian.org/debian}
[ -e "$dir/.gres-oci-ready" ] && exit 0
if [ -e "$dir" ]; then
  # Never follow mounts a crashed run may have left.
  if grep -q " $(realpath "$dir")/" /proc/self/mountinfo; then
    echo "make-root.sh: $dir has mounts below it; unmount them first" >&2; exit 1
  fi
  rm -rf --one-file-system "$dir"
fi
tmp=$dir.tmp
rm -rf --one-file-system "$tmp"
timeout 400 debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2; exit 1; }
# Packages must not start services inside the root.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod 755 "$tmp/usr/sbin/policy-rc.d"
timeout 300 chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  slurmd slurmctld slurm-client munge libslurm-dev runc busybox-static >>"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2; exit 1; }
chroot "$tmp" apt-get clean
touch "$tmp/.gres-oci-ready"
mv "$tmp" "$dir"
rm -f "$tmp.log"
