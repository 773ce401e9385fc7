#!/usr/bin/env bash
# Wheels (CPython 3.12, x86-64) of the packages this project imports that the lent GPU's image lacks, into .whl/
# for benchmarks/gpu_suite.sh. The image's own jax, flax, optax, orbax, numpy and tiktoken are used as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl ml-collections==1.1.0 tensorflow-datasets==4.9.10 array-record==0.8.6 grain==0.2.18 \
  tensorboardX==2.6.5 portpicker==1.6.0 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 \
  docstring-parser==0.18.0 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 googleapis-common-protos==1.76.0
python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # pure Python, published as a source archive only
du -sh .whl
