#!/usr/bin/env bash
# Bootstrap what `make up` and `make test` need: uv, the workspace environment, and (where
# apt is available) the Debian packages the observability tests use. Safe to run repeatedly.
set -euo pipefail

APT_PACKAGES=(prometheus prometheus-alertmanager luajit)
# The binary each package provides, to tell whether it is already installed.
declare -A APT_BINARY=([prometheus]=promtool [prometheus-alertmanager]=amtool [luajit]=luajit)

say() { printf 'bootstrap: %s\n' "$*" >&2; }

find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  for candidate in "$HOME/.local/bin/uv" "$(python3 -m site --user-base 2>/dev/null)/bin/uv"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
}

UV="$(find_uv || true)"
if [ -z "$UV" ]; then
  say "uv not found; installing it with pip ..."
  if ! command -v python3 >/dev/null 2>&1; then
    say "error: python3 is not installed. Install Python 3.11 or newer, then run this again."
    exit 1
  fi
  if [ "$(id -u)" = 0 ]; then
    python3 -m pip install --quiet uv
  else
    python3 -m pip install --quiet --user uv
  fi
  UV="$(find_uv || true)"
  if [ -z "$UV" ]; then
    say "error: uv still not found after installing it; add \$HOME/.local/bin to PATH."
    exit 1
  fi
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  command -v "${APT_BINARY[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] && [ "${SERVESCOPE_SKIP_APT:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; fi
    fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
      say "installing Debian packages: ${missing[*]} ..."
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    else
      say "missing: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}"
      say "(local mode runs without them; tests that need them say so and skip)"
    fi
  else
    say "missing: ${missing[*]} and no apt-get here; install Prometheus (with promtool),"
    say "Alertmanager (with amtool) and LuaJIT from your system's packages to enable them."
  fi
fi

say "syncing the uv workspace ..."
"$UV" sync --quiet
say "ready ($("$UV" run --quiet python --version), uv $("$UV" --version | cut -d' ' -f2))"
