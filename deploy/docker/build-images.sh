#!/usr/bin/env bash
# Builds orch's container images without any registry:
#
#   orch            the four binaries, statically linked, on an empty base
#   orch-gateway    orch + the gateway as entry point + HEALTHCHECK
#   orch-scheduler  orch + the scheduler as entry point
#   orch-runner     the binaries on a Debian minbase root filesystem with git,
#                   bubblewrap and ca-certificates (what real agents need)
#   orch-debian     that root filesystem alone (debootstrap, `docker import`)
#
# each tagged :<version> and :latest (ORCH_TAG adds one more tag).
#
# The binaries are built once (cargo, release, glibc with crt-static for
# x86_64-unknown-linux-gnu); the root filesystem is built once per package
# list and cached as a tarball under deploy/.cache/ (gitignored), so later
# runs only restage and rebuild the thin image layers.
#
# Options (environment):
#   ORCH_BIN_DIR   use these prebuilt static binaries instead of building
#   DEBIAN_MIRROR  Debian mirror for debootstrap [http://deb.debian.org/debian]
#   ORCH_TAG       an extra tag for every image
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

say() { echo "== build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"
cache="$root/deploy/.cache"
mkdir -p "$cache"
triple=x86_64-unknown-linux-gnu
bins=(orch orch-gateway orch-runner orch-scheduler)

# 1. Static binaries.
if [ -n "${ORCH_BIN_DIR:-}" ]; then
  bindir=$ORCH_BIN_DIR
else
  say "cargo build --release (static, $triple)"
  t0=$SECONDS
  # --target keeps RUSTFLAGS off build scripts and proc-macros, which must
  # stay dynamic; crt-static links glibc into every binary.
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" \
    -p cli -p gateway -p runner -p scheduler
  say "binaries built in $((SECONDS - t0))s"
  bindir="${CARGO_TARGET_DIR:-$root/target}/$triple/release"
fi
for b in "${bins[@]}"; do
  [ -x "$bindir/$b" ] || die "$bindir/$b is missing"
  # A dynamic executable has a program interpreter; in an empty image it
  # would fail with a confusing "no such file or directory".
  if command -v readelf >/dev/null && readelf -lW "$bindir/$b" | grep -q 'Requesting program interpreter'; then
    die "$bindir/$b is dynamically linked; build with RUSTFLAGS='-C target-feature=+crt-static' --target $triple"
  fi
done

# 2. The Debian root filesystem, cached by its recipe.
suite=bookworm
packages=ca-certificates,git,bubblewrap
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=$(printf '%s\n' "$suite" "$packages" minbase strip-v1 | sha256sum | cut -c1-12)
debian_tag="orch-debian:$suite-$key"
tarball="$cache/debian-$suite-$key.tar"
if ! docker image inspect "$debian_tag" >/dev/null 2>&1; then
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to build the root filesystem once"
    say "debootstrap $suite (minbase + $packages) from $mirror"
    t0=$SECONDS
    rootfs="$(cd "$cache" && pwd)/rootfs-$key.tmp"
    # debootstrap mounts /proc (and more) inside the tree and does not
    # always unmount it (a package's process still inside at the end): a
    # mount left there would be archived and, worse, emptied by rm -rf.
    unmount_under() {
      awk -v r="$1" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts |
        sort -r | while read -r m; do umount -l "$m" || die "cannot unmount $m"; done
    }
    unmount_under "$rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
      >"$cache/debootstrap.log" 2>&1 || { unmount_under "$rootfs"; tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    unmount_under "$rootfs"
    # What a container never uses: package caches and lists (apt-get update
    # brings the lists back), documentation, man pages, translations.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/debootstrap
    # Keep docs and man pages out of later apt-get installs too.
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
      >"$rootfs/etc/dpkg/dpkg.cfg.d/01-orch-nodoc"
    tar --numeric-owner --one-file-system -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    say "root filesystem built in $((SECONDS - t0))s"
  fi
  say "docker import $tarball as $debian_tag"
  docker import --change 'CMD ["/bin/bash"]' "$tarball" "$debian_tag" >/dev/null
fi
docker tag "$debian_tag" "orch-debian:$suite"

# 3. Build contexts: only what each image holds.
ctx="$cache/context"
rm -rf "$ctx"
mkdir -p "$ctx/bin" "$ctx/etc" "$ctx/data" "$ctx/tmp"
chmod 1777 "$ctx/tmp"
for b in "${bins[@]}"; do cp "$bindir/$b" "$ctx/bin/"; done
cp deploy/docker/passwd deploy/docker/group deploy/docker/nsswitch.conf "$ctx/etc/"
chmod 0644 "$ctx/etc/"*

tags() {
  local name=$1
  printf -- '-t %s:%s -t %s:latest' "$name" "$version" "$name"
  [ -z "${ORCH_TAG:-}" ] || printf -- ' -t %s:%s' "$name" "$ORCH_TAG"
}
build() {
  local name=$1 file=$2
  shift 2
  say "docker build $name"
  # shellcheck disable=SC2046
  docker build -q $(tags "$name") -f "deploy/docker/$file" "$@" "$ctx" >/dev/null
}
t0=$SECONDS
build orch Dockerfile
build orch-gateway Dockerfile.gateway --build-arg "BASE=orch:$version"
build orch-scheduler Dockerfile.scheduler --build-arg "BASE=orch:$version"
build orch-runner Dockerfile.runner --build-arg "DEBIAN=$debian_tag"
say "images built in $((SECONDS - t0))s"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' |
  grep -E "^orch(-gateway|-scheduler|-runner|-debian)?:($version|$suite)\b" | sort >&2
