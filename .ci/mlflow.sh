# A throw-away MLflow tracking server on 127.0.0.1 for the tests that need one
# (tests/test_tracking.py). Sourced by .ci/run; alone:
#     CLEANUP=(); source .ci/mlflow.sh; start_mlflow; ...; for s in "${CLEANUP[@]}"; do eval "$s"; done
# start_mlflow starts a server (mlflow comes with the [dev] extra) on a free port, with its
# SQLite store and artifacts in a temporary folder, waits until it answers, exports
# MEDBENCH_TEST_MLFLOW_URI and appends the command that stops it (and removes the folder)
# to CLEANUP.

start_mlflow() {
    local dir port pid
    dir=$(mktemp -d /tmp/medbench-ci-mlflow.XXXXXX)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # setsid: the server and its workers form one process group, stopped together.
    setsid python3 -m mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
        --backend-store-uri "sqlite:///$dir/mlflow.db" \
        --artifacts-destination "$dir/artifacts" >"$dir/server.log" 2>&1 &
    pid=$!
    CLEANUP+=("kill -TERM -- -$pid 2>/dev/null; sleep 1; kill -KILL -- -$pid 2>/dev/null; rm -rf $dir")
    # Its first start creates the database tables: allow it two minutes to answer.
    if ! python3 - "$port" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2):
            sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(1)
PY
    then
        echo "the MLflow test server did not answer within 120 s; its log:" >&2
        cat "$dir/server.log" >&2
        return 1
    fi
    export MEDBENCH_TEST_MLFLOW_URI="http://127.0.0.1:$port"
    echo "MLflow test server on 127.0.0.1:$port ($dir)"
}
