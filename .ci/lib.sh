# Shared by the demo and the test command: make sure the Debian packages and the Rust toolchain are there.
# shellcheck shell=bash

ensure_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_cargo() {
  if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
}

# ensure_cargo_tool COMMAND CRATE VERSION: `cargo COMMAND` (a cargo subcommand such as `deb`), installed
# with `cargo install --locked`, only when `cargo COMMAND --version` fails.
ensure_cargo_tool() {
  local command=$1 crate=$2 version=$3
  cargo "$command" --version >/dev/null 2>&1 && return 0
  echo "installing $crate $version (cargo install --locked)"
  local started=$SECONDS
  cargo install --quiet --locked "$crate" --version "$version"
  echo "installed $crate in $((SECONDS - started)) s"
}

# ensure_npm DIR PACKAGE_DIR: the npm packages PACKAGE_DIR/package.json and package-lock.json pin, installed
# into DIR with `npm ci`; reinstalled only when the lock file changes.
ensure_npm() {
  local dir=$1 src=$2
  if [ -d "$dir/node_modules" ] && cmp -s "$src/package-lock.json" "$dir/package-lock.installed"; then return 0; fi
  # An npm already on the PATH (e.g. with a Node.js from elsewhere) is used; Debian's otherwise.
  command -v npm >/dev/null || ensure_packages npm
  echo "installing npm packages into $dir from $src/package-lock.json"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --silent)
  cp "$src/package-lock.json" "$dir/package-lock.installed"
}

# ensure_pyenv DIR REQUIREMENTS: a Python venv at DIR with REQUIREMENTS installed from PyPI; reinstalled only
# when REQUIREMENTS changes.
ensure_pyenv() {
  local dir=$1 req=$2
  if [ -x "$dir/bin/python" ] && cmp -s "$req" "$dir/requirements.installed"; then return 0; fi
  echo "installing Python packages into $dir: $(grep -v '^#' "$req" | tr '\n' ' ')"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$dir/requirements.installed"
}
