#!/usr/bin/env bash
# Builds the NetReach container image from the release binary, offline: assembles a root that
# holds only what the binary needs (itself, the shared libraries ldd lists, the dynamic loader,
# CA certificates, passwd/group entries for user 65532) and builds build/Containerfile on it
# (FROM scratch, no registry). Prints the image tag on stdout; everything else goes to stderr.
#
#   bash build/image.sh [--tag TAG] [--binary PATH] [--engine podman|docker] [--print-tag]
#
#   --tag     image tag (default localhost/netreach:<version of Cargo.toml>)
#   --binary  use this netreach binary instead of building `cargo build --release`
#   --engine  container engine (default: podman if installed, else docker); $CONTAINER_ENGINE
#             works too
#   --print-tag  print the tag and build nothing
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag="localhost/netreach:${version}"
binary=""
engine="${CONTAINER_ENGINE:-}"
print_tag=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --print-tag) print_tag=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$print_tag" = 1 ]; then echo "$tag"; exit 0; fi
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else
    echo "image.sh: neither podman nor docker is installed (bash tests/peers/install.sh installs podman)" >&2
    exit 1
  fi
fi

if [ -z "$binary" ]; then
  echo "image.sh: building the release binary" >&2
  cargo build --release --locked --bin netreach >&2
  binary="${CARGO_TARGET_DIR:-target}/release/netreach"
fi
[ -x "$binary" ] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

context=$(mktemp -d "${TMPDIR:-/tmp}/netreach-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$binary" "$root/netreach"
# Stripped: debug info and symbols are a third of the binary and no use in the image.
strip --strip-unneeded "$root/netreach" 2>/dev/null || true
chmod 0755 "$root/netreach"

# Every library the binary links, at the path the loader looks for it, and the loader itself.
ldd "$binary" | while read -r first second third _; do
  case "$first" in
    linux-vdso.so.*) continue ;;
    /*) lib="$first" ;;                       # the dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x…)"
    *) [ "$second" = "=>" ] || continue; lib="$third" ;;
  esac
  [ -e "$lib" ] || { echo "image.sh: ldd names $lib, which does not exist" >&2; exit 1; }
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# CA certificates for --system-roots and for corporate CAs a profile trusts.
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -e "$bundle" ]; then cp -L "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"; break; fi
done
[ -e "$root/etc/ssl/certs/ca-certificates.crt" ] || { echo "image.sh: no CA bundle on this machine (install ca-certificates)" >&2; exit 1; }

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"

cp build/Containerfile "$context/Containerfile"
echo "image.sh: $engine build -t $tag ($(du -sh "$root" | cut -f1) root)" >&2
# podman keeps an image per instruction unless told not to; the LABEL step's would dangle.
layers=(); [ "$(basename "$engine")" = podman ] && layers=(--layers=false)
"$engine" build --quiet "${layers[@]}" -f "$context/Containerfile" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  -t "$tag" "$context" >&2
echo "$tag"
