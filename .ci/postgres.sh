# A throw-away PostgreSQL server on 127.0.0.1 for the tests that need one
# (tests/test_store_sql.py). Sourced by .ci/run; alone:
#     CLEANUP=(); source .ci/postgres.sh; start_postgres; ...; eval "${CLEANUP[@]}"
# start_postgres installs the Debian package where it is missing, starts a server in a
# temporary folder, creates a user and a database, exports MEDBENCH_TEST_POSTGRES_URL and
# appends the command that stops the server (and removes the folder) to CLEANUP.

_as_postgres() {
    # initdb and the server refuse to run as root: as root, run them as the package's user.
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local bin dir port password
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    dir=$(mktemp -d /tmp/medbench-ci-postgres.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    _as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 >"$dir/initdb.log"
    _as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    CLEANUP+=("_as_postgres $bin/pg_ctl -D $dir/data -m fast -w stop >/dev/null; rm -rf $dir")
    _as_postgres "$bin/psql" -q -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 \
        -c "CREATE USER medbench PASSWORD '$password'" \
        -c "CREATE DATABASE medbench_test OWNER medbench" >/dev/null
    export MEDBENCH_TEST_POSTGRES_URL="postgresql+psycopg://medbench:$password@127.0.0.1:$port/medbench_test"
    echo "PostgreSQL test server on 127.0.0.1:$port ($dir)"
}
