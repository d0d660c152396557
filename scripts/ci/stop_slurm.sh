#!/usr/bin/env bash
# Stop the Slurm and munge daemons started by start_slurm.sh, each by the pid in its pidfile.
set -uo pipefail

stop() {  # stop PIDFILE NAME
    local pf="$1" name="$2" pid
    [[ -s "$pf" ]] || return 0
    pid="$(cat "$pf")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop_slurm: $name (pid $pid) still running after 10 s" >&2; return 1
        fi
        echo "stop_slurm: stopped $name (pid $pid)" >&2
    fi
    rm -f "$pf"
}

rc=0
stop /run/slurmd.pid slurmd || rc=1
stop /run/slurmctld.pid slurmctld || rc=1
if [[ "${1:-}" != "--keep-munge" ]]; then stop /run/munge/munged.pid munged || rc=1; fi
exit $rc
