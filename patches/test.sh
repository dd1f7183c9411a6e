#!/usr/bin/env bash
# The patched crates' own unit tests, run on our copies: every change in
# patches/<crate> (see its PATCH.md) must keep the upstream crate's tests
# passing, besides the tests the change adds. Run by .ci/run; about 4 minutes
# from nothing on 2 cores, seconds when target/patches is warm.
#
#   bash patches/test.sh
#
# What is left out, and why:
# - h2's HPACK fixture tests (`--skip fixture`): they read 60 MB of captures
#   (fixtures/hpack) that the crate's package does not ship. They passed
#   (382 of 382) on these patches with the captures of hyperium/h2's
#   repository; to run them again, link its `fixtures` directory into
#   patches/h2 and run `cargo test --lib fixture` there.
# - rustls with aws-lc-rs (its default provider): tokengate uses ring, so the
#   tests run with the ring provider (`--no-default-features --features
#   ring,std,tls12,logging`), which also spares building aws-lc.
# - rustls's `test_read_fuzz_corpus`: it reads the fuzz corpus of rustls's
#   repository, not shipped either. rustls's unit-test data (src/testdata and
#   ../test-ca, 60 small files) is copied from its rel-0.23 branch.
set -euo pipefail
cd "$(dirname "$0")"
# Their own target directory: the crates are built with their dev-dependencies
# and features, unlike in tokengate's build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target/patches}

echo "== patches/h2: cargo test --lib"
(cd h2 && cargo test --lib -- --skip fixture)
echo "== patches/hyper: cargo test --features full --lib"
(cd hyper && cargo test --features full --lib)
echo "== patches/rustls: cargo test --lib (ring provider)"
(cd rustls && cargo test --lib --no-default-features --features ring,std,tls12,logging \
    -- --skip test_read_fuzz_corpus)
