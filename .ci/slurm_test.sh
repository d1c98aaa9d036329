#!/usr/bin/env bash
# A real SLURM run of msqmri-sbatch on a single-node cluster on localhost (run as root).
#   1. install Debian's slurm-wlm + munge (apt) if missing
#   2. start munged, slurmctld and slurmd on localhost with a private slurm.conf
#      (SLURM_CONF; proctrack/linuxproc, no cgroups, no accounting)
#   3. write a two-participant synthetic dataset (msqmri-synth --size tiny)
#   4. msqmri-sbatch --runtime none --submit: a 2-task participant array + the group job
#      with --dependency=afterok
#   5. wait, check every job COMPLETED and the expected outputs; stop the daemons
# Environment: VENV (default .venv: the python with msqmri installed), WORK (scratch,
# default a new directory under /tmp), TIMEOUT (seconds to wait for the jobs, default 480).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
PY=$VENV/bin/python
TIMEOUT=${TIMEOUT:-480}
t0=$(date +%s)
lap() { printf '[time] %-30s %4d s\n' "$1" $(($(date +%s) - t0)); }

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm_test: needs root (daemons, apt)" >&2
  exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null
fi
lap "slurm-wlm installed ($(slurmctld -V))"

if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d /tmp/msqmri-slurm.XXXXXX)
  keep=0
else
  mkdir -p "$WORK"
  keep=1
fi
chmod 755 "$WORK"
export SLURM_CONF=$WORK/etc/slurm.conf
mkdir -p "$WORK/etc" "$WORK/state" "$WORK/spool" "$WORK/log" "$WORK/run"

PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/run/slurmd.pid" ] && kill "$(cat "$WORK/run/slurmd.pid")" 2>/dev/null || true
  [ -f "$WORK/run/slurmctld.pid" ] && kill "$(cat "$WORK/run/slurmctld.pid")" 2>/dev/null || true
  [ -f "$WORK/munge/munged.pid" ] && kill "$(cat "$WORK/munge/munged.pid")" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    echo "--- slurmctld.log (tail)"; tail -20 "$WORK/log/slurmctld.log" 2>/dev/null || true
    echo "--- slurmd.log (tail)"; tail -20 "$WORK/log/slurmd.log" 2>/dev/null || true
    for f in "$WORK"/out/logs/slurm/*.log; do
      [ -e "$f" ] && { echo "--- $f"; tail -20 "$f"; }
    done
    echo "slurm_test: FAILED (scratch kept: $WORK)" >&2
  elif [ "$keep" -eq 0 ]; then
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- munge: the key of the package, a private socket -------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
MUNGE_DIR=$WORK/munge
mkdir -p "$MUNGE_DIR"
chown munge:munge "$MUNGE_DIR"
chmod 755 "$MUNGE_DIR"
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
  --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null
lap "munged"

# --- slurm.conf: one node (localhost), its CPUs and memory -------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$SLURM_CONF" <<EOF
ClusterName=msqmri-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 100); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 0.2
done
sinfo -N -o '%N %T %c %m'
[ "$state" = idle ] || { echo "slurm_test: node not idle ($state)" >&2; exit 1; }
lap "slurmctld + slurmd up"

# --- data, scripts, submission ------------------------------------------------------------
"$VENV/bin/msqmri-synth" "$WORK/bids" --size tiny --subjects 2 --seed 2 --series
lap "synthetic dataset"
"$PY" -m bids_app.cli.sbatch "$WORK/bids" "$WORK/out" -o "$WORK/scripts" --runtime none \
  --cpus-per-task 1 --mem-gb 2 --time 00:15:00 --group-time 00:10:00 --submit \
  -- --models b1 vfa_t1 --skip-bids-validation | tee "$WORK/submit.txt"
array=$(awk '/participant array:/ {print $3}' "$WORK/submit.txt")
group=$(awk '/group job:/ {print $3}' "$WORK/submit.txt")
[ -n "$array" ] && [ -n "$group" ] || { echo "slurm_test: no job ids" >&2; exit 1; }
scontrol show job "$group" | grep -o 'Dependency=[^ ]*'
lap "submitted (array $array, group $group)"

deadline=$(($(date +%s) + TIMEOUT))
while squeue -h -j "$array,$group" 2>/dev/null | grep -q .; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    squeue; echo "slurm_test: jobs still running after ${TIMEOUT} s" >&2; exit 1
  fi
  sleep 2
done
lap "jobs finished"

# every array task and the group job COMPLETED with exit 0 (scontrol keeps them MinJobAge s)
for job in "$array" "$group"; do
  scontrol -o show job "$job" | grep -o 'JobId=[0-9]*\|ArrayTaskId=[0-9]*\|JobState=[A-Z_]*\|ExitCode=[0-9:]*\|StartTime=[^ ]*\|EndTime=[^ ]*' \
    | paste -sd' ' -
done
scontrol -o show job "$array" | grep -c 'JobState=COMPLETED' | grep -qx 2 \
  || { echo "slurm_test: participant tasks not both COMPLETED" >&2; exit 1; }
scontrol -o show job "$group" | grep -q 'JobState=COMPLETED.*ExitCode=0:0' \
  || { echo "slurm_test: group job not COMPLETED" >&2; exit 1; }
# the group job started after both tasks had ended
last_end=$(scontrol -o show job "$array" | grep -o 'EndTime=[^ ]*' | sort | tail -1 | cut -d= -f2)
group_start=$(scontrol -o show job "$group" | grep -o 'StartTime=[^ ]*' | cut -d= -f2)
[[ "$group_start" > "$last_end" || "$group_start" == "$last_end" ]] \
  || { echo "slurm_test: group started $group_start before $last_end" >&2; exit 1; }

missing=0
for f in dataset_description.json group_desc-regions_stats.tsv group.html \
  sub-01/anat/sub-01_T1map.nii.gz sub-02/anat/sub-02_T1map.nii.gz \
  sub-01/fmap/sub-01_TB1map.nii.gz sub-02/fmap/sub-02_TB1map.nii.gz \
  sub-01/sub-01_desc-regions_stats.tsv sub-02/sub-02_desc-regions_stats.tsv; do
  [ -s "$WORK/out/$f" ] || { echo "missing output: $f" >&2; missing=1; }
done
[ "$missing" -eq 0 ]
n=$(tail -n +2 "$WORK/out/group_desc-regions_stats.tsv" | cut -f1 | sort -u | wc -l)
[ "$n" -eq 2 ] || { echo "slurm_test: group table has $n participants, expected 2" >&2; exit 1; }
ls "$WORK/out/logs/slurm"
lap "outputs checked"
echo "slurm_test: OK (2-task array + dependent group job on a local SLURM, $(($(date +%s) - t0)) s)"
