#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (localhost) so `sbatch`/`srun` work for
# tests/e2e/test_slurm.py and for trying examples/slurm/cpu_tiny.sbatch by hand.
#
#   sudo bash tools/ci/setup_local_slurm.sh      (~45 s the first time: apt; < 1 s when already up)
#
# What it does (idempotent; each step is skipped when already true):
#   1. installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get (apt-get update first);
#   2. writes /etc/slurm/slurm.conf for one node named after this host, reached on 127.0.0.1: no cgroups
#      (proctrack/linuxproc, task/none: containers often have no writable cgroup tree), no accounting database;
#   3. starts munged, slurmctld and slurmd as root (restarting them if the config changed);
#   4. waits until `sinfo` shows the node idle.
# Exit codes: 0 ready; 3 SLURM cannot be installed here (not root, no apt-get) - the test skips on this one;
# 1 anything else (the reason and the log tail are printed).
#
# Knobs: SLURM_SETUP_CPUS (CPUs the node declares; default max(nproc, 4) so a 4-task CPU job fits on 2 cores:
# slurmd is told to trust the config instead of the hardware, i.e. tasks are oversubscribed on purpose),
# SLURM_SETUP_TIMEOUT (seconds to wait for the node, default 60).
set -uo pipefail

die() { echo "setup_local_slurm: $1" >&2; exit "${2:-1}"; }
log() { echo "setup_local_slurm: $*"; }

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
TIMEOUT=${SLURM_SETUP_TIMEOUT:-60}
NODE=$(hostname -s 2>/dev/null || hostname)
[[ -n "$NODE" ]] || die "cannot determine this machine's host name (hostname printed nothing)"

# ---------------------------------------------------------------- 1. packages
need_install=0
for exe in slurmctld slurmd sbatch srun sinfo scontrol munged; do
  command -v "$exe" >/dev/null 2>&1 || [[ -x /usr/sbin/$exe ]] || need_install=1
done
if [[ $need_install == 1 ]]; then
  [[ $(id -u) == 0 ]] || die "SLURM is not installed and installing it needs root (run: sudo bash $0)" 3
  command -v apt-get >/dev/null 2>&1 || die "SLURM is not installed and apt-get is not available to install it \
(install slurmctld, slurmd, slurm-client and munge with this system's package manager)" 3
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >/tmp/setup_local_slurm.apt.log 2>&1 \
    || { tail -5 /tmp/setup_local_slurm.apt.log >&2; die "apt-get update failed (see above)"; }
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
      >>/tmp/setup_local_slurm.apt.log 2>&1 \
    || { tail -5 /tmp/setup_local_slurm.apt.log >&2; die "apt-get install slurmctld slurmd slurm-client munge failed"; }
fi
export PATH=$PATH:/usr/sbin:/sbin
[[ $(id -u) == 0 ]] || {
  # Installed but not root: usable only if someone already started it.
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && { log "already running"; exit 0; }
  die "SLURM is installed but not running, and starting its daemons needs root (run: sudo bash $0)" 3
}

# ---------------------------------------------------------------- 2. slurm.conf
NCPU=$(nproc)
CPUS=${SLURM_SETUP_CPUS:-$(( NCPU > 4 ? NCPU : 4 ))}
mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
NEW_CONF=$(cat <<EOF
# Written by megatron_code tools/ci/setup_local_slurm.sh: a one-node test cluster on localhost.
ClusterName=localtest
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: containers rarely let slurmd create them. Processes are tracked through /proc instead.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Trust the CPUs declared below rather than the hardware: $CPUS CPUs on a $NCPU-core machine lets a 4-task
# CPU test job run (tasks then share cores).
SlurmdParameters=config_overrides
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$NEW_CONF" ]]; then
  printf '%s\n' "$NEW_CONF" >"$CONF"
  conf_changed=1
  log "wrote $CONF (node $NODE, $CPUS CPUs)"
fi

# ---------------------------------------------------------------- 3. daemons
running() {  # running PIDFILE NAME: the pid recorded there is alive and is that daemon (not a reused pid)
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2"* ]]
}
stop() {  # stop PIDFILE NAME: end that one daemon (by its recorded pid) and wait for it
  running "$1" "$2" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null; sleep 0.2
}
fail_with_logs() {
  echo "setup_local_slurm: $1" >&2
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [[ -f $f ]] && { echo "--- tail $f" >&2; tail -15 "$f" >&2; }
  done
  exit 1
}

MUNGE_PID=/run/munge/munged.pid
if ! (munge -n 2>/dev/null | unmunge >/dev/null 2>&1); then
  [[ -s /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 || \
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  stop "$MUNGE_PID" munged
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged || fail_with_logs "munged did not start"
  for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
  (munge -n | unmunge) >/dev/null 2>&1 || fail_with_logs "munged started but credentials do not round-trip"
fi

if [[ $conf_changed == 1 ]]; then
  stop "$SLURMD_PID" slurmd
  stop "$CTLD_PID" slurmctld
fi
if ! running "$CTLD_PID" slurmctld; then
  log "starting slurmctld"
  # -c: start from a clean state (a test cluster has no jobs worth keeping); -i: ignore stale state files.
  slurmctld -c -i || fail_with_logs "slurmctld did not start"
fi
if ! running "$SLURMD_PID" slurmd; then
  log "starting slurmd"
  slurmd -N "$NODE" || fail_with_logs "slurmd did not start"
fi

# ---------------------------------------------------------------- 4. wait for the node
resumed=0
for _ in $(seq $(( TIMEOUT * 2 ))); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
  case "$state" in
    idle|mixed|allocated|completing) log "ready: node $NODE is $state ($(sinfo -h -o '%D node(s), %c CPUs' | head -1))"; exit 0 ;;
    *drain*|down*|*fail*)
      if [[ $resumed == 0 ]]; then scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1; resumed=1; fi ;;
  esac
  sleep 0.5
done
fail_with_logs "node $NODE did not become idle within ${TIMEOUT}s (last state: '${state:-none}'; sinfo: $(sinfo 2>&1 | tail -1))"
