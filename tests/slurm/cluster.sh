#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, for tests/test_slurm.py (and by hand):
#
#   tests/slurm/cluster.sh install        # Debian's slurm-wlm and munge (apt-get; needs root)
#   tests/slurm/cluster.sh start DIR      # the test network, munged, slurmctld and two slurmd; state and logs under DIR
#   tests/slurm/cluster.sh stop DIR       # stop what start started and remove the network (munged only if start did)
#
# Each compute node (frz-n1, frz-n2) is its own network namespace with its own hostname (a UTS
# namespace) and its own /etc/hosts (/etc/netns/NODE/hosts bound over it in a mount namespace), joined to
# the controller by a private bridge (10.213.0.0/24, no route out). slurmctld runs on this machine
# at the bridge's address, where sbatch and squeue reach it; the nodes share this machine's file
# system, as compute nodes share a cluster's. Each node offers all CPUs and half the memory.
#
# The configuration goes to /etc/slurm/slurm.conf, where every Slurm command looks: SLURM_CONF
# cannot point elsewhere, because snakemake-executor-plugin-slurm-jobstep removes every SLURM_*
# variable but the job's identity before its inner srun. `start` refuses to overwrite a
# configuration it did not write, and `stop` removes the one it wrote. One partition `ci`, no
# accounting database (the executor plugin then needs --slurm-no-account and squeue for job
# status: profiles/slurm-ci sets both).
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

NODES=(frz-n1 frz-n2)
BRIDGE=frzbr0
NET=10.213.0
CTL_ADDR=$NET.1

node_addr() { echo "$NET.$(( 10 + ${1#frz-n} ))"; }

network_up() {
    local node i=0 host=$1
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        i=$((i + 1))
        ip netns add "$node"
        ip link add "frzv$i" type veth peer name eth0 netns "$node"
        ip link set "frzv$i" master "$BRIDGE" up
        ip -n "$node" addr add "$(node_addr "$node")/24" dev eth0
        ip -n "$node" link set eth0 up
        ip -n "$node" link set lo up
        mkdir -p "/etc/netns/$node"
        {
            echo "127.0.0.1 localhost"
            echo "$CTL_ADDR $host"
            for other in "${NODES[@]}"; do echo "$(node_addr "$other") $other"; done
        } > "/etc/netns/$node/hosts"
    done
}

network_down() {
    local node
    for node in "${NODES[@]}"; do
        ip netns pids "$node" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$node" 2>/dev/null || true  # removes its end of the veth pair, and so the pair
        rm -rf "/etc/netns/$node"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

start() {
    local dir=$1 host cpus mem node
    [ "$(id -u)" = 0 ] || die "start needs root (network namespaces; slurmd runs jobs as their submitting user)"
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: this test cluster only runs where no Slurm is configured"
    fi
    ip link show "$BRIDGE" >/dev/null 2>&1 && die "the test network $BRIDGE exists: run '$0 stop DIR' for the cluster that made it"
    mkdir -p "$dir"/{state,spool,log} /etc/slurm
    dir=$(cd "$dir" && pwd)
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( ($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024) / ${#NODES[@]} ))
    network_up "$host"
    {
        cat <<CONF
$MARK
ClusterName=frozenrep-test
SlurmctldHost=$host($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# No cgroups in a container: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The nodes share this machine's CPUs: take the counts below as given.
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=30
MinJobAge=600
CONF
        for node in "${NODES[@]}"; do
            echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        done
        echo "PartitionName=ci Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
    } > "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
        runuser -u munge -- /usr/sbin/munged
        touch "$dir/munged.ours"  # stop ends it too
    fi
    slurmctld
    for node in "${NODES[@]}"; do
        mkdir -p "$dir/spool/$node"
        # not `ip netns exec`, which mounts a fresh /sys without the cgroup file system slurmd reads
        nsenter --net="/run/netns/$node" unshare --uts --mount sh -c \
            "mount --bind /etc/netns/$node/hosts /etc/hosts && hostname $node && exec slurmd -N $node"
    done
    for _ in $(seq 60); do
        if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = "${#NODES[@]}" ]; then
            return 0
        fi
        sleep 0.5
    done
    sinfo -N >&2 || true
    tail -n 20 "$dir"/log/*.log >&2 || true
    die "the nodes did not come up within 30 s (logs above, in $dir/log)"
}

stop() {
    local dir=$1 pid file
    dir=$(cd "$dir" && pwd)
    for file in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
        [ -s "$file" ] && kill "$(cat "$file")" 2>/dev/null || true
    done
    for _ in $(seq 40); do
        pid=""
        for file in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
            [ -s "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null && pid=$file
        done
        [ -z "$pid" ] && break
        sleep 0.25
    done
    network_down
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
