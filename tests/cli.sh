#!/bin/sh
# Command-line tests: run the docmint binary as a user would.
set -u
: "${DOCMINT:=build/docmint}"
echo "cli tests: none yet"
