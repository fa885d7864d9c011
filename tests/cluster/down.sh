#!/usr/bin/env bash
# Tears down the cluster named $CLUSTER_ID (default "cluster"), by name and
# by PID, whatever state up.sh left it in; safe to run twice. Order:
#   1. kubelets (so nothing restarts pods), then every process inside a node:
#      those in the node's cgroup tree (containers), sharing its mount
#      namespace (containerd, shims) or its network namespace;
#   2. the control plane, by PID file and by network namespace;
#   3. the node mount namespaces (every overlay, pod netns and volume mount
#      made inside them goes with them), the cgroups, the network namespaces;
#   4. $STATE, except logs/ and report/ (KEEP_STATE=1 keeps everything).
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# kill_pids SIGNAL PID...: only live PIDs; never a broad name.
kill_pids() {
  local sig=$1; shift
  local p
  for p in "$@"; do [[ -n $p && -d /proc/$p ]] && kill "-$sig" "$p" 2>/dev/null; done
}
# wait_gone SECONDS PID...
wait_gone() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs)) p alive
  while ((SECONDS < deadline)); do
    alive=0
    for p in "$@"; do [[ -d /proc/$p ]] && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  return 1
}
stop_pid_file() {
  local f=$1 p
  [[ -f $f ]] || return 0
  p=$(cat "$f")
  kill_pids TERM "$p"
  wait_gone 10 "$p" || { kill_pids KILL "$p"; wait_gone 5 "$p"; }
  rm -f "$f"
}
# PIDs whose namespace of KIND (net, mnt) is the one at PATH.
pids_in_ns() {
  local kind=$1 path=$2 want p
  want=$(stat -L -c %i "$path" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [[ "$(stat -L -c %i "$p/ns/$kind" 2>/dev/null)" == "$want" ]] && echo "${p#/proc/}"
  done
}
# PIDs in every v1 hierarchy's copy of cgroup ROOT (recursively).
pids_in_cgroup() {
  local root=$1 d
  for d in /sys/fs/cgroup/*"$root"; do
    [[ -d $d ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}
kill_all() {  # kill_all PID... : TERM, then KILL what is left
  (($#)) || return 0
  kill_pids TERM "$@"
  wait_gone 5 "$@" || { kill_pids KILL "$@"; wait_gone 5 "$@"; }
}

for n in 1 2; do stop_pid_file "$STATE/pids/kubelet-$n.pid"; done

for n in 1 2; do
  ns=$(node_ns "$n")
  # Containers first (they live in the node's cgroups, in mount namespaces of their own).
  for _ in 1 2 3; do
    mapfile -t pids < <(pids_in_cgroup "$(cgroup_root "$n")")
    ((${#pids[@]})) || break
    kill_all "${pids[@]}"
  done
  stop_pid_file "$STATE/pids/containerd-$n.pid"
  if [[ -e $STATE/ns/node-$n.mnt ]]; then
    mapfile -t pids < <(pids_in_ns mnt "$STATE/ns/node-$n.mnt")
    kill_all "${pids[@]}"
  fi
  if [[ -e /run/netns/$ns ]]; then
    mapfile -t pids < <(pids_in_ns net "/run/netns/$ns")
    kill_all "${pids[@]}"
  fi
done

for name in kube-scheduler kube-controller-manager kube-apiserver etcd e2e; do
  stop_pid_file "$STATE/pids/$name.pid"
done
for ns in "$NS_CP" "$NS_BR"; do
  if [[ -e /run/netns/$ns ]]; then
    mapfile -t pids < <(pids_in_ns net "/run/netns/$ns")
    kill_all "${pids[@]}"
  fi
done

# Mount namespaces: unbinding the last reference frees every mount inside.
for n in 1 2; do
  [[ -e $STATE/ns/node-$n.mnt ]] && { umount "$STATE/ns/node-$n.mnt" 2>/dev/null; rm -f "$STATE/ns/node-$n.mnt"; }
done
mountpoint -q "$STATE/ns" 2>/dev/null && umount "$STATE/ns"

# Cgroups, deepest first (each must be empty of processes by now).
for n in 1 2; do
  for d in /sys/fs/cgroup/*"$(cgroup_root "$n")"; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    [[ -d $d ]] && log "warning: could not remove cgroup $d"
  done
done

for ns in "$(node_ns 1)" "$(node_ns 2)" "$NS_CP" "$NS_BR"; do
  [[ -e /run/netns/$ns ]] && ip netns del "$ns"
done

if [[ -d $STATE && -z ${KEEP_STATE:-} ]]; then
  # Anything still mounted under $STATE would make rm fail loudly: check first.
  if grep -q " $STATE/" /proc/self/mountinfo; then
    log "warning: mounts remain under $STATE; leaving it in place"
  else
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name report -exec rm -rf {} +
  fi
fi
log "cluster $CLUSTER_ID is down"
