#!/usr/bin/env bash
# Measures what the SPANK plugin costs a job step: `srun -n1 true` N times with the plugin in
# plugstack.conf and N times without, interleaved, on one private Slurm started by the test
# harness (tests/slurm/), then prints both medians and their ratio.
#
# Usage: tests/slurm/bench-srun.sh [N] [--cgroup] [--release] [-- SRUN_ARGS...]
#   N          runs per variant (default 30)
#   --cgroup   task/cgroup + ConstrainDevices=yes instead of task/none
#   --release  build and measure the release plugin
#   SRUN_ARGS  replaces `-n1`, e.g. `-- -n1 --gres=gpu:2`; `{bundle}` is the test bundle:
#              `-- -n1 --container={bundle} --gres=gpu:2` (the command stays `true`)
# Needs root, like the Slurm tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=30 profile=() args=()
while (($#)); do
  case $1 in
    --cgroup) export BENCH_CGROUP=1; shift ;;
    --release) profile=(--release); shift ;;
    --) shift; args=("$@"); break ;;
    *) n=$1; shift ;;
  esac
done
export BENCH_N=$n
((${#args[@]})) && export BENCH_ARGS="${args[*]}"
cargo build --workspace "${profile[@]}"
cargo test "${profile[@]}" --test slurm_e2e -- --ignored --exact bench_srun --nocapture 2>&1 |
  grep -E '^srun |panicked|FAILED' || { echo "bench-srun: the benchmark did not run" >&2; exit 1; }
