#!/usr/bin/env bash
# Checks gres-oci against a real NVIDIA GPU and its loaded driver, for a machine that has one
# (the test suite runs on fake hardware). Run as root from the repository root, with the hook
# built (cargo build --release -p gres-oci-hook) and runc on PATH or in RUNC:
#   1. `info --source nvml` and `info --source procfs` name the same GPUs (minor, UUID, bus id)
#      and the same driver version;
#   2. `nvidia-smi -L` in a runc container that asks for GPU 0 lists exactly that GPU, and the
#      container's /proc/driver/nvidia shows only it, with ModifyDeviceFiles: 0;
#   3. the CUDA forward-compat rule against this driver: an image compat libcuda one major
#      above the driver is put first (when it carries no fwd-compat note saying otherwise),
#      one a major below never is.
# Prints one PASS/FAIL/SKIP line per check and exits non-zero if any failed.
#
# Usage: scripts/gpu-node-check.sh [HOOK]   (default target/release/gres-oci-hook)
# Environment: RUNC (runc binary), DRIVER_ROOT (/), DEV_ROOT (/dev), PROC_ROOT (/proc),
#              BUSYBOX (a static busybox), OUT (where the logs go; default a temp dir).
set -uo pipefail

hook=$(realpath "${1:-target/release/gres-oci-hook}")
runc=${RUNC:-$(command -v runc || true)}
busybox=${BUSYBOX:-$(command -v busybox || true)}
driver_root=${DRIVER_ROOT:-/}
dev_root=${DEV_ROOT:-/dev}
proc_root=${PROC_ROOT:-/proc}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failed=1; }
skip() { echo "SKIP $*"; }

[ -x "$hook" ] || { echo "gpu-node-check: no hook binary at $hook" >&2; exit 2; }
[ -d "$proc_root/driver/nvidia/gpus" ] || { echo "gpu-node-check: no NVIDIA driver loaded ($proc_root/driver/nvidia/gpus)" >&2; exit 2; }

cfg=$work/config.toml
cat >"$cfg" <<EOF
[nvidia-container-cli]
root = "$driver_root"
[gres-oci]
dev-root = "$dev_root"
proc-root = "$proc_root"
state-dir = "$work/no-slurm-here"
outside-slurm = "allow"
log-file = "$out/hook.log"
log-level = "debug"
EOF

# 1. NVML and procfs agree.
"$hook" -config="$cfg" info --json --source nvml >"$out/info-nvml.json" 2>"$out/info-nvml.err"
rn=$?
"$hook" -config="$cfg" info --json --source procfs >"$out/info-procfs.json" 2>"$out/info-procfs.err"
rp=$?
summary() {
  python3 - "$1" <<'PY'
import json, sys
inv = json.load(open(sys.argv[1]))
inv = inv.get("inventory", inv)
print("driver", inv.get("driver_version"))
for g in sorted(inv["gpus"], key=lambda g: g["minor"]):
    print("gpu", g["minor"], (g.get("uuid") or "").lower(), (g.get("pci_bus_id") or "").lower(), "index", g["index"])
PY
}
if ((rn != 0 || rp != 0)); then
  fail "info: nvml exit $rn, procfs exit $rp ($(head -c 300 "$out/info-nvml.err" "$out/info-procfs.err" | tr '\n' ' '))"
elif ! summary "$out/info-nvml.json" >"$out/nvml.txt" || ! summary "$out/info-procfs.json" >"$out/procfs.txt"; then
  fail "info: unexpected JSON (see $out/info-*.json)"
elif diff -u "$out/procfs.txt" "$out/nvml.txt" >"$out/info.diff"; then
  pass "info: NVML and procfs agree on $(grep -c '^gpu' "$out/nvml.txt") GPU(s), $(head -1 "$out/nvml.txt")"
else
  fail "info: NVML and procfs differ: $(tr '\n' ' ' <"$out/info.diff")"
fi

# A glibc rootfs made of this machine's own C library, busybox and nvidia-smi's needs (the
# hook injects nvidia-smi and the driver libraries itself).
bundle() { # DIR ENV... ; ARGS from $args
  local b=$1; shift
  mkdir -p "$b/rootfs"/{bin,proc,dev,sys,tmp,etc,usr/lib/x86_64-linux-gnu,lib64,usr/bin}
  cp "$busybox" "$b/rootfs/bin/busybox"
  for t in sh cat ls grep head; do ln -sf busybox "$b/rootfs/bin/$t"; done
  local smi
  smi=$(PATH=$driver_root/usr/bin:$PATH command -v nvidia-smi || true)
  if [ -n "$smi" ]; then
    ldd "$smi" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
      case $lib in *libnvidia*|*libcuda*) continue ;; esac
      cp -L "$lib" "$b/rootfs$(dirname "$lib" | sed 's|^/lib/|/usr/lib/|')/" 2>/dev/null ||
        { mkdir -p "$b/rootfs$(dirname "$lib")"; cp -L "$lib" "$b/rootfs$lib"; }
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$b/rootfs/lib64/" 2>/dev/null
  fi
  : >"$b/rootfs/etc/debian_version"
  local env_json
  env_json=$(printf '"%s",' "PATH=/usr/bin:/bin" "$@")
  python3 - "$b" "$hook" "$cfg" "${env_json%,}" "${args[@]}" <<'PY'
