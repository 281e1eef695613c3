#!/usr/bin/env bash
# An emulated Android phone on this machine, reached with the real adb client: an aarch64 root with no C
# library at all (as on Android, whose bionic our glibc-built runner cannot use), a static busybox as
# /system/bin/sh, a getprop, /data/local/tmp, a phone's CPUs (4 Cortex-A76 + 4 Cortex-A55, with their MIDRs
# and max frequencies) and thermal zones; every process a Cortex-A76 under qemu-user; and an adbd
# (emulators/adbd.py) on a free 127.0.0.1 port that `adb connect` reaches.
#
#   emulators/android.sh up      build the root once (cached), start adbd, adb connect, write adb.yaml
#   emulators/android.sh down    adb disconnect, stop adbd, unmount, unregister the binfmt entry
#   emulators/android.sh status  running or not, and the make deploy line
#
# Needs root (mount, chroot, binfmt_misc). Missing Debian packages are installed with apt-get.
# State lives outside the clone, in ANDROID_EMU_DIR (default ~/.cache/mobilenet-edge/android-emu):
#   root/        the phone's root (built once; `rm -rf` it to rebuild); root/system/build.prop holds getprop's answers
#   adb.yaml     the serial (127.0.0.1:PORT): read by configs/devices/android-emu.yaml
#   state/       adbd's PID, port and log, the fake cpuinfo, what was mounted and registered
set -euo pipefail

DIR=${ANDROID_EMU_DIR:-${MOBILENET_EDGE_CACHE:-$HOME/.cache/mobilenet-edge}/android-emu}
ROOT=$DIR/root
STATE=$DIR/state
QEMU=/usr/bin/qemu-aarch64-static
BINFMT=/proc/sys/fs/binfmt_misc
ENTRY=android-emu-aarch64
PROJECT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$PROJECT/.venv/bin/python}
FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
# (part, variant, revision, MIDR, max kHz) of the big and the little cores, as on a Snapdragon/Tensor-class phone.
BIG=(0xd0b 0x4 1 0x00000000414fd0b1 2400000)
LITTLE=(0xd05 0x2 0 0x00000000412fd050 1800000)
CORES=8  # 4 big, 4 little

NAME=android-emu
WHAT="the emulated phone"
source "$(dirname "$0")/lib.sh"

install_tools() {
    local need=()
    [ -x "$QEMU" ] || need+=(qemu-user-static)
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    command -v adb >/dev/null || need+=(adb)
    apt_install "${need[@]}"
    [ -x "$PYTHON" ] || die "no Python at $PYTHON for adbd: run make setup first"
}

