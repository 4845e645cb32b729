#!/usr/bin/env bash
# The SPANK plugin's slot of bench/run.sh: `srun -n1 true` with and without the plugin,
# interleaved, on a private Slurm (tests/slurm/bench-srun.sh). Prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
line=$(tests/slurm/bench-srun.sh "${BENCH_SRUN_N:-30}" --release | grep '^srun ' | tail -1)
with=$(sed -n 's/.*with plugin median \([0-9.]*\) ms.*/\1/p' <<<"$line")
without=$(sed -n 's/.*; without \([0-9.]*\) ms.*/\1/p' <<<"$line")
ratio=$(sed -n 's/.*ratio \([0-9.]*\)$/\1/p' <<<"$line")
printf '{"command": "srun -n1 true", "with_ms": %s, "without_ms": %s, "ratio": %s}\n' "$with" "$without" "$ratio"
