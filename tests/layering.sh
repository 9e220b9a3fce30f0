#!/bin/sh
# The include rule of LAYERS, enforced: every "..." include of every source
# file outside tests/ must name a header from the top, in the file's own
# folder or in a folder on an earlier line of LAYERS.  Prints each offending
# file and include; exits 1 if there is one.
set -eu
cd "$(dirname "$0")/.."

files=$(git ls-files '*.c' '*.h' '*.cu' 2>/dev/null || find . -name '*.[ch]' -o -name '*.cu')
# shellcheck disable=SC2086
awk -v layers=LAYERS '
BEGIN {
    n = 0
    while ((getline line < layers) > 0) {
        if (line ~ /^#/ || line ~ /^[ \t]*$/) continue
        n++
        k = split(line, f, /[ \t]+/)
        for (i = 1; i <= k; i++) if (f[i] != "") rank[f[i]] = n
    }
    bad = 0
}
function folder(p) { sub(/\/[^\/]*$/, "", p); return p }
FNR == 1 {
    file = FILENAME; sub(/^\.\//, "", file)
    skip = (file ~ /^tests\//)
    dir = folder(file)
    if (!skip && !(dir in rank)) {
        printf "layering: %s: folder %s is not in LAYERS (add it on the line of its layer)\n", file, dir
        bad = 1; skip = 1
    }
}
!skip && /^[ \t]*#[ \t]*include[ \t]*"/ {
    inc = $0; sub(/^[^"]*"/, "", inc); sub(/".*$/, "", inc)
    if (inc ~ /^[^\/]*\.pb-c\.h$/) next
    idir = folder(inc)
    if (inc !~ /\// || inc ~ /(^|\/)\.\.?\//) {
        printf "layering: %s:%d: include \"%s\" must name its path from the top\n", file, FNR, inc
        bad = 1; next
    }
    if (!(idir in rank)) {
        printf "layering: %s:%d: include \"%s\": folder %s is not in LAYERS\n", file, FNR, inc, idir
        bad = 1; next
    }
    if (idir != dir && rank[idir] >= rank[dir]) {
        printf "layering: %s:%d: include \"%s\" reaches %s from %s (LAYERS: a folder includes only its own and earlier lines)\n", file, FNR, inc, idir, dir
        bad = 1
    }
}
END { exit bad }
' $files && echo "layering: ok ($(echo "$files" | wc -w) files)"
