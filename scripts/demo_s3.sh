#!/usr/bin/env bash
# A fleet on one machine: a local S3 endpoint (moto's server), a private redis-server,
# `velo worker --processes 2`, and `velo dispatch --wait` on s3://velo/in/. Everything it
# starts is stopped at the end. Usage: scripts/demo_s3.sh [DEMO_DIR]   (needs redis-server)
set -euo pipefail
BIN=${BIN:-.venv/bin}
DEMO=${1:-demo}
command -v redis-server >/dev/null || { echo "demo-s3: needs redis-server (apt-get install redis-server)" >&2; exit 2; }

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port)
REDIS_PORT=$(free_port)
mkdir -p "$DEMO/state"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$DEMO/state/s3.log" 2>&1 & pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DEMO/state" \
  >"$DEMO/state/redis.log" 2>&1 & pids+=($!)

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN/python" scripts/make_demo.py "$DEMO"
"$BIN/python" - "$DEMO" <<'PY'
import pathlib, sys, time, boto3
root = pathlib.Path(sys.argv[1])
for _ in range(50):
    try:
        s3 = boto3.client("s3"); s3.create_bucket(Bucket="velo"); break
    except Exception:
        time.sleep(0.1)
s3.upload_file(str(root / "model.joblib"), "velo", "models/model.joblib")
for path in sorted((root / "data").rglob("*.csv*")):
    if ".out." not in path.name:
        s3.upload_file(str(path), "velo", f"in/{path.relative_to(root / 'data')}")
print("uploaded the model and", len(list(s3.list_objects_v2(Bucket="velo", Prefix="in/")["Contents"])), "inputs")
PY

"$BIN/velo" worker --processes 2 >"$DEMO/state/worker.log" 2>&1 & pids+=($!)
"$BIN/velo" dispatch s3://velo/in/ --model s3://velo/models/model.joblib --wait
"$BIN/velo" dispatch s3://velo/in/ --model s3://velo/models/model.joblib --dry-run
"$BIN/velo" status
"$BIN/python" -c 'import boto3; [print("s3://velo/" + o["Key"], o["Size"]) for o in boto3.client("s3").list_objects_v2(Bucket="velo", Prefix="in/")["Contents"]]'
