#!/bin/sh
# Installs the build into a scratch prefix, then builds a consumer project
# with find_package(mproc) and a program with pkg-config, and runs both.
set -eu
build_dir=$1
consumer_src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/build" >/dev/null
LD_LIBRARY_PATH="$work/prefix/lib:$work/prefix/lib/x86_64-linux-gnu" "$work/build/consumer"
libdir=$(ls -d "$work"/prefix/lib*/pkgconfig | head -n 1)
export PKG_CONFIG_PATH="$libdir"
# The .pc file holds the configured prefix; point it at the scratch one.
sed -i "s|^prefix=.*|prefix=$work/prefix|" "$libdir/mproc.pc"
cc -o "$work/pc_consumer" "$consumer_src/main.c" $(pkg-config --cflags --libs mproc)
LD_LIBRARY_PATH="$(dirname "$libdir")" "$work/pc_consumer"
# With MPI built: the component "mpi" and pkg-config mproc-mpi as well.
if [ -f "$libdir/mproc-mpi.pc" ]; then
  cmake -S "$consumer_src" -B "$work/build-mpi" -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DCONSUMER_MPI=ON >/dev/null
  cmake --build "$work/build-mpi" >/dev/null
  LD_LIBRARY_PATH="$(dirname "$libdir")" "$work/build-mpi/consumer"
  sed -i "s|^prefix=.*|prefix=$work/prefix|" "$libdir/mproc-mpi.pc"
  cc -o "$work/pc_consumer_mpi" "$consumer_src/main.c" $(pkg-config --cflags --libs mproc-mpi)
  LD_LIBRARY_PATH="$(dirname "$libdir")" "$work/pc_consumer_mpi"
  echo "install_consumer: the mpi component and mproc-mpi too"
fi
echo "install_consumer: find_package and pkg-config both work"
