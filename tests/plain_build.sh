#!/bin/sh
# A plain CMake build on a machine without Criterion: configure says the
# tests are off and why and goes on, the library and mpcp build, and
# -DMPROC_BUILD_TESTS=ON still refuses to go on without Criterion.
# Criterion is hidden by pointing pkg-config at an empty folder
# (PKG_CONFIG_LIBDIR replaces its search path; PKG_CONFIG_PATH is cleared).
set -eu
source_dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/no-pc"
export PKG_CONFIG_LIBDIR="$work/no-pc"
unset PKG_CONFIG_PATH || true
if pkg-config --exists criterion; then
  echo "plain_build: Criterion is still visible to pkg-config" >&2
  exit 1
fi
cmake -S "$source_dir" -B "$work/build" >"$work/configure.log" 2>&1 || {
  cat "$work/configure.log" >&2
  echo "plain_build: a plain configure without Criterion failed" >&2
  exit 1
}
grep "mproc: tests off: Criterion not found" "$work/configure.log"
if grep -q "add_test\|test_process" "$work/build/CTestTestfile.cmake" 2>/dev/null; then
  echo "plain_build: tests were configured without Criterion" >&2
  exit 1
fi
cmake --build "$work/build" -j 2 >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  echo "plain_build: the plain build failed" >&2
  exit 1
}
"$work/build/tools/mpcp/mpcp" --version | head -n 1
test -e "$work/build/libmproc.so"
test -e "$work/build/libmproc.a"
if cmake -S "$source_dir" -B "$work/build-on" -DMPROC_BUILD_TESTS=ON >"$work/on.log" 2>&1; then
  echo "plain_build: -DMPROC_BUILD_TESTS=ON configured without Criterion" >&2
  exit 1
fi
grep -q "criterion" "$work/on.log"
echo "plain_build: builds without Criterion; MPROC_BUILD_TESTS=ON still requires it"
