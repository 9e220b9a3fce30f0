#!/bin/sh
# docs.sh - the documentation agrees with the code it describes:
#   - docs/jobs.md lists every key of schemas/job.schema.json,
#     docs/pruning.md every key of schemas/plan.schema.json, and
#     docs/compare.md every key of schemas/compare.schema.json, as
#     tests/tools/jobdoc.py renders them (type, default, description);
#   - every relative link of README.md, docs/*.md and the folder READMEs
#     resolves, and every #fragment names a heading (tests/tools/doclinks.py).
# `sh tests/docs.sh` checks (make test); `sh tests/docs.sh --write`
# rewrites the generated key lists (make docs).  Run from the repository
# root.  Needs python3 (standard library only).
set -u
PY=${PYTHON:-python3}
mode=--check
[ "${1:-}" = --write ] && mode=
fail=0
for pair in schemas/job.schema.json:docs/jobs.md schemas/plan.schema.json:docs/pruning.md schemas/compare.schema.json:docs/compare.md; do
    "$PY" tests/tools/jobdoc.py "${pair%%:*}" "${pair#*:}" $mode || fail=1
done
if [ -n "$mode" ]; then
    # The project's own pages: tracked files only (a model folder under
    # models/ brings a README of its own).
    pages=$(git ls-files README.md 'docs/*.md' '*/README.md' 2>/dev/null)
    [ -n "$pages" ] || pages=$(ls README.md docs/*.md */README.md */*/README.md 2>/dev/null)
    # shellcheck disable=SC2086
    "$PY" tests/tools/doclinks.py $pages 2>&1 || fail=1
    [ $fail = 0 ] && echo "docs: key lists match the schemas, every relative link resolves"
fi
exit $fail
