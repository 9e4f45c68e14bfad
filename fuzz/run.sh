#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET seconds
# (default 8: the 11 targets take about 1.5 minutes, plus the build).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Stable Rust: cargo-fuzz with `--sanitizer none` (no -Z flag is used; see
# README.md). New inputs go to a scratch directory, so a run leaves the
# repository's corpora as they are; FUZZ_GROW=1 writes them into
# fuzz/corpus/<target> instead (then minimize, README.md). Exits non-zero
# if any target crashed, after printing each reproducer's path and the
# command that replays it.
#
# libFuzzer's seed is fixed (FUZZ_SEED, default 1), so that a red CI run
# replays on another machine and comes from the change under test, not
# from a lucky draw; set FUZZ_SEED=0 for a random one (long runs do).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
SECS=${1:-8}
SEED=${FUZZ_SEED:-1}
shift || true
FLAGS=(-O --debug-assertions --sanitizer none)

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cargo fuzz build "${FLAGS[@]}"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "$scratch/$t"
    if [ "${FUZZ_GROW:-0}" = 1 ]; then dirs=("corpus/$t"); else dirs=("$scratch/$t" "corpus/$t"); fi
    before=$(ls "artifacts/$t" | wc -l)
    start=$(date +%s)
    # The binary itself (as `cargo fuzz run` would start it, without
    # checking the build again for each target).
    if "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$SECS" -timeout=10 \
        -seed="$SEED" -rss_limit_mb=2048 -print_final_stats=1 "${dirs[@]}" >"$scratch/$t.log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || echo '?')
        echo "fuzz $t: ok, $runs runs in $(( $(date +%s) - start ))s"
    else
        grep -av '^#[0-9]' "$scratch/$t.log" | tail -n 60
        new=$(ls -t "artifacts/$t" | head -n 1)
        if [ "$(ls "artifacts/$t" | wc -l)" -gt "$before" ] && [ -n "$new" ]; then
            echo "fuzz $t: CRASH, reproducer fuzz/artifacts/$t/$new"
            echo "  replay: cd fuzz && cargo fuzz run ${FLAGS[*]} $t artifacts/$t/$new"
        else
            echo "fuzz $t: FAILED (see the log above)"
        fi
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${SECS}s each without a crash"
