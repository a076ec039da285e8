#!/usr/bin/env bash
# Build llama-server from a microsoft/BitNet checkout with BitNet's own flow
# (its kernel code generation, then CMake with clang), and copy it to
# out/<release path>. The release workflow runs this once per variant.
#
#   scripts/build-bitnet-server.sh <BitNet checkout> <release path>
#   CMAKE_EXTRA: the variant's CMake flags (-DGGML_VULKAN=ON, ...)
set -euo pipefail
src="$1"
file="$2"
root="$(pwd)"
cd "$src"
# The same pre-tuned kernel shapes setup_env.py uses for BitNet b1.58 2B4T.
case "$(uname -m)" in
  x86_64 | AMD64)
    python utils/codegen_tl2.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 96,96,96 --bm 32,32,32 ;;
  arm64 | aarch64)
    python utils/codegen_tl1.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 64,128,64 --bm 32,64,32 ;;
  *)
    echo "unsupported build machine: $(uname -m)" >&2
    exit 1 ;;
esac
# shellcheck disable=SC2086 # CMAKE_EXTRA is a list of flags
cmake -B build ${CMAKE_EXTRA:-} -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF
cmake --build build --config Release --target llama-server --parallel
exe=build/bin/llama-server
[ -f build/bin/Release/llama-server.exe ] && exe=build/bin/Release/llama-server.exe
[ -f build/bin/llama-server.exe ] && exe=build/bin/llama-server.exe
mkdir -p "$root/out/$(dirname "$file")"
cp "$exe" "$root/out/$file"
echo "built $file from $(git rev-parse HEAD)"
