#!/usr/bin/env bash
# Time to the first trained batch from an empty Numba cache, for one installed fastcnn:
#     bash dev/cold_start.sh VENV/bin
# Prints fastcnn-train's own "first batch was trained N s after the data was loaded", the whole
# command's wall time and its CPU seconds (its helper process included). Alternate two versions
# (old, new, old, new, ...) on a quiet machine and compare within the series.
set -euo pipefail
bin=$1
cache=$(mktemp -d)
out=$(mktemp -d)
trap 'rm -rf "$cache" "$out"' EXIT
(cd "$out" && /usr/bin/time -f "%e %U %S" -o "$out/time" env NUMBA_CACHE_DIR="$cache" "$bin/fastcnn-train" \
    --epochs 1 --limit-train 256 --limit-test 256 --no-download > "$out/log" 2>&1) || { tail -3 "$out/log"; exit 1; }
first=$(grep -o "first batch was trained [0-9.]* s" "$out/log" | grep -o "[0-9.]*")
read -r wall user sys < "$out/time"
echo "first_batch=${first}s wall=${wall}s cpu=$(python3 -c "print(round($user + $sys, 2))")s"
