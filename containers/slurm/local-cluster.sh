#!/usr/bin/env bash
# A single-node SLURM on this machine (Debian slurm-wlm + munge), for tests and laptops. Idempotent:
# installs what is missing, writes the config, starts munged/slurmctld/slurmd if they are not running,
# and waits until the node is idle. Needs root. Usage: containers/slurm/local-cluster.sh [start|stop]
set -euo pipefail
action=${1:-start}
conf=/etc/slurm/slurm.conf
if [ "$action" = stop ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
  apt-get clean  # the downloaded .debs are not needed again
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > $conf.new <<CONF
ClusterName=esgrpo-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
DefMemPerCPU=2000
MinJobAge=600
NodeName=$host CPUs=$((cpus * 4)) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
restart=0
if ! cmp -s $conf.new $conf 2>/dev/null; then mv $conf.new $conf; restart=1; else rm $conf.new; fi
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /etc/munge; chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged
fi
if [ $restart = 1 ]; then pkill -x slurmd || true; pkill -x slurmctld || true; sleep 1; fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  case "$state" in idle|mix|alloc) echo "local SLURM ready (node $host: $state)"; exit 0 ;; esac
  scontrol update nodename=$host state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "local SLURM did not become ready; see /var/log/slurm" >&2
exit 1
