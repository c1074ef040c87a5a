#!/bin/busybox sh
# /init of the harness's default guests (a Debian kernel + a busybox initramfs).
#
# The harness drives this guest through its serial console, so everything here serves
# that: a quiet console, the device drivers loaded, one marker line that says "booted",
# then a root shell whose prompt the harness waits for. No `set -e`: a step that fails
# (a missing device, a module that does not load) must not cost the harness its shell.

# Only /bin/busybox exists until this line; the applet links make the rest callable.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

mkdir -p /proc /sys /dev /tmp /run /root /etc /var
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

# Keep kernel messages off the console before anything noisy happens (module loading
# prints): they interleave with command output and break the harness's markers and
# prompt matching. `harness.loglevel=N` on the kernel command line overrides it for
# debugging. The dot makes the kernel treat it as a module parameter, so it reaches us
# only through /proc/cmdline, never as an argument or environment variable.
loglevel=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        harness.loglevel=*) loglevel="${arg#harness.loglevel=}" ;;
    esac
done
dmesg -n "$loglevel"

# The kernel does not mount devtmpfs by itself when it boots from an initramfs.
# /dev/console already exists in the archive, so init had a console before this.
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
ln -sfn /run /var/run

# Nothing loads modules for us (no udev), so load the device drivers the image builder
# listed, in its order. A device that is absent is not an error: the driver just binds to
# nothing. Failures go to a file the harness can read instead of the console.
: >/run/modprobe.log
if [ -f /etc/harness/modules-load ]; then
    while read -r module; do
        case "$module" in '' | '#'*) continue ;; esac
        modprobe "$module" 2>>/run/modprobe.log ||
            echo "modprobe $module failed: exit $?" >>/run/modprobe.log
    done </etc/harness/modules-load
fi

ip link set lo up

# Power button: x86 ACPI reports it through the ACPI button driver and arm64 QEMU virt
# through gpio-keys; with evdev loaded both become KEY_POWER on /dev/input/event*, which
# busybox acpid maps to PWRF/00000080 and runs from /etc/acpi. `poweroff` (not -f)
# asks init for an orderly shutdown, the same path a person typing poweroff takes.
# acpid opens the event devices once at start (and exits when there is no event0), so it
# must start after the drivers above have created them.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\nexec poweroff\n' >/etc/acpi/PWRF/00000080
chmod 0755 /etc/acpi/PWRF/00000080
if [ -e /dev/input/event0 ]; then
    acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid
else
    echo "no /dev/input/event0: no power button device, acpid not started" >/run/acpid.log
fi

# Login shells read this; busybox init passes TERM=vt102 for a serial console, and the
# harness wants no escape sequences it would have to filter.
cat >/etc/profile <<'EOF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root
export TERM=dumb
export PS1='harness# '
cd /root
EOF

# busybox init, not a `while :; do setsid cttyhack sh -l; done` loop in this script: a
# shell as PID 1 runs traps only after its foreground child exits, so `poweroff`,
# `reboot` (signals to PID 1) and the acpid handler would do nothing while the console
# shell runs; and starting the shell in the background instead would leave SIGINT
# ignored in it, so Ctrl-C could never interrupt a hung command. busybox init handles
# SIGUSR2/SIGTERM/SIGUSR1 (poweroff/reboot/halt), resets signals for its children, and
# its respawn entry is that loop. cttyhack opens the real console tty (ttyS0, ttyAMA0,
# hvc0) as the controlling terminal, which /dev/console cannot be: job control needs it.
cat >/etc/inittab <<'EOF'
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
EOF

read -r boot_id </proc/sys/kernel/random/boot_id
read -r uptime _ </proc/uptime
echo "HARNESS-BOOT-OK boot_id=$boot_id uptime=$uptime"

exec /bin/busybox init