import json, sys
b, hook, cfg, env = sys.argv[1:5]
spec = {
  "ociVersion": "1.0.2",
  "process": {"user": {"uid": 0, "gid": 0}, "args": sys.argv[5:], "env": json.loads("[" + env + "]"), "cwd": "/",
              "capabilities": {k: [] for k in ["bounding", "effective", "permitted"]}},
  "root": {"path": "rootfs", "readonly": False},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
  ],
  "hooks": {"prestart": [{"path": hook, "args": ["gres-oci-hook", "-config=" + cfg, "prestart"]}]},
  "linux": {"namespaces": [{"type": t} for t in ["pid", "ipc", "uts", "mount"]],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
}
json.dump(spec, open(b + "/config.json", "w"), indent=1)
PY
}

# 2. nvidia-smi -L in a runc container asking for GPU 0.
if [ -z "$runc" ] || [ -z "$busybox" ]; then
  skip "nvidia-smi in runc: runc (${runc:-none}) or busybox (${busybox:-none}) missing"
else
  # NVIDIA_VISIBLE_DEVICES=0 is NVML's index 0 (the lowest PCI bus id), not minor 0.
  want_uuid=$(awk '$1 == "gpu" && $6 == 0 { print $3; exit }' "$out/nvml.txt" 2>/dev/null)
  args=(/bin/sh -c 'nvidia-smi -L; echo "smi-exit $?"; ls /proc/driver/nvidia/gpus | sed "s/^/procgpu /"; grep -h "^ModifyDeviceFiles" /proc/driver/nvidia/params')
  bundle "$work/smi" "NVIDIA_VISIBLE_DEVICES=0" "NVIDIA_DRIVER_CAPABILITIES=utility"
  (cd "$work/smi" && timeout 120 "$runc" --root "$work/runc" run "gres-oci-check-$$") >"$out/smi.out" 2>&1
  rc=$?
  lines=$(grep -c '^GPU [0-9]*:' "$out/smi.out")
  got_uuid=$(grep -o 'UUID: GPU-[0-9a-f-]*' "$out/smi.out" | head -1 | sed 's/UUID: //' | tr 'A-F' 'a-f')
  procgpus=$(grep -c '^procgpu ' "$out/smi.out")
  if ((rc == 0)) && [ "$lines" = 1 ] && [ "$got_uuid" = "$want_uuid" ] && [ "$procgpus" = 1 ] &&
    grep -q '^ModifyDeviceFiles: 0' "$out/smi.out"; then
    pass "nvidia-smi -L in runc lists exactly GPU 0 ($got_uuid); /proc/driver/nvidia shows only it"
  else
    fail "nvidia-smi in runc: exit $rc, $lines GPU line(s), uuid ${got_uuid:-none} (want $want_uuid), $procgpus proc gpu dir(s): $(tr '\n' ' ' <"$out/smi.out" | head -c 600)"
  fi
fi

# 3. The forward-compat rule against this driver.
version=$(awk '$1 == "driver" { print $2 }' "$out/nvml.txt" 2>/dev/null)
major=${version%%.*}
libcuda=$(ls "$driver_root"/usr/lib/x86_64-linux-gnu/libcuda.so.*.* "$driver_root"/usr/lib64/libcuda.so.*.* 2>/dev/null | head -1)
if [ -z "$major" ] || [ -z "$libcuda" ]; then
  skip "forward compat: driver version (${version:-?}) or libcuda.so.<version> not found"
else
  decide() { # compat version -> the plan's cuda_compat, or "none"
    local b=$work/compat-$1
    args=(/bin/true)
    bundle "$b" "NVIDIA_VISIBLE_DEVICES=0" "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
    mkdir -p "$b/rootfs/usr/local/cuda/compat"
    cp "$libcuda" "$b/rootfs/usr/local/cuda/compat/libcuda.so.$1"
    "$hook" -config="$cfg" plan --bundle "$b" 2>>"$out/compat.err" |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("cuda_compat") or "none")'
  }
  newer=$(decide "$((major + 1)).0.0")
  older=$(decide "$((major - 1)).0.0")
  note=$(readelf -n "$libcuda" 2>/dev/null | grep -c 'fwd_compatibility\|NVIDIA Corporation' || true)
  echo "info: driver $version; image compat $((major + 1)).0.0 -> $newer, $((major - 1)).0.0 -> $older; host libcuda note lines: $note" >>"$out/compat.txt"
  if [ "$older" != none ]; then
    fail "forward compat: a compat libcuda older than driver $version was put first ($older)"
  elif [ "$note" = 0 ] && [ "$newer" = none ]; then
    fail "forward compat: a compat libcuda newer than driver $version (no note) was not put first"
  else
    pass "forward compat against driver $version: newer -> $newer, older -> $older"
  fi
fi

echo "logs in $out"
exit "$failed"
