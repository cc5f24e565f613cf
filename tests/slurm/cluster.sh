#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests/test_slurm.py (and by hand):
#
#   tests/slurm/cluster.sh install        # Debian's slurm-wlm and munge (apt-get; needs root)
#   tests/slurm/cluster.sh start DIR      # munged, slurmctld and slurmd, state and logs under DIR
#   tests/slurm/cluster.sh stop DIR       # stop what start started (munged only if start did)
#
# The configuration goes to /etc/slurm/slurm.conf, where every Slurm command looks: SLURM_CONF
# cannot point elsewhere, because snakemake-executor-plugin-slurm-jobstep removes every SLURM_*
# variable but the job's identity before its inner srun. `start` refuses to overwrite a
# configuration it did not write, and `stop` removes the one it wrote. One node (this machine, all
# its CPUs and memory), one partition `ci`, no accounting database (the executor plugin then needs
# --slurm-no-account and squeue for job status: profiles/slurm-ci sets both).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by frozenrep's tests/slurm/cluster.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "slurm-wlm and munge are missing; install them as root: apt-get install slurm-wlm munge"
        sudo="sudo"
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and this is not a Debian/Ubuntu machine: install Slurm 22.05+ and MUNGE by hand"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
    local dir=$1 host cpus mem
    [ "$(id -u)" = 0 ] || die "start needs root (slurmd runs jobs as their submitting user)"
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: this test cluster only runs where no Slurm is configured"
    fi
    mkdir -p "$dir"/{state,spool,log} /etc/slurm
    dir=$(cd "$dir" && pwd)
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=frozenrep-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups in a container: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
        runuser -u munge -- /usr/sbin/munged
        touch "$dir/munged.ours"  # stop ends it too
    fi
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            return 0
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    die "the node did not come up within 30 s (logs above, in $dir/log)"
}

stop() {
    local dir=$1 pid
    dir=$(cd "$dir" && pwd)
    for pid in slurmd slurmctld; do
        if [ -s "$dir/$pid.pid" ]; then
            kill "$(cat "$dir/$pid.pid")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 40); do
        { [ -s "$dir/slurmd.pid" ] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null; } || \
        { [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; } || break
        sleep 0.25
    done
    if [ -e "$CONF" ] && grep -qxF "$MARK" "$CONF"; then
        rm -f "$CONF"
    fi
    if [ -e "$dir/munged.ours" ]; then
        pkill -x munged 2>/dev/null || true
        rm -f "$dir/munged.ours"
    fi
}

case "${1:-}" in
    install) install ;;
    start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
