#!/usr/bin/env bash
# The system libraries the build links, installed with apt-get when missing: librdkafka's TLS
# (the rdkafka crate's `ssl` feature) uses the system OpenSSL, found through pkg-config; librdkafka
# itself is built with make and a C compiler. Safe to run again.
set -euo pipefail
missing=()
for pkg in libssl-dev pkg-config make gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  printf '[build-deps] installing %s\n' "${missing[*]}" >&2
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
