#!/usr/bin/env bash
# Wall and CPU time (user + sys) of the README's first two commands, the numbers README.md quotes:
#   bash scripts/time_readme.sh                 # the default job (python train.py) and the test suite
#   bash scripts/time_readme.sh train           # only one of them (train | pytest)
#   LOAD=1 bash scripts/time_readme.sh          # the same with a second CPU-bound job running beside it
# Each line says the machine's cores and its 1-minute load average before and after, since wall time
# depends on what else runs (a "quiet" number needs a load near 0). The job runs with its defaults
# (trainer.threads=auto: the cores free at its start); outputs go to a scratch folder that is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"; [[ -n "${busy:-}" ]] && kill "$busy" 2>/dev/null || true' EXIT
if [[ "${LOAD:-0}" == "1" ]]; then  # a second job: one core kept busy for the whole measurement
    python -c "while True: pass" & busy=$!
fi

measure() {  # name, command...
    local name="$1"; shift
    local before; before="$(cut -d' ' -f1 /proc/loadavg)"
    /usr/bin/time -f "%e %U %S" -o "$scratch/time" "$@" > "$scratch/$name.log" 2>&1 || {
        echo "$name failed; last lines:"; tail -20 "$scratch/$name.log"; return 1; }
    read -r wall user sys < "$scratch/time"
    local threads; threads="$(grep -o 'threads: [0-9]* ([^)]*)' "$scratch/$name.log" | head -1 || true)"
    awk -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v b="$before" -v a="$(cut -d' ' -f1 /proc/loadavg)" \
        -v c="$(nproc)" -v l="${LOAD:-0}" -v t="${threads:-}" 'BEGIN { printf "%-8s wall %6.1f min  CPU %5.1f min (user %.1f + sys %.1f)  cores %d  load %s -> %s  %s%s\n",
        n, w / 60, (u + s) / 60, u / 60, s / 60, c, b, a, t, (l == "1" ? "  (a second job running)" : "") }'
}

if [[ "$which" == all || "$which" == train ]]; then
    measure train python train.py hydra.run.dir="$scratch/run" data.cache_dir="$scratch/data"
fi
if [[ "$which" == all || "$which" == pytest ]]; then
    measure pytest python -m pytest -q -x -p no:cacheprovider
fi
