#!/usr/bin/env bash
# The rustc wrapper of fuzz builds (.cargo/config.toml names it): compiles
# the crates listed below without libFuzzer's coverage instrumentation.
#
# Those are third-party cryptography (curve and field arithmetic, hashes,
# ciphers): fuzzing them is their authors' work, and instrumented, their
# constant-time arithmetic was most of each execution of the targets that
# sign, verify or run handshakes (a comparison callback on every limb).
# Our own code keeps every flag cargo-fuzz sets. Cargo does not notice a
# change of this list: `cargo clean -p CRATE --release --target TRIPLE`.
set -euo pipefail
rustc=$1
shift
name=
prev=
for arg in "$@"; do
    [ "$prev" = --crate-name ] && name=$arg
    prev=$arg
done
case $name in
curve25519_dalek | ed25519_dalek | x25519_dalek | sha2 | blake2 | blake3 | \
    chacha20 | poly1305 | chacha20poly1305 | ring) ;;
*) exec "$rustc" "$@" ;;
esac
args=()
for arg in "$@"; do
    case $arg in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$arg") ;;
    esac
done
exec "$rustc" "${args[@]}"
