#!/usr/bin/env bash
# Builds an emulated Raspberry Pi 4 (aarch64) for the test suite and for trying edgeprune
# without a Pi (issue 12). Idempotent: a second call checks the board and returns in seconds.
#
# What it makes, under ${EDGEPRUNE_BOARDS:-/opt/edgeprune-boards}/pi4-bookworm-arm64/:
#   root/                   an arm64 Debian bookworm userland: python3 (3.11), python3-numpy,
#                           libstdc++6 (mmdebstrap --variant=extract: unpacked, not configured)
#   root/opt/edgeprune/site the aarch64 TFLite runtimes from the package registry, unzipped:
#                           tflite-runtime 2.14.0 and ai-edge-litert (the host's version)
#   bin/python3             THE BOARD'S PYTHON: runs root/usr/bin/python3 under
#                           qemu-aarch64-static with QEMU_CPU=cortex-a72 (a Pi 4's core).
#                           A device profile's runtime.python points here.
#   wheels/                 the downloaded aarch64 wheels (kept, so a rebuild needs no download)
#   RECIPE                  what was built; a board whose RECIPE differs is rebuilt
#
# Needs root, and the Debian packages qemu-user-static, mmdebstrap, arch-test (.ci/setup
# installs them). binfmt_misc is not needed: qemu is called explicitly.
# Facts behind the details (found by trying; ../shared/notes/aarch64-board.md):
# * extract mode configures nothing: the BLAS/LAPACK alternatives are linked by hand;
# * qemu -L follows ABSOLUTE symlinks on the host: they are rewritten as relative links;
# * the wheels need their exact platform tags (manylinux2014_aarch64 finds nothing);
# * ai-edge-litert 2.3 reads /proc/cpuinfo, which under qemu -L is ROOT/proc/cpuinfo if it
#   exists, else the host's x86 one (it then segfaults): a Cortex-A72 cpuinfo is written;
# * QEMU_CPU is pinned: with qemu's default `max` CPU, int8 outputs of ai-edge-litert differ.
#
# Usage: bash .ci/aarch64-board.sh [--force]      prints the board's python wrapper path last.
set -euo pipefail
BOARDS=${EDGEPRUNE_BOARDS:-/opt/edgeprune-boards}
NAME=pi4-bookworm-arm64
B="$BOARDS/$NAME"
PY=${PYTHON:-python3}
SUITE=bookworm
DEBS=python3,python3-numpy,libstdc++6
# ai-edge-litert: the version the host has (so the board's int8 outputs can be compared with the
# host's bit for bit), else 2.3.0; override with EDGEPRUNE_BOARD_LITERT. tflite-runtime 2.14.0
# is the only cp311 aarch64 build there is.
LITERT=${EDGEPRUNE_BOARD_LITERT:-$("$PY" -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))' 2>/dev/null || echo 2.3.0)}
WHEELS="tflite-runtime==2.14.0 ai-edge-litert==$LITERT"
# the wheels' exact platform tags (manylinux2014_aarch64 alone finds nothing); bookworm has glibc 2.36
TAGS="manylinux_2_34_aarch64 manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64"
QEMU=$(command -v qemu-aarch64-static || echo /usr/bin/qemu-aarch64-static)
RECIPE="v1 $SUITE arm64 $DEBS | $WHEELS | QEMU_CPU=cortex-a72"

smoke() {  # smoke DIR: the board's Python imports numpy and both runtimes, and says aarch64
  "$1/bin/python3" - <<'PY'
import platform, numpy, tflite_runtime.interpreter, ai_edge_litert.interpreter
assert platform.machine() == "aarch64", platform.machine()
print("board ok:", platform.machine(), "Python", platform.python_version(), "numpy", numpy.__version__)
PY
}

if [ "${1:-}" != "--force" ] && [ -f "$B/RECIPE" ] && [ "$(cat "$B/RECIPE")" = "$RECIPE" ] && smoke "$B" >/dev/null 2>&1; then
  echo "emulated board ready (cached): $B/bin/python3"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "aarch64-board: needs root (mmdebstrap --mode=root)" >&2; exit 1; }
