#!/usr/bin/env bash
#! The performance harness (issue 5): container start with runc and crun, bare against the
#! same bundle with the hook, A/B interleaved in one run; the hook alone (wall time, peak RSS,
#! a split by phase) on the procfs and the NVML paths. Writes results.json, results.txt and
#! start-vs-gpus.svg under the output dir. Needs root, gcc, runc, crun, busybox (static).
#
# Usage: bench/run.sh [--rounds N] [--hook-rounds N] [--gpus "1 2 4 8 16"] [--out DIR]
#                     [--rootfs DIR] [--no-build]
#   --rounds N       container starts per configuration and runtime (default 40)
#   --hook-rounds N  hook-alone samples per configuration (default 25)
#   --rootfs DIR     an image rootfs to start instead of busybox (e.g. a debootstrap'ed
#                    bookworm: the linker-cache update grows with the image); used in place,
#                    the hook leaves its mount targets and soname links in it
#   --out DIR        default target/bench
#   --compare-hook B another gres-oci-hook binary (e.g. built without a feature) whose exec
#                    cost (`-version`, `plan`) is measured in the same rounds as the shipped one
#
# Every configuration is measured in the same rounds, in a fresh random order each round, so
# that drift on a shared machine hits bare and hook runs alike. Times are wall clock around
# `runc run` / `crun run` of `/bin/true` (create, hooks, start, exit, delete) and around the
# hook process (bench/timer.c, no shell in between). "noldc" variants set `ldconfig = ""`:
# the hook without the linker-cache step, i.e. the floor an in-process cache update
# approaches (tens to hundreds of microseconds; see src/ldcache.rs updated_cache).
#
# SPANK slot: if bench/spank.sh exists and is executable, it is run with the output dir as
# its argument and must print one JSON object (e.g. {"without_ms":…,"with_ms":…,"ratio":…});
# it is embedded as "spank" in results.json and shown in the table. Otherwise "spank" is null.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=40
hook_rounds=25
gpus="1 2 4 8 16"
out=$repo/target/bench
rootfs_src=
compare_hook=
build=1
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --hook-rounds) hook_rounds=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --rootfs) rootfs_src=$(cd "$2" && pwd); shift 2 ;;
    --no-build) build=0; shift ;;
    --compare-hook) compare_hook=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^#! \{0,1\}//; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (runtimes, mknod, mounts)" >&2; exit 1; }
for t in gcc runc crun busybox awk sort shuf; do
  command -v "$t" >/dev/null || { echo "run.sh: $t is missing" >&2; exit 1; }
done
export PATH=$HOME/.cargo/bin:$PATH

say() { printf '== %s\n' "$*" >&2; }

if ((build)); then
  say "building release (gres-oci-hook, fake-nvml)"
  (cd "$repo" && cargo build --release -p gres-oci-hook -p fake-nvml >&2)