# Debian's arm64 busybox-static: the phone's shell and tools (Android's are toybox; the commands deploy uses
# are in both).
fetch_busybox() {
    local deb
    deb=$(ls "$STATE"/busybox-static_*_arm64.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        say "fetching Debian's arm64 busybox-static"
        dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
        (cd "$STATE" && apt-get download -qq busybox-static:arm64) || die "cannot download busybox-static:arm64"
        deb=$(ls "$STATE"/busybox-static_*_arm64.deb | head -1)
    fi
    rm -rf "$STATE/busybox"
    dpkg-deb -x "$deb" "$STATE/busybox"
}

write_build_prop() {
    cat > "$ROOT/system/build.prop" <<EOF
ro.product.cpu.abi=arm64-v8a
ro.product.cpu.abilist=arm64-v8a,armeabi-v7a,armeabi
ro.product.model=emu-phone
ro.product.name=emu_phone
ro.product.device=emu_phone
ro.product.manufacturer=mobilenet-edge
ro.build.version.release=14
ro.build.version.sdk=34
ro.kernel.qemu=1
EOF
}

build_root() {
    [ -x "$ROOT/system/bin/busybox" ] && return
    say "building the phone's root in $ROOT"
    fetch_busybox
    rm -rf "$ROOT.tmp"
    mkdir -p "$ROOT.tmp/system/bin" "$ROOT.tmp/data/local/tmp" "$ROOT.tmp/proc" "$ROOT.tmp/dev" \
        "$ROOT.tmp/sys" "$ROOT.tmp/usr/bin"
    chmod 1777 "$ROOT.tmp/data/local/tmp"
    install -m 755 "$STATE/busybox/bin/busybox" "$ROOT.tmp/system/bin/busybox"
    ln -s busybox "$ROOT.tmp/system/bin/sh"
    # getprop answers from build.prop, as Android's does from its property files.
    cat > "$ROOT.tmp/system/bin/getprop" <<'EOF'
#!/system/bin/sh
[ -n "$1" ] || { sed 's/^\([^=]*\)=\(.*\)$/[\1]: [\2]/' /system/build.prop; exit 0; }
sed -n "s/^$1=//p" /system/build.prop
EOF
    chmod 755 "$ROOT.tmp/system/bin/getprop"
    mv "$ROOT.tmp" "$ROOT"
    write_build_prop
    install_qemu
    chroot "$ROOT" /system/bin/busybox --install -s /system/bin
}

fake_cpu() {
    local i core
    : > "$STATE/cpuinfo"
    local cpu=$ROOT/sys/devices/system/cpu
    rm -rf "$cpu" "$ROOT/sys/class"
    mkdir -p "$cpu"
    for f in possible present online; do echo "0-$((CORES - 1))" > "$cpu/$f"; done
    for ((i = 0; i < CORES; i++)); do
        if [ "$i" -lt $((CORES / 2)) ]; then core=("${BIG[@]}"); else core=("${LITTLE[@]}"); fi
        printf 'processor\t: %d\nBogoMIPS\t: 38.40\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$FEATURES" "${core[1]}" "${core[0]}" "${core[2]}" >> "$STATE/cpuinfo"
        mkdir -p "$cpu/cpu$i/regs/identification" "$cpu/cpu$i/cpufreq"
        echo "${core[3]}" > "$cpu/cpu$i/regs/identification/midr_el1"
        echo "${core[4]}" > "$cpu/cpu$i/cpufreq/cpuinfo_max_freq"
    done
    printf 'Hardware\t: mobilenet-edge emulated phone\n' >> "$STATE/cpuinfo"
    local zone
    for zone in 0 1; do
        mkdir -p "$ROOT/sys/class/thermal/thermal_zone$zone"
        echo "$([ "$zone" -eq 0 ] && echo cpu-big || echo cpu-little)" > "$ROOT/sys/class/thermal/thermal_zone$zone/type"
        echo $((36000 + zone * 1500)) > "$ROOT/sys/class/thermal/thermal_zone$zone/temp"
    done
}

mount_root() {
    mount_once "$ROOT/proc" -t proc proc
    mount_once "$ROOT/proc/cpuinfo" --bind "$STATE/cpuinfo"
    mount_once "$ROOT/dev" --bind /dev
}

running() {
    [ -f "$STATE/adbd.pid" ] && kill -0 "$(cat "$STATE/adbd.pid")" 2>/dev/null
}

start_adbd() {
    rm -f "$STATE/adbd.port"
    (cd "$PROJECT" && exec "$PYTHON" -m emulators.adbd "$ROOT" --port-file "$STATE/adbd.port") \
        >"$STATE/adbd.log" 2>&1 &
    echo $! > "$STATE/adbd.pid"
    for _ in $(seq 100); do
        [ -s "$STATE/adbd.port" ] && break
        running || die "adbd did not start: see $STATE/adbd.log"
        sleep 0.1
    done
    [ -s "$STATE/adbd.port" ] || die "adbd did not listen within 10 s: see $STATE/adbd.log"
    local serial="127.0.0.1:$(cat "$STATE/adbd.port")"
    adb start-server >/dev/null 2>&1 || die "adb start-server failed"
    adb connect "$serial" >/dev/null || die "adb connect $serial failed"
    for _ in $(seq 100); do
        [ "$(adb -s "$serial" get-state 2>/dev/null)" = device ] && break
        sleep 0.1
    done
    [ "$(adb -s "$serial" get-state 2>/dev/null)" = device ] || die "adb does not see $serial as a device: see $STATE/adbd.log"
    printf 'serial: "%s"\n' "$serial" > "$DIR/adb.yaml.tmp"
    mv "$DIR/adb.yaml.tmp" "$DIR/adb.yaml"
}

up() {
    already_up && return
    prepare_root
    write_build_prop
    fake_cpu
    mount_root
    chroot "$ROOT" /system/bin/sh -c 'echo ok' >/dev/null || die "the phone's shell does not run under qemu"
    start_adbd
    say "up: arm64, no C library, ${CORES} cores (4 Cortex-A76 + 4 Cortex-A55) as Cortex-A76s under qemu, adbd on $(sed -n 's/^serial: //p' "$DIR/adb.yaml")"
    echo "now: make deploy DEVICE=android-emu    (stop it with: make android-emu-down)"
}

down() {
    need_root
    mkdir -p "$STATE"
    if [ -f "$STATE/adbd.port" ] && command -v adb >/dev/null; then
        adb disconnect "127.0.0.1:$(cat "$STATE/adbd.port")" >/dev/null 2>&1 || true
    fi
    stop_daemon "$STATE/adbd.pid"
    rm -f "$STATE/adbd.pid" "$STATE/adbd.port" "$DIR/adb.yaml"
    release_root
}

adbd_address() { echo "adbd on $(sed -n 's/^serial: //p' "$DIR/adb.yaml")"; }
status() { show_status android-emu adbd_address "$STATE/adbd.pid" android-emu; }

emulator_main "$@"
