# Sourced by emulators/pi.sh and emulators/android.sh: what both emulators do alike, and their one command line
# (up|down|status, each script defining the three). A binfmt_misc entry,
# named $ENTRY, under which every aarch64 ELF runs in qemu-user as a Cortex-A76 (each emulator registers its
# own, so stopping one leaves the other running), qemu inside the root, mounts recorded as they are made,
# and ending what still runs in the root. Needs NAME, WHAT, QEMU, BINFMT, STATE, ROOT and ENTRY set, and root.
# What was changed for all of them (Debian's entry turned off, binfmt_misc mounted) is recorded in one shared
# place and undone by the last one down.
SHARED=${EMU_SHARED_DIR:-${MOBILENET_EDGE_CACHE:-$HOME/.cache/mobilenet-edge}}

# Messages name the emulator ($NAME, e.g. pi-emu; $WHAT, e.g. "the emulated Pi"), errors end the script.
die() { echo "error: $*" >&2; exit 1; }
say() { echo "$NAME: $*" >&2; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$WHAT needs root (mount, chroot, binfmt_misc): run it with sudo"
}

# The Debian packages named (none: nothing to do), with apt-get.
apt_install() {
    [ $# -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "install $* (Debian package names) and run again"
    say "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# binfmt_misc entry whose interpreter runs qemu as a Cortex-A76: qemu's default CPU model gives
# silently wrong int8 results, and a fake cpuinfo naming another core ends in SIGILL.
register_binfmt() {
    mkdir -p "$SHARED"
    mountpoint -q "$BINFMT" || { mount -t binfmt_misc binfmt_misc "$BINFMT"; touch "$SHARED/binfmt-mounted"; }
    local wrapper=$STATE/qemu-a76
    cat > "$STATE/qemu-a76.c" <<EOF
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* binfmt_misc flags P and F: argv = [this, path of the binary, its argv[0], its arguments...]. */
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "qemu-a76: started by binfmt_misc only\n"); return 127; }
    char **args = calloc(argc + 6, sizeof *args);
    int n = 0;
    args[n++] = "$QEMU"; args[n++] = "-cpu"; args[n++] = "cortex-a76"; args[n++] = "-0"; args[n++] = argv[2];
    args[n++] = argv[1];
    for (int i = 3; i < argc; i++) args[n++] = argv[i];
    execv("$QEMU", args);
    perror("$QEMU");
    return 127;
}
EOF
    cc -static -O2 -o "$wrapper" "$STATE/qemu-a76.c"
    # Debian's own qemu-aarch64 entry would compete for the same binaries: off while we are up.
    if [ -f "$BINFMT/qemu-aarch64" ] && head -1 "$BINFMT/qemu-aarch64" | grep -q enabled; then
        echo 0 > "$BINFMT/qemu-aarch64"
        touch "$SHARED/debian-entry-disabled"
    fi
    [ -f "$BINFMT/$ENTRY" ] && echo -1 > "$BINFMT/$ENTRY"
    local magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    echo ":$ENTRY:M::$magic:$mask:$wrapper:PF" > "$BINFMT/register"
}

# Debian's entry comes back, and binfmt_misc is unmounted, only when no other emulator's entry is left.
unregister_binfmt() {
    [ -f "$BINFMT/$ENTRY" ] && echo -1 > "$BINFMT/$ENTRY"
    local others
    others=$(find "$BINFMT" -maxdepth 1 -name '*-emu-aarch64' 2>/dev/null | head -1)
    [ -n "$others" ] && return 0
    if [ -f "$SHARED/debian-entry-disabled" ]; then
        [ -f "$BINFMT/qemu-aarch64" ] && echo 1 > "$BINFMT/qemu-aarch64"
        rm -f "$SHARED/debian-entry-disabled"
    fi
    if [ -f "$SHARED/binfmt-mounted" ]; then
        umount "$BINFMT" 2>/dev/null || true
        rm -f "$SHARED/binfmt-mounted"
    fi
}

# The interpreter execs $QEMU by path inside the root too (a static x86 program, it needs no C library there).
install_qemu() {
    cmp -s "$QEMU" "$ROOT$QEMU" 2>/dev/null || install -D -m 755 "$QEMU" "$ROOT$QEMU"
}

mounted() { findmnt -n "$1" >/dev/null 2>&1; }

# Each mount is recorded as it is made, so `down` undoes exactly these, even after a failed `up`.
mount_once() {
    local target=$1; shift
    mounted "$target" && return
    mount "$@" "$target"
    echo "$target" >> "$STATE/mounts"
}

unmount_root() {
    [ -f "$STATE/mounts" ] || return 0
    tac "$STATE/mounts" | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    rm -f "$STATE/mounts"
}

# Processes left by interrupted deploys still run inside the root: end them before unmounting.
end_root_processes() {
    local pids
    pids=$(for p in /proc/[0-9]*; do [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && basename "$p"; done || true)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
}

# up's start: as root, with its state folder; true (and its status shown) when it is running already.
already_up() {
    need_root
    mkdir -p "$STATE"
    running || return 1
    say "already running"
    status
}

# The first steps of every emulator's up: its tools, qemu's binfmt handler, its root file system
# (build_root, the emulator's own) and qemu inside that root.
prepare_root() {
    install_tools
    register_binfmt
    build_root
    install_qemu
}

# The emulator's daemon (sshd, adbd), whose PID is in $1, stopped: TERM, up to 5 s, then KILL.
stop_daemon() {
    local pidfile=$1
    running || return 0
    kill "$(cat "$pidfile")"
    for _ in $(seq 20); do running || break; sleep 0.25; done
    running && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
}

# What is left once the daemon is stopped: the root's processes, its mounts, the binfmt entry.
release_root() {
    end_root_processes
    unmount_root
    unregister_binfmt
    say "down"
}

# status: NAME (pi-emu), a function printing what it serves, the daemon's PID file, the profile that deploys to it.
show_status() {
    local name=$1 serves=$2 pidfile=$3 profile=$4
    if running; then
        echo "$name: running, $($serves) (PID $(cat "$pidfile"))"
        echo "now: make deploy DEVICE=$profile"
    else
        echo "$name: not running (make $name starts it)"
        return 3
    fi
}

# The command line of both emulators: up, down or status, as the script defines them.
emulator_main() {
    case "${1:-}" in
        up) up ;;
        down) down ;;
        status) status ;;
        *) die "usage: $0 up|down|status" ;;
    esac
}
