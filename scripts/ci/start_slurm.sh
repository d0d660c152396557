#!/usr/bin/env bash
# Start a one-node Slurm (munge + slurmctld + slurmd) on this machine, for CI and local tests.
#
# Idempotent: installs the packages when absent, writes the configuration, starts the daemons
# that are not running, waits until the node is idle and prints one status line.
# Needs root; no systemd (the daemons are started directly; docs/cluster.md describes the setup).
#
# Environment:
#   HRANK_SLURM_CPUS   CPUs advertised on the node (default 8; more than exist, so that
#                      array tasks run in parallel)
#   HRANK_SLURM_GPUS   fake GPUs (character devices /dev/fakegpuN) advertised (default 2)
#   HRANK_SLURM_FRESH  1: stop running daemons first and start from a clean state
set -euo pipefail

CPUS="${HRANK_SLURM_CPUS:-8}"
GPUS="${HRANK_SLURM_GPUS:-2}"
CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
HOST="$(hostname -s)"

log() { echo "start_slurm: $*" >&2; }
running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ "$(id -u)" != 0 ]]; then
    log "must run as root"; exit 1
fi

if [[ "${HRANK_SLURM_FRESH:-0}" == 1 ]]; then
    "$(dirname "$0")/stop_slurm.sh" || true
fi

# --- packages -------------------------------------------------------------------------------
need=()
for bin in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${bin%%:*}" ]] || need+=("${bin##*:}")
done
if (( ${#need[@]} )); then
    log "installing ${need[*]}"
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    if (( made_policy )); then rm -f /usr/sbin/policy-rc.d; fi
fi

# --- munge ----------------------------------------------------------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null; then mungekey --create --force; else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { log "munge does not answer"; exit 1; }

# --- fake GPUs ------------------------------------------------------------------------------
gres_node=""
if (( GPUS > 0 )); then
    for ((i = 0; i < GPUS; i++)); do
        [[ -e /dev/fakegpu$i ]] || mknod /dev/fakegpu$i c 1 3
    done
    gres_node=" Gres=gpu:${GPUS}"
fi

# --- configuration --------------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
chown slurm:slurm "$STATE_DIR" "$LOG_DIR" 2>/dev/null || true
# The node line from `slurmd -C`, with the CPU count overridden (config_overrides below).
node_line="$(slurmd -C | head -n1)"
node_line="$(sed -E "s/CPUs=[0-9]+/CPUs=${CPUS}/; s/ Boards=[0-9]+//; s/ SocketsPerBoard=[0-9]+//; s/ CoresPerSocket=[0-9]+//; s/ ThreadsPerCore=[0-9]+//" <<<"$node_line")"
conf="$(cat <<CONF
# Written by scripts/ci/start_slurm.sh; a one-node CI cluster.
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MailProg=/bin/true
MinJobAge=3600
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=1
SlurmdParameters=config_overrides
GresTypes=gpu
${node_line}${gres_node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)"
gres="$( (( GPUS > 0 )) && echo "Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]" || true)"
changed=0
if [[ ! -f "$CONF_DIR/slurm.conf" ]] || [[ "$(cat "$CONF_DIR/slurm.conf")" != "$conf" ]]; then
    printf '%s\n' "$conf" > "$CONF_DIR/slurm.conf"; changed=1
fi
if [[ ! -f "$CONF_DIR/gres.conf" ]] || [[ "$(cat "$CONF_DIR/gres.conf")" != "$gres" ]]; then
    printf '%s\n' "$gres" > "$CONF_DIR/gres.conf"; changed=1
fi
if (( changed )) && { running /run/slurmctld.pid || running /run/slurmd.pid; }; then
    log "configuration changed: restarting Slurm"
    for pf in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$pf"; then
            pid="$(cat "$pf")"; kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi

# --- daemons --------------------------------------------------------------------------------
if ! running /run/slurmctld.pid; then slurmctld -c; fi
if ! running /run/slurmd.pid; then slurmd; fi

state=""
for _ in $(seq 300); do
    state="$(sinfo -h -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated) break ;;
        drain*|down*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
done
case "$state" in
    idle|mixed|allocated) ;;
    *) log "node did not become idle (state '${state}'); see ${LOG_DIR}/slurmctld.log"; exit 1 ;;
esac
echo "slurm up: node ${HOST} ${state}, CPUs=${CPUS}, GPUs=${GPUS} (fake), $(sinfo -V)," \
     "slurmctld pid $(cat /run/slurmctld.pid), slurmd pid $(cat /run/slurmd.pid)"
