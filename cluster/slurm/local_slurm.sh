#!/usr/bin/env bash
# A single-node Slurm with job accounting on this machine, for running and testing the Slurm
# profile (workflow/profiles/slurm) without a cluster.
#
#   sudo cluster/slurm/local_slurm.sh start    # install if needed, start, wait for an idle node
#   sudo cluster/slurm/local_slurm.sh status   # daemons, node state, accounting
#   sudo cluster/slurm/local_slurm.sh stop     # stop exactly the daemons `start` started
#
# Why accounting: snakemake-executor-plugin-slurm learns that a job finished from `sacct`
# (`sacct --clusters all --name <run uuid>`). Without slurmdbd, sacct answers with an error,
# the plugin treats every job as still running, and a workflow waits forever after its first
# job. So this starts munged, a private MariaDB, slurmdbd, slurmctld and slurmd, all in the
# foreground under setsid, records each PID it started in $STATE/pids, and `stop` signals
# only those (after checking the PID still runs that program). A munged that already runs is
# used and left alone. No systemd and no cgroups are needed: proctrack/linuxproc, task/none.
#
# Slurm's client commands (sbatch, srun inside jobs, sacct) read /etc/slurm/slurm.conf: the
# plugin runs `srun` inside each job with SLURM_* variables removed, so SLURM_CONF cannot
# point elsewhere. The script writes that file (and slurmdbd.conf) with a marker line and
# refuses to overwrite one without the marker.
#
# Environment: PRUNETIME_SLURM_STATE (state, logs, database; default /var/tmp/prunetime-slurm),
# PRUNETIME_SLURM_DB_PORT (private MariaDB on 127.0.0.1; default 13306),
# PRUNETIME_SLURM_ACCOUNT (accounting account the user is added to; default prunetime),
# PRUNETIME_SLURM_PARTITION (the partition; default local).
set -euo pipefail

STATE=${PRUNETIME_SLURM_STATE:-/var/tmp/prunetime-slurm}
DB_PORT=${PRUNETIME_SLURM_DB_PORT:-13306}
ACCOUNT=${PRUNETIME_SLURM_ACCOUNT:-prunetime}
PARTITION=${PRUNETIME_SLURM_PARTITION:-local}
CLUSTER=prunetime
CONF_DIR=/etc/slurm
MARKER="# managed by prunetime cluster/slurm/local_slurm.sh"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
NODE=$(hostname -s)
DB_PASS=prunetime-local-only

die() {
  echo "local_slurm: error: $*" >&2
  exit 1
}
log() { echo "local_slurm: $*" >&2; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd starts jobs as their users, and the \
script writes ${CONF_DIR}). As root it installs the Debian packages ${PACKAGES[*]} itself."
}

install_packages() {
  local missing=()
  for bin in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd mariadb-install-db; do
    command -v "$bin" >/dev/null || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null ||
    die "missing ${missing[*]} and no apt-get; install Slurm (slurmctld, slurmd, slurmdbd), munge and MariaDB"
  log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq ||
    die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PACKAGES[@]}" \
    >"$STATE/log/apt.log" 2>&1 || {
    tail -20 "$STATE/log/apt.log" >&2
    die "apt-get install ${PACKAGES[*]} failed (log: $STATE/log/apt.log)"
  }
}

# --- PIDs of the daemons this script started -------------------------------------------
pidfile() { echo "$STATE/pids/$1.pid"; }

# Alive and still running the program we started (guards against a reused PID).
ours_alive() {
  local name=$1 prog=$2 pid
  [ -f "$(pidfile "$name")" ] || return 1
  pid=$(cat "$(pidfile "$name")")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$prog"
}

# Start "$@" detached (own session, foreground mode) and record its PID under $name.
launch() {
  local name=$1
  shift
  setsid "$@" >>"$STATE/log/$name.out" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
  log "started $name (pid $!)"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq "$((secs * 4))"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}

stop_one() {
  local name=$1 prog=$2 pid
  if ! ours_alive "$name" "$prog"; then
    rm -f "$(pidfile "$name")"
    return 0
  fi
  pid=$(cat "$(pidfile "$name")")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
  log "stopped $name (pid $pid)"
}

# --- configuration ------------------------------------------------------------------------
write_managed() { # write_managed PATH MODE < content; refuses foreign files
  local path=$1 mode=$2 tmp
  if [ -e "$path" ] && ! grep -qF "$MARKER" "$path"; then
    die "$path exists and was not written by this script; move it away to use the local Slurm"
  fi
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

# write_configs [stopped]: with "stopped", client commands give up at once (MessageTimeout=1)
# instead of retrying the dead controller for 9 s. That matters beyond Slurm itself: the
# executor plugin runs `scontrol show config` every time snakemake starts, local runs too.
write_configs() {
  local timeout="MessageTimeout=10"
  [ "${1:-}" = stopped ] && timeout="MessageTimeout=1 # daemons stopped: fail fast"
  mkdir -p "$CONF_DIR"
  # The node as slurmd sees it (CPUs, sockets, cores, threads, memory), so it never drains
  # for "low memory" or "low CPUs".
  local hw
  hw=$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]* //")
  write_managed "$CONF_DIR/slurm.conf" 644 <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
# accounting through slurmdbd: sacct is how the Snakemake executor follows its jobs
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MinJobAge=300
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
$timeout
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  write_managed "$CONF_DIR/slurmdbd.conf" 600 <<EOF
$MARKER
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

# --- daemons ------------------------------------------------------------------------------
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    ours_alive munged munged && log "munged already running (ours)" ||
      log "munged already running (not started here; left alone)"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
  wait_for 20 munged munge_works || die "munged did not start (log: $STATE/log/munged.out)"
}

