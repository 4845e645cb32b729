#!/usr/bin/env bash
# The main job. First without Slurm: a fake GPU node (mknod devices, real ELF driver libraries
# and ld.so.cache, fake procfs and NVML), a busybox container started by real runc with
# gres-oci-hook as its prestart hook, and what the container sees. Then through a private
# single-node Slurm (munged, slurmctld, slurmd started and stopped by the test harness): a
# `srun --container` job with two of four GPUs, through the SPANK plugin and the hook.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}/debug
hook=$target/gres-oci-hook
[ -x "$hook" ] || { echo "demo: $hook missing; run cargo build --workspace" >&2; exit 1; }

work=$(mktemp -d /tmp/gres-oci-demo.XXXXXX)
cleanup() { runc --root "$work/runc" delete --force demo >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== fake node in $work/node: 4 GPUs whose /dev minors are not in PCI order"
bash "$repo/tests/fixtures/fake-node.sh" "$work/node" --nvml "$target/libfake_nvml.so"
"$hook" -config="$work/node/config.toml" info | sed -n "1,9s/^/   /p"

echo "== bundle: busybox rootfs, NVIDIA_VISIBLE_DEVICES=0,2 (NVML indices)"
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,etc}
cp /bin/busybox "$rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
echo 12 >"$rootfs/etc/debian_version"
cat >"$work/bundle/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
    "args": ["/bin/sh", "-c", "echo '-- device nodes'; ls -l /dev | grep nvidia; echo '-- driver libraries'; ls -l /usr/lib/x86_64-linux-gnu; echo '-- nvidia-smi'; nvidia-smi; echo '-- open /dev/nvidia2: ENXIO = allowed by the device cgroup (no driver behind the fake node)'; cat /dev/nvidia2 2>&1 | head -1"],
    "env": ["PATH=/usr/bin:/bin", "NVIDIA_VISIBLE_DEVICES=0,2", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "demo",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "hooks": {"prestart": [{"path": "$hook", "args": ["gres-oci-hook", "-config=$work/node/config.toml", "prestart"], "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]},
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}]},
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
  }
}
JSON
echo "== the plan (gres-oci-hook plan --bundle), summarised"
"$hook" plan --bundle "$work/bundle" --config "$work/node/config.toml" |
  grep -E '"(path|target|uuid)"' | sed 's/^ */   /'
echo "== runc run: what the container sees"
runc --root "$work/runc" run --bundle "$work/bundle" demo </dev/null | sed 's/^/   /'
echo "== hook log"
sed 's/^/   /' "$work/node/hook.log"

echo
echo "==== The same through Slurm: the SPANK plugin and srun --container"
cd "$repo"
cargo test -q --test slurm_e2e -- --ignored --exact demo_slurm_job --nocapture 2>&1 |
  grep -E '^(==|   )' || { echo "demo: the Slurm job failed; rerun: cargo test --test slurm_e2e -- --ignored --exact demo_slurm_job --nocapture" >&2; exit 1; }
