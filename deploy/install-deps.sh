#!/bin/sh
# Install every Debian package docmint's build and tests need.  Idempotent:
# only missing packages are installed.  Run as root (or with sudo).
set -eu

PKGS="build-essential pkg-config git ca-certificates
libopenblas-dev libdnnl-dev libblis-dev libxsmm-dev libjansson-dev libvips-dev libvips-tools poppler-utils libcunit1-dev libutf8proc-dev
libzmq3-dev liblmdb-dev lmdb-utils libopenmpi-dev openmpi-bin python3-lmdb python3-protobuf python3-numpy protobuf-compiler
libprotobuf-c-dev protobuf-c-compiler python3
fonts-dejavu-core fonts-liberation fonts-freefont-ttf"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

echo "install-deps: installing:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq $missing
