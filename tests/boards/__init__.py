"""Test boards: the emulated aarch64 Raspberry Pi (.ci/aarch64-board.sh) and the lossy link."""
