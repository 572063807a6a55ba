#!/bin/bash
# PID 1 of the test VM once the host's root is mounted (tools/vm/init): lay out the machine
# as systemd does on a pure cgroup v2 distribution, run the command the host wrote in
# /vm-out/command, leave its exit status in /vm-out/rc, and power off.
# Nothing here mounts tracefs: contend must do that itself, as on a fresh machine.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /run afresh (the host's runtime state is not the VM's); /tmp stays the overlay's: the
# project may be a clone under the host's /tmp, and writes land in the tmpfs upper anyway.
mount -t tmpfs tmpfs /run
# systemd's cgroup layout: cgroup2 alone at /sys/fs/cgroup, controllers enabled from the
# root down to the slices, processes only in leaves (the no-internal-process rule).
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
root=/sys/fs/cgroup
echo "+cpu +cpuset +io +memory +pids" >"$root/cgroup.subtree_control"
mkdir -p "$root/init.scope" "$root/system.slice" "$root/user.slice/user-0.slice/session-1.scope"
echo "+cpu +io +memory +pids" >"$root/system.slice/cgroup.subtree_control"
echo "+cpu +io +memory +pids" >"$root/user.slice/cgroup.subtree_control"
echo "+cpu +io +memory +pids" >"$root/user.slice/user-0.slice/cgroup.subtree_control"
echo $$ >"$root/user.slice/user-0.slice/session-1.scope/cgroup.procs"
ip link set lo up 2>/dev/null
hostname contend-vm
echo "vm: $(uname -r), cgroup: $(stat -fc %T /sys/fs/cgroup), controllers: $(cat $root/cgroup.controllers)"
# podman's store on a tmpfs (an overlay store cannot sit on the overlay root), with the
# images the host saved for this run.
mount -t tmpfs tmpfs /var/lib/containers
if [ -r /vm-out/images ]; then
  started=$(date +%s)
  podman load -q -i "$(cat /vm-out/images)" >/dev/null || echo "vm: podman load failed"
  echo "vm: podman images loaded in $(($(date +%s) - started)) s"
fi
rc=1
if [ -r /vm-out/command ]; then
  (cd "$(cat /vm-out/cwd)" && exec bash /vm-out/command)
  rc=$?
fi
echo "$rc" >/vm-out/rc
sync
echo o >/proc/sysrq-trigger
while :; do :; done