fi
hook=$repo/target/release/gres-oci-hook
nvml=$repo/target/release/libfake_nvml.so
[ -x "$hook" ] && [ -f "$nvml" ] || { echo "run.sh: build $hook and $nvml first" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
W=$out/work
rm -rf "$W"
mkdir -p "$W/b"
gcc -O2 -o "$W/timer" "$repo/bench/timer.c"
export TIMER_LOG=$W/commands.log

# crun 1.8 refuses hybrid cgroups while cgroup2 holds a controller (hugetlb here): give
# hugetlb its own v1 hierarchy, as tests/support/mod.rs does.
if grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then
  mkdir -p /sys/fs/cgroup/hugetlb
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
fi

# ---- fake nodes: N GPUs each, one driver root, procfs and the fake NVML ----
maxgpu=0
for n in $gpus; do ((n > maxgpu)) && maxgpu=$n; done
for n in $gpus; do
  say "fake node with $n GPUs"
  args=()
  for ((i = 0; i < n; i++)); do
    args+=(--gpu "$i:0000:$(printf %02x $((0x10 + i))):00.0:GPU-3f9a2c1e-7b44-5d0e-9a1b-$(printf %012x "$i")")
  done
  bash "$repo/tests/fixtures/fake-node.sh" "$W/node$n" --nvml "$nvml" "${args[@]}"
  c=$W/node$n/config.toml
  # The same node without the linker-cache step, and also without the device cgroup.
  sed 's/^ldconfig = .*/ldconfig = ""/' "$c" >"$W/node$n/noldc.toml"
  sed 's/^ldconfig = .*/ldconfig = ""\nno-cgroups = true/' "$c" >"$W/node$n/noldc-nocg.toml"
done

# ---- the rootfs: busybox (as tests/support/mod.rs makes it) or the one given ----
if [ -n "$rootfs_src" ]; then
  rootfs=$rootfs_src
else
  rootfs=$W/rootfs
  mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,etc}
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for a in $("$rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
  done
  echo 12.11 >"$rootfs/etc/debian_version"
fi
[ -x "$rootfs/bin/true" ] || { echo "run.sh: $rootfs has no /bin/true" >&2; exit 1; }

# A config.json from `runc spec`: no terminal, rw root (the hook runs before the runtime makes
# it ro anyway), /bin/true, the host network (no netns setup cost in either arm), the shared
# rootfs, plus extra env and an optional prestart hook (JSON text).
(cd "$W" && runc spec && mv config.json spec.json)
bundle() { # NAME ENV_JSON_ITEMS HOOK_JSON
  local d=$W/b/$1
  mkdir -p "$d"
  awk -v rootfs="$rootfs" -v env="$2" -v hook="$3" '
    { line[NR] = $0 }
    END {
      for (i = 1; i <= NR; i++) {
        l = line[i]
        if (l ~ /^[ \t]*\{[ \t]*$/ && line[i + 1] ~ /"type": "network"/) { i += 2; continue }
        sub(/"terminal": true/, "\"terminal\": false", l)
        sub(/"readonly": true/, "\"readonly\": false", l)
        sub(/"path": "rootfs"/, "\"path\": \"" rootfs "\"", l)
        if (l ~ /^[ \t]*"sh"$/) sub(/"sh"/, "\"/bin/true\"", l)
        if (env != "" && l ~ /"TERM=xterm"/) sub(/"TERM=xterm"/, "\"TERM=xterm\", " env, l)
        print l
        if (hook != "" && l ~ /"ociVersion"/) print "\t\"hooks\": {\"prestart\": [" hook "]},"
      }
    }' "$W/spec.json" >"$d/config.json"
}
hookjson() { # CONFIG [WRAP_LABEL]
  if [ -n "${2:-}" ]; then
    printf '{"path": "%s", "args": ["timer", "wrap", "%s", "%s", "%s", "-config=%s", "prestart"], "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}' \
      "$W/timer" "$W/hook-times.txt" "$2" "$hook" "$1"
  else
    printf '{"path": "%s", "args": ["gres-oci-hook", "-config=%s", "prestart"], "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}' "$hook" "$1"
  fi
}
CU='"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"'
ALL='"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"'
REQ='"NVIDIA_REQUIRE_CUDA=cuda>=12.0"'

# ---- part 1: container start, A/B ----
# cfgs: bare; hook with N GPUs compute,utility; 8 (or the most) GPUs with all; each hook
# configuration also without the linker-cache step.
allgpu=8
[[ " $gpus " == *" 8 "* ]] || allgpu=$maxgpu
bundle bare "" ""
start_cfgs=(bare)
for n in $gpus; do
  bundle "cu-$n" "$CU" "$(hookjson "$W/node$n/config.toml")"
  bundle "cu-$n-noldc" "$CU" "$(hookjson "$W/node$n/noldc.toml")"
  start_cfgs+=("cu-$n" "cu-$n-noldc")
done
bundle "all-$allgpu" "$ALL" "$(hookjson "$W/node$allgpu/config.toml")"
bundle "all-$allgpu-noldc" "$ALL" "$(hookjson "$W/node$allgpu/noldc.toml")"
start_cfgs+=("all-$allgpu" "all-$allgpu-noldc")

seq=0
plan_line() { # LABEL RUNTIME BUNDLE
  seq=$((seq + 1))
  printf '%s\t%s\t--root\t%s\trun\t--bundle\t%s\tbench-%s-%s\n' "$1" "$2" "$W/state-$2" "$3" "$$" "$seq"
}
# Fails early and loudly if a configuration does not start at all.
for rt in runc crun; do
  for c in "${start_cfgs[@]}"; do plan_line "warm/$rt/$c" "$rt" "$W/b/$c"; done
done >"$W/plan-warm.txt"
"$W/timer" run "$W/plan-warm.txt" >"$W/warm.txt"
if awk '$4 != 0 { bad = 1; print "run.sh: " $1 " exited " $4 > "/dev/stderr" } END { exit !bad }' "$W/warm.txt"; then
  tail -n 30 "$TIMER_LOG" >&2
  exit 1
fi

say "container start: ${#start_cfgs[@]} configurations x runc, crun x $rounds rounds"
: >"$W/plan-start.txt"
for ((r = 0; r < rounds; r++)); do
  for rt in runc crun; do
    for c in "${start_cfgs[@]}"; do printf '%s %s\n' "$rt" "$c"; done
  done | shuf | while read -r rt c; do plan_line "start/$rt/$c" "$rt" "$W/b/$c"; done
done >"$W/plan-start.txt"
"$W/timer" run "$W/plan-start.txt" >"$W/start.txt"

# ---- part 2: the hook alone, in place (runc calls timer wrap, which runs the hook) ----
# Variants: full, without ldconfig, without ldconfig and cgroup, and `gres-oci-hook plan`
# (config, bundle, inventory, driver discovery, plan: everything before the namespace).
say "hook alone: procfs and NVML paths x $gpus GPUs x $hook_rounds rounds"
: >"$W/hook-times.txt"
hook_cfgs=()
for path in procfs nvml; do
  env=$CU
  [ "$path" = nvml ] && env="$CU, $REQ"
  for n in $gpus; do
    for v in full noldc noldc-nocg; do
      cfg=$W/node$n/config.toml
      [ "$v" = full ] || cfg=$W/node$n/$v.toml
      bundle "hook-$path-$n-$v" "$env" "$(hookjson "$cfg" "hook/$path/$n/$v")"
      hook_cfgs+=("hook-$path-$n-$v")
    done
    # The plan subcommand reads the same bundle (its env) and config.
    hook_cfgs+=("plan-$path-$n")
  done
done
# Exec cost: what starting the binary costs before any work, against /bin/true, and `plan`
# (every prestart's work before the namespace) of the shipped binary and --compare-hook.
hook_cfgs+=(exec-true exec-version)
[ -n "$compare_hook" ] && hook_cfgs+=(exec-version-cmp plan-cmp)
for ((r = 0; r < hook_rounds + 1; r++)); do
  for c in "${hook_cfgs[@]}"; do echo "$c"; done | shuf | while read -r c; do
    if [[ $c == exec-true ]]; then
      printf 'exec/true\t/bin/true\n'
    elif [[ $c == exec-version ]]; then
      printf 'exec/version\t%s\t-version\n' "$hook"
    elif [[ $c == exec-version-cmp ]]; then
      printf 'exec/version-cmp\t%s\t-version\n' "$compare_hook"
    elif [[ $c == plan-cmp ]]; then
      printf 'plan/cmp/1\t%s\tplan\t--bundle\t%s\t--config\t%s\n' "$compare_hook" \
        "$W/b/hook-procfs-1-full" "$W/node1/config.toml"
    elif [[ $c == plan-* ]]; then
      IFS=- read -r _ path n <<<"$c"
      printf 'plan/%s/%s\t%s\tplan\t--bundle\t%s\t--config\t%s\n' "$path" "$n" "$hook" \
        "$W/b/hook-$path-$n-full" "$W/node$n/config.toml"
    else
      plan_line "hookrun/$c" runc "$W/b/$c"
    fi
  done
done >"$W/plan-hook.txt"
"$W/timer" run "$W/plan-hook.txt" >"$W/hookrun.txt"
# The first sample of each label is a warm-up.
awk '{ if (seen[$1]++) print; else print "warm/" $0 }' "$W/hook-times.txt" >"$W/hook.txt"
awk '$1 ~ /^(plan|exec)\// { if (seen[$1]++) print; else print "warm/" $0 }' "$W/hookrun.txt" >>"$W/hook.txt"

if awk '$4 != 0 { bad++ } END { exit !bad }' "$W/start.txt" "$W/hookrun.txt" "$W/hook.txt"; then
  echo "run.sh: some runs failed:" >&2
  awk '$4 != 0' "$W/start.txt" "$W/hookrun.txt" "$W/hook.txt" | head >&2
  tail -n 30 "$TIMER_LOG" >&2
  exit 1
fi

# ---- the in-process linker-cache update (src/ldcache.rs updated_cache) on the image's cache ----
say "in-process ld.so.cache update cost"
ldupdate=null
cache=$rootfs/etc/ld.so.cache
[ -f "$cache" ] || cache=/etc/ld.so.cache
if (cd "$repo" && GRES_OCI_BENCH_CACHE=$cache GRES_OCI_BENCH_OUT=$W/ldcache-update.json \
  cargo test --release -q -p gres-oci --test ldcache_writer -- --ignored update_cost >&2); then
  ldupdate=$(cat "$W/ldcache-update.json")
fi

# ---- SPANK slot ----
spank=null
if [ -x "$repo/bench/spank.sh" ]; then
  say "SPANK plugin (bench/spank.sh)"
  spank=$("$repo/bench/spank.sh" "$out") || spank=null
fi

# ---- statistics, JSON, table, SVG ----
meta=$(printf '"commit": "%s", "date": "%s", "kernel": "%s", "cpus": %s, "runc": "%s", "crun": "%s", "rootfs": "%s", "rounds": %s, "hook_rounds": %s' \
  "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo -dirty)" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$(nproc)" \
  "$(runc --version | head -1 | awk '{print $3}')" "$(crun --version | head -1 | awk '{print $3}')" \
  "${rootfs_src:-busybox}" "$rounds" "$hook_rounds")
grep -hv '^warm/' "$W/start.txt" "$W/hook.txt" | sort -k1,1 -k2,2n >"$W/samples.txt"
awk -v meta="$meta" -v spank="$spank" -v ldupdate="$ldupdate" -v gpus="$gpus" -v allgpu="$allgpu" \
  -v json="$out/results.json" -v svg="$out/start-vs-gpus.svg" -f "$repo/bench/report.awk" \
  "$W/samples.txt" | tee "$out/results.txt"
say "wrote $out/results.json, $out/results.txt, $out/start-vs-gpus.svg"
