#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `forgetlab run STUDY --executor slurm`
# without a real cluster (and for the opt-in test tests/experiments/test_slurm_cluster.py).
#
#   sudo apt-get install -y slurm-wlm munge      # Debian/Ubuntu: Slurm and its authentication
#   sudo scripts/slurm_single_node.sh start      # munged, slurmctld, slurmd; partition "debug"
#   sinfo                                        # debug* up infinite 1 idle <host>
#   sudo scripts/slurm_single_node.sh stop
#
# It writes /etc/slurm/slurm.conf (the path sbatch, squeue and sinfo read), refusing to replace
# one it did not write, with CPUS CPUs (default: this machine's) and no accounting database
# (no slurmdbd: forgetlab watches its jobs with squeue, not sacct). State and logs go to
# STATE_DIR (default /var/tmp/forgetlab-slurm). Daemons run as root: a throwaway machine only.
set -euo pipefail

STATE_DIR=${STATE_DIR:-/var/tmp/forgetlab-slurm}
CPUS=${CPUS:-$(nproc)}
CONF=/etc/slurm/slurm.conf
MARK="# written by forgetlab scripts/slurm_single_node.sh"
HOST=$(hostname -s)

need() {
  command -v "$1" >/dev/null || { echo "error: $1 not found; install: apt-get install -y slurm-wlm munge" >&2; exit 2; }
}

stop_slurm() {
  for pid in "$STATE_DIR/slurmd.pid" "$STATE_DIR/slurmctld.pid"; do
    if [[ -f $pid ]]; then kill "$(cat "$pid")" 2>/dev/null || true; rm -f "$pid"; fi
  done
}

stop() {
  stop_slurm
  if [[ -f /run/munge/munged.pid ]]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
  echo "stopped"
}

start() {
  need munged; need slurmctld; need slurmd; need sinfo
  [[ $(id -u) == 0 ]] || { echo "error: run as root (it starts munged, slurmctld, slurmd)" >&2; exit 2; }
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "error: $CONF exists and was not written by this script; not replacing it" >&2; exit 2
  fi
  mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool" /etc/slurm /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  fi
  munge -n | unmunge >/dev/null  # authentication works

  local mem_mb
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat >"$CONF" <<EOF
$MARK
ClusterName=forgetlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  stop_slurm
  sleep 1
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 30); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed|alloc"; then
      sinfo
      echo "Slurm is up: partition debug, $CPUS CPUs on $HOST (logs in $STATE_DIR)"
      return 0
    fi
    sleep 1
  done
  echo "error: the node did not become idle; sinfo says:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log" >&2 || true
  exit 1
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