db() { mariadb --no-defaults --socket="$STATE/run/mysqld.sock" -u root "$@"; }

start_mariadb() {
  if ours_alive mariadbd mariadbd; then
    log "mariadbd already running (ours)"
    return 0
  fi
  if [ ! -d "$STATE/mysql/mysql" ]; then
    log "initialising the accounting database in $STATE/mysql"
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
      --auth-root-authentication-method=socket --skip-test-db \
      >"$STATE/log/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed (log: $STATE/log/mariadb-install.log)"
  fi
  launch mariadbd /usr/sbin/mariadbd --no-defaults --user=root --datadir="$STATE/mysql" \
    --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mysqld.pid" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --log-error="$STATE/log/mariadb.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
  wait_for 60 mariadbd db -e "select 1" ||
    die "mariadbd did not come up (log: $STATE/log/mariadb.log)"
  db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  if ours_alive slurmdbd slurmdbd; then
    log "slurmdbd already running (ours)"
  else
    launch slurmdbd /usr/sbin/slurmdbd -D
  fi
  wait_for 60 slurmdbd sacctmgr -n list cluster ||
    die "slurmdbd does not answer (log: $STATE/log/slurmdbd.log)"
}

sacctmgr_add() { # idempotent `sacctmgr -i add ...`
  local out
  if ! out=$(sacctmgr -i add "$@" 2>&1); then
    echo "$out" | grep -qi "already exist\|nothing new added" ||
      die "sacctmgr add $* failed: $out"
  fi
}

register_accounting() {
  sacctmgr_add cluster "$CLUSTER"
  sacctmgr_add account "$ACCOUNT" Cluster="$CLUSTER" Description=prunetime Organization=prunetime
  local users=(root)
  [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && users+=("$SUDO_USER")
  for u in "${users[@]}"; do
    sacctmgr_add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER"
  done
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1; }

start_slurm() {
  ours_alive slurmctld slurmctld && log "slurmctld already running (ours)" ||
    launch slurmctld /usr/sbin/slurmctld -D
  wait_for 60 slurmctld scontrol ping ||
    die "slurmctld does not answer (log: $STATE/log/slurmctld.log)"
  ours_alive slurmd slurmd && log "slurmd already running (ours)" ||
    launch slurmd /usr/sbin/slurmd -D
  local state=""
  for _ in $(seq 240); do
    state=$(node_state)
    case $state in
      idle | mix | alloc) break ;;
      drain* | drng | down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.25
  done
  case $state in
    idle | mix | alloc) log "node $NODE is $state; partition $PARTITION, account $ACCOUNT" ;;
    *) die "node $NODE is '${state:-unknown}' after 60 s (logs: $STATE/log/slurmd.log, slurmctld.log)" ;;
  esac
}

check_ports_free() { # a foreign Slurm on the standard ports cannot be ours
  local port name
  for spec in 6817:slurmctld 6818:slurmd 6819:slurmdbd "$DB_PORT":mariadbd; do
    port=${spec%%:*}
    name=${spec#*:}
    ours_alive "$name" "$name" && continue
    if ss -ltnH "sport = :$port" 2>/dev/null | grep -q .; then
      die "port $port (for $name) is in use by a process not started here: \
$(ss -ltnpH "sport = :$port" 2>/dev/null | head -1)"
    fi
  done
}

cmd_start() {
  need_root
  mkdir -p "$STATE"/{pids,log,run,slurmctld,slurmd}
  install_packages
  check_ports_free
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  register_accounting
  start_slurm
  echo "local Slurm is up: sinfo, sbatch, sacct work; stop it with $0 stop"
}

cmd_stop() {
  need_root
  stop_one slurmd slurmd
  stop_one slurmctld slurmctld
  stop_one slurmdbd slurmdbd
  stop_one mariadbd mariadbd
  stop_one munged munged
  if [ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    write_configs stopped
  fi
}

# Exit status 0 when the Slurm daemons started here all run, 3 otherwise.
cmd_status() {
  local name rc=0
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if ours_alive "$name" "$name"; then
      echo "$name: running (pid $(cat "$(pidfile "$name")"), started here)"
    else
      echo "$name: not started here"
      [ "$name" = munged ] || rc=3
    fi
  done
  if [ $rc -eq 0 ]; then
    sinfo 2>&1 || true
    sacctmgr -n list association format=cluster,account,user 2>&1 || true
  fi
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
