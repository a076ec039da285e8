#!/usr/bin/env bash
# Build llama-server from a microsoft/BitNet checkout (with its llama.cpp
# submodule) by BitNet's own flow, its kernel code generation, then CMake
# with clang, and copy it to out/<release path>. The release workflow runs
# this once per variant; DEVELOPERS.md says how to run it by hand.
#
#   scripts/build-bitnet-server.sh <BitNet checkout> <release path>
#   CMAKE_EXTRA: the variant's CMake flags (-DGGML_VULKAN=ON, ...)
#
# Each release path builds in its own tree (<checkout>/build-<path>), so
# several variants can be built from one checkout. Prints the build's time
# and the commits it came from.
set -euo pipefail
src="$1"
file="$2"
root="$(pwd)"
start=$SECONDS
cd "$src"
# The pre-tuned kernel shapes setup_env.py uses for BitNet b1.58 2B4T
# (bitnet_b1_58-3B's). They generate include/bitnet-lut-kernels.h, which the
# sources include even when the TL1/TL2 lookup-table kernels are off.
#
# The instruction set is the catalog's baseline, never the build machine's:
# llama.cpp compiles with -march=native by default, and a build made on a
# runner with AVX-512 was full of it (39166 zmm instructions), so it would
# die of SIGILL on the AVX2 machines the catalog promises it to.
case "$(uname -m)" in
  x86_64 | AMD64)
    isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF)
    no_avx512=1
    python utils/codegen_tl2.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 96,96,96 --bm 32,32,32 ;;
  arm64 | aarch64)
    isa=(-DGGML_NATIVE=OFF)
    python utils/codegen_tl1.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 64,128,64 --bm 32,64,32 ;;
  *)
    echo "unsupported build machine: $(uname -m)" >&2
    exit 1 ;;
esac
build="build-${file//\//-}"
# llama.cpp is a subdirectory here, so its own programs are off unless
# asked for: LLAMA_BUILD_EXAMPLES + LLAMA_BUILD_SERVER for the 2024 fork
# (examples/server), LLAMA_BUILD_TOOLS + LLAMA_BUILD_COMMON for later ones
# (tools/server). An option a version lacks is only warned about.
# BUILD_SHARED_LIBS=OFF: llama.cpp builds libllama and libggml as shared
# libraries by default, and a server copied out of the build tree then only
# ran on the machine that built it (its RUNPATH named the build folder).
# shellcheck disable=SC2086 # CMAKE_EXTRA is a list of flags
cmake -B "$build" "${isa[@]}" ${CMAKE_EXTRA:-} -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF
cmake --build "$build" --config Release --target llama-server --parallel
exe=
for candidate in "$build/bin/llama-server" "$build/bin/Release/llama-server.exe" "$build/bin/llama-server.exe"; do
  [ -f "$candidate" ] && exe=$candidate
done
if [ -z "$exe" ]; then
  echo "no llama-server under $src/$build/bin" >&2
  exit 1
fi
# The release ships this one file: it must not need anything from the build.
case "$(uname -s)" in
  Linux) deps=$(ldd "$exe" 2>&1 || true) ;;
  Darwin) deps=$(otool -L "$exe" 2>&1 || true) ;;
  *) deps=$(find "$(dirname "$exe")" -maxdepth 1 -iname '*.dll' 2>/dev/null || true) ;;
esac
if printf '%s\n' "$deps" | grep -E "$PWD|@rpath|\.dll" > /dev/null; then
  printf '%s\n' "$deps" >&2
  echo "$exe needs libraries from the build tree (above): it would not run once installed" >&2
  exit 1
fi
# And no AVX-512 in an x86 build (objdump where there is one).
if [ "${no_avx512:-0}" = 1 ] && command -v objdump > /dev/null; then
  zmm=$(objdump -d --no-show-raw-insn "$exe" | grep -c zmm || true)
  if [ "$zmm" -gt 0 ]; then
    echo "$exe has $zmm AVX-512 instructions; the catalog promises it to AVX2 machines" >&2
    exit 1
  fi
fi
mkdir -p "$root/out/$(dirname "$file")"
cp "$exe" "$root/out/$file"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
llama=$(git rev-parse HEAD:3rdparty/llama.cpp 2>/dev/null || echo unknown)
echo "built $file in $((SECONDS - start)) s from BitNet $commit (its llama.cpp pin $llama), flags: ${CMAKE_EXTRA:-none}"
