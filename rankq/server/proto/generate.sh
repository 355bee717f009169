#!/bin/sh
# Regenerate the Python modules of rankq.proto (committed, so running a server needs no grpcio-tools).
# Usage: rankq/server/proto/generate.sh  (PYTHON selects the interpreter that has grpcio-tools)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -m grpc_tools.protoc -I "$here" \
    --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" "$here/rankq.proto"
# protoc writes a top-level import; the modules live in a package.
sed -i.bak 's/^import rankq_pb2 as rankq__pb2$/from . import rankq_pb2 as rankq__pb2/' "$here/rankq_pb2_grpc.py"
rm -f "$here/rankq_pb2_grpc.py.bak"
grep -q '^from \. import rankq_pb2 as rankq__pb2$' "$here/rankq_pb2_grpc.py"
