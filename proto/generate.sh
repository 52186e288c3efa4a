#!/bin/sh
# Regenerates inferd/protocols/grpc_pb/ from the Triton protocol files in proto/triton/
# (github.com/triton-inference-server/common, protobuf/, commit 83adf7cf88a2f343005974dff3728be746de2d66, BSD-3-Clause).
# Run from the repository root with grpcio-tools installed: sh proto/generate.sh
set -eu
out=inferd/protocols/grpc_pb
python -m grpc_tools.protoc -I proto/triton --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/triton/model_config.proto proto/triton/grpc_service.proto
# protoc writes top-level imports; the stubs live in a package.
sed -i 's/^import model_config_pb2 as/from inferd.protocols.grpc_pb import model_config_pb2 as/; s/^import grpc_service_pb2 as/from inferd.protocols.grpc_pb import grpc_service_pb2 as/' "$out"/*_pb2*.py
sed -i 's/^import model_config_pb2 as/from inferd.protocols.grpc_pb import model_config_pb2 as/' "$out"/*.pyi
