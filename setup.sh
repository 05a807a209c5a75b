#!/usr/bin/env bash
# Prepares a fresh Debian machine for kiln.
#   ./setup.sh        install the system packages kiln and its tests use, build kiln, install it as /usr/local/bin/kiln
#   ./setup.sh deps   only install the system packages (what the tests need)
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  ca-certificates tar gzip zstd xz-utils bzip2 jq iproute2 util-linux
  busybox-static   # base images for tests and the demo are built from it, never downloaded
  skopeo umoci     # independent checkers of the archives kiln writes
  docker-registry  # the CNCF distribution server, for registry tests
  docker.io        # dockerd, to check that `docker load` accepts kiln's archives
  git              # `ADD <git repository>` checks out with it
  attr             # setfattr/getfattr: tests put xattrs on files and read them back
  openssh-client   # ssh-agent/ssh-add: `kiln build --ssh ID=KEYFILE` and the SSH forwarding tests
)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_packages
if [ "${1:-}" = deps ]; then
  exit 0
fi
cargo build --release -p kiln
install -m 0755 target/release/kiln /usr/local/bin/kiln
echo "kiln installed: $(kiln --version)"
