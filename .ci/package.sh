#!/usr/bin/env bash
# Every crate that will be published packages as crates.io takes it: its
# metadata, a version on each path dependency between our crates, and only
# files of its own. Crates marked `publish = false` (the benchmark and the
# simulator) are left out. Needs jq (in the machine's image).
#
# Verifying a package builds it from the packaged sources, in debug mode in
# target/package. Verifying them all (what `cargo publish --workspace
# --dry-run` does) rebuilds the whole workspace, iroh included: about 9
# minutes on 2 cores. So CI packages every crate without building it, checks
# that each file a package's sources name (include_str!, include_bytes!,
# #[path], CARGO_MANIFEST_DIR joins, in tests too) is in that package, and
# builds one: the core, whose file list is curated (`include` in
# Cargo.toml). `bash .ci/package.sh all` verifies every crate, for a release.
set -euo pipefail
cd "$(dirname "$0")/.."
metadata=$(cargo metadata --no-deps --format-version 1 --locked)
crates=()
files=()
while read -r name version; do
    crates+=(-p "$name")
    files+=("$name-$version.crate")
done < <(jq -r '.packages[] | select(.publish != []) | "\(.name) \(.version)"' <<<"$metadata")

if [ "${1:-}" = all ]; then
    cargo package --locked "${crates[@]}"
    exit
fi
cargo package --locked --no-verify "${crates[@]}"

# Every file named by a package's sources, resolved in the unpacked package.
target=$(jq -r .target_directory <<<"$metadata")
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
missing=0
for crate in "${files[@]}"; do
    tar -xzf "$target/package/$crate" -C "$unpacked"
    root="$unpacked/${crate%.crate}"
    while IFS= read -r hit; do
        file=${hit%%:*}
        rest=${hit#*:}
        line=${rest%%:*}
        ref=$(sed -E 's/.*"([^"]+)".*/\1/' <<<"${rest#*:}")
        case $hit in
            *CARGO_MANIFEST_DIR*) base=$root ;;
            *) base=$(dirname "$file") ;;
        esac
        resolved=$(realpath -m "$base/$ref")
        if [[ $resolved != "$root"/* || ! -e $resolved ]]; then
            echo "error: ${crate%.crate}: ${file#"$root"/}:$line names $ref, which is not in the package" >&2
            missing=1
        fi
    done < <(grep -rnoE --include='*.rs' \
        'include_(str|bytes)!\("[^"]+"\)|#\[path = "[^"]+"\]|CARGO_MANIFEST_DIR"\)\)\.join\("[^"]+"\)' \
        "$root" || true)
done
if [ "$missing" != 0 ]; then
    exit 1
fi
echo "package files: every file the packaged sources name is packaged (${#files[@]} crates)"

cargo package --locked -p peermq
