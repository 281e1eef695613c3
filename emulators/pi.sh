#!/usr/bin/env bash
# An emulated Raspberry Pi 5 on this machine: Debian bookworm arm64 under qemu-user, every process a
# Cortex-A76 (the Pi 5's core), sshd on a free 127.0.0.1 port, a `pi` user with a throwaway key.
#
#   emulators/pi.sh up      build the root once (cached), start it, write the SSH settings
#   emulators/pi.sh down    stop sshd, unmount, unregister the binfmt entry
#   emulators/pi.sh status  running or not, and the make deploy line
#
# Needs root (mount, chroot, binfmt_misc). Missing Debian packages are installed with apt-get.
# State lives outside the clone, in PI_EMU_DIR (default ~/.cache/mobilenet-edge/pi-emu):
#   root/        the arm64 root (built once; `rm -rf` it to rebuild)
#   ssh.yaml     host, port, user, key, known_hosts: read by configs/devices/rpi5-emu.yaml
#   state/       the key pair, the fake cpuinfo, sshd's PID, what was mounted and registered
set -euo pipefail

DIR=${PI_EMU_DIR:-${MOBILENET_EDGE_CACHE:-$HOME/.cache/mobilenet-edge}/pi-emu}
ROOT=$DIR/root
STATE=$DIR/state
SUITE=bookworm
QEMU=/usr/bin/qemu-aarch64-static
BINFMT=/proc/sys/fs/binfmt_misc
ENTRY=pi-emu-aarch64
# What the root has: what a Pi needs for `make deploy` (Python 3 with venv, rsync, sshd), make and procps.
# No compiler, and pip's index unreachable (see offline): a Pi in the field has neither, and the deploy
# brings the wheels and the native runner from this machine.
PACKAGES=python3,python3-venv,openssh-server,rsync,make,procps
COMPILERS="g++ g++-12 gcc gcc-12 cpp cpp-12"  # in roots built before the line above
DEAD_INDEX=http://127.0.0.1:9/simple/  # the discard port: nothing listens, a connection is refused at once
# Cortex-A76 as on a Pi 5: MIDR 0x414fd0b1 (ARM, variant 4, part 0xd0b, revision 1).
FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
MIDR=0x00000000414fd0b1

NAME=pi-emu
WHAT="the emulated Pi"
# What both emulators share: messages, root, packages, the binfmt entry, qemu in the root, mounts, up/down/status.
source "$(dirname "$0")/lib.sh"

install_tools() {
    local need=()
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    command -v arch-test >/dev/null || need+=(arch-test)  # mmdebstrap checks with it that arm64 runs here
    [ -x "$QEMU" ] || need+=(qemu-user-static)
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    command -v ssh-keygen >/dev/null || need+=(openssh-client)
    command -v rsync >/dev/null || need+=(rsync)
    apt_install "${need[@]}"
}

build_root() {
    [ -x "$ROOT/usr/bin/python3" ] && return
    say "building the Debian $SUITE arm64 root in $ROOT (once, a few minutes)"
    rm -rf "$ROOT.tmp"
    # The interpreter execs $QEMU by path, also inside the root: put a copy there before anything runs.
    mmdebstrap --arch=arm64 --variant=apt --include="$PACKAGES" \
        --setup-hook="mkdir -p \"\$1/usr/bin\" && cp $QEMU \"\$1$QEMU\"" \
        "$SUITE" "$ROOT.tmp" >"$STATE/mmdebstrap.log" 2>&1 \
        || die "building the root failed: see $STATE/mmdebstrap.log"
    mv "$ROOT.tmp" "$ROOT"
}

