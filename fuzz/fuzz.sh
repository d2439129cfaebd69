#!/bin/sh
# `cargo fuzz` on a stable toolchain. cargo-fuzz passes rustc flags that
# only nightly accepts (sanitizer, coverage instrumentation); this variable
# makes a stable rustc accept them. With a nightly toolchain, run
# `cargo +nightly fuzz ...` instead.
RUSTC_BOOTSTRAP=1
export RUSTC_BOOTSTRAP
exec cargo fuzz "$@"