for tool in "$QEMU" mmdebstrap arch-test; do
  command -v "$tool" >/dev/null || { echo "aarch64-board: $tool missing: apt-get install qemu-user-static mmdebstrap arch-test" >&2; exit 1; }
done
t0=$(date +%s)
mkdir -p "$BOARDS"
NEW=$(mktemp -d "$BOARDS/.$NAME.build.XXXXXX")
trap 'rm -rf "$NEW"' EXIT
R="$NEW/root"

# 1. the userland (arm64 .debs unpacked; no emulation needed for this step)
mmdebstrap --quiet --mode=root --arch=arm64 --variant=extract --include="$DEBS" "$SUITE" "$R"

# 2. absolute symlinks -> relative (qemu -L would follow them into the HOST's /usr/lib)
find "$R" -type l -lname '/*' -print0 | while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  ln -sfn "$(realpath -ms --relative-to="$(dirname "$link")" "$R$target")" "$link"
done

# 3. what dpkg's configure step would have done for numpy: the BLAS/LAPACK alternatives
LIB="$R/usr/lib/aarch64-linux-gnu"
for l in blas/libblas.so.3 lapack/liblapack.so.3; do
  [ -e "$LIB/$l" ] || { echo "aarch64-board: $LIB/$l missing" >&2; exit 1; }
  ln -sfn "$l" "$LIB/$(basename "$l")"
done

# 4. a Raspberry Pi 4's /proc/cpuinfo (4x Cortex-A72, BCM2711), read by ai-edge-litert 2.3
mkdir -p "$R/proc"
for i in 0 1 2 3; do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done > "$R/proc/cpuinfo"
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated by qemu-user)\n' >> "$R/proc/cpuinfo"

# 5. the aarch64 runtimes from the package registry, onto the board's PYTHONPATH
mkdir -p "$BOARDS/wheels" "$R/opt/edgeprune/site"
platforms=""; for t in $TAGS; do platforms="$platforms --platform $t"; done
for spec in $WHEELS; do
  dist=$(echo "${spec%%==*}" | tr - _); ver=${spec##*==}
  file=$(ls "$BOARDS/wheels/$dist-$ver-cp311-cp311-"*aarch64.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$file" ]; then
    "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps $platforms \
      --python-version 3.11 --implementation cp --abi cp311 -d "$BOARDS/wheels" "$spec" 2>&1 | grep -v "is ignored" >&2 || true
    file=$(ls "$BOARDS/wheels/$dist-$ver-cp311-cp311-"*aarch64.whl 2>/dev/null | head -n 1 || true)
  fi
  [ -n "$file" ] || { echo "aarch64-board: no cp311 aarch64 wheel of $spec in the package registry" >&2; exit 1; }
  "$PY" -m zipfile -e "$file" "$R/opt/edgeprune/site"
done

# 6. the board's Python: this wrapper is what a device profile's runtime.python names
mkdir -p "$NEW/bin"
cat > "$NEW/bin/python3" <<WRAP
#!/bin/sh
# The emulated board's Python: Debian bookworm's aarch64 python3 under qemu-user (built by
# .ci/aarch64-board.sh). Latency is emulated; peak RSS includes the emulator; CPU count,
# memory and disk are the host's.
B=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")
export QEMU_CPU=cortex-a72
export PYTHONPATH="\$B/root/opt/edgeprune/site"
export PYTHONNOUSERSITE=1
unset PYTHONHOME
exec $QEMU -L "\$B/root" "\$B/root/usr/bin/python3" "\$@"
WRAP
chmod 755 "$NEW/bin/python3"
chmod 755 "$NEW"
smoke "$NEW"
echo "$RECIPE" > "$NEW/RECIPE"

# 7. swap in atomically-ish (the old board, if any, is removed only now)
rm -rf "$B.old"
[ -e "$B" ] && mv "$B" "$B.old"
mv "$NEW" "$B"
trap - EXIT
rm -rf "$B.old"
echo "emulated board built in $(( $(date +%s) - t0 )) s ($(du -sh "$B" | cut -f1)): $B/bin/python3"