# A Pi in the field: no compiler, and no package index. The root shares this machine's network (qemu-user
# emulates a CPU, not a network), so pip is pointed at a closed local port for every user: a deploy that
# reached for an index would fail. Roots built with a compiler lose it once.
offline() {
    local installed=()
    for package in $COMPILERS; do
        grep -qx "Package: $package" "$ROOT/var/lib/dpkg/status" && installed+=("$package")
    done
    if [ ${#installed[@]} -gt 0 ]; then
        say "removing the compiler from the root (${installed[*]}): a Pi in the field has none"
        chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${installed[@]}" >/dev/null 2>&1 \
            || die "could not remove ${installed[*]} from the root: rm -rf $ROOT and run again"
    fi
    printf '[global]\nindex-url = %s\nretries = 0\ntimeout = 5\n' "$DEAD_INDEX" > "$ROOT/etc/pip.conf"
}

fake_cpu() {
    local cores=$1 i
    : > "$STATE/cpuinfo"
    for ((i = 0; i < cores; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' \
            "$i" "$FEATURES" >> "$STATE/cpuinfo"
    done
    printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0 (emulated)\n' >> "$STATE/cpuinfo"
    # The root's /sys is not sysfs: a plain tree with what cpuinfo and XNNPACK read.
    local cpu=$ROOT/sys/devices/system/cpu
    rm -rf "$cpu"
    mkdir -p "$cpu"
    for f in possible present online; do echo "0-$((cores - 1))" > "$cpu/$f"; done
    for ((i = 0; i < cores; i++)); do
        mkdir -p "$cpu/cpu$i/regs/identification"
        echo "$MIDR" > "$cpu/cpu$i/regs/identification/midr_el1"
    done
}

mount_root() {
    mount_once "$ROOT/proc" -t proc proc
    mount_once "$ROOT/proc/cpuinfo" --bind "$STATE/cpuinfo"
    mount_once "$ROOT/dev" --bind /dev
    mount_once "$ROOT/dev/pts" --bind /dev/pts
}

add_user() {
    [ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C pi-emu -f "$STATE/id_ed25519"
    chroot "$ROOT" id pi >/dev/null 2>&1 || chroot "$ROOT" useradd -m -s /bin/bash pi
    install -d -m 700 "$ROOT/home/pi/.ssh"
    install -m 600 "$STATE/id_ed25519.pub" "$ROOT/home/pi/.ssh/authorized_keys"
    chroot "$ROOT" chown -R pi:pi /home/pi/.ssh
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
    [ -f "$STATE/sshd.pid" ] && kill -0 "$(cat "$STATE/sshd.pid")" 2>/dev/null
}

start_sshd() {
    local port pid
    port=$(free_port)
    chroot "$ROOT" ssh-keygen -A >/dev/null
    mkdir -p "$ROOT/run/sshd"
    chroot "$ROOT" /usr/sbin/sshd -D -e -p "$port" -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no \
        >"$STATE/sshd.log" 2>&1 &
    pid=$!
    echo "$pid" > "$STATE/sshd.pid"
    rm -f "$STATE/known_hosts"
    for _ in $(seq 120); do
        if ssh-keyscan -p "$port" 127.0.0.1 2>/dev/null | grep -q ssh-ed25519; then
            ssh-keyscan -p "$port" -t ed25519 127.0.0.1 2>/dev/null | sed "s/^127.0.0.1/[127.0.0.1]:$port/" > "$STATE/known_hosts"
            break
        fi
        kill -0 "$pid" 2>/dev/null || die "sshd did not start: see $STATE/sshd.log"
        sleep 0.5
    done
    [ -s "$STATE/known_hosts" ] || die "sshd did not answer on 127.0.0.1:$port within 60 s: see $STATE/sshd.log"
    printf 'host: 127.0.0.1\nport: %s\nuser: pi\nkey: %s\nknown_hosts: %s\n' \
        "$port" "$STATE/id_ed25519" "$STATE/known_hosts" > "$DIR/ssh.yaml.tmp"
    mv "$DIR/ssh.yaml.tmp" "$DIR/ssh.yaml"
}

up() {
    already_up && return
    prepare_root
    offline
    fake_cpu "$(nproc)"
    mount_root
    add_user
    start_sshd
    say "up: Debian $SUITE arm64, Cortex-A76 x $(nproc) under qemu, no compiler, pip index $DEAD_INDEX, sshd on 127.0.0.1:$(sed -n 's/^port: //p' "$DIR/ssh.yaml")"
    echo "now: make deploy DEVICE=rpi5-emu    (stop it with: make pi-emu-down)"
}

down() {
    need_root
    mkdir -p "$STATE"
    stop_daemon "$STATE/sshd.pid"
    rm -f "$STATE/sshd.pid" "$DIR/ssh.yaml"
    release_root
}

sshd_address() { echo "sshd on 127.0.0.1:$(sed -n 's/^port: //p' "$DIR/ssh.yaml")"; }
status() { show_status pi-emu sshd_address "$STATE/sshd.pid" rpi5-emu; }

emulator_main "$@"
