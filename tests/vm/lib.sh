# Shared by tests/vm/image and tests/vm/run (sourced; not executable).
# shellcheck shell=bash

CACHE=${SPAWND_VM_CACHE:-/var/cache/spawnd-vm}
mkdir -p "$CACHE"

log() { printf 'vm: %s\n' "$*" >&2; }
die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }

need_host_tools() {
    local pkgs=()
    command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
    command -v debootstrap >/dev/null || pkgs+=(debootstrap)
    command -v mkfs.ext4 >/dev/null || pkgs+=(e2fsprogs)
    command -v qemu-img >/dev/null || pkgs+=(qemu-utils)
    if ((${#pkgs[@]})); then
        [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: install them (apt-get install --no-install-recommends ${pkgs[*]})"
        log "installing ${pkgs[*]} (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
    command -v npm >/dev/null || die "npm is missing (configurable-http-proxy is installed into the image with it)"
}

# The Debian archive this machine's apt uses (SPAWND_VM_MIRROR overrides it).
debian_mirror() {
    if [ -n "${SPAWND_VM_MIRROR:-}" ]; then
        echo "$SPAWND_VM_MIRROR"
        return
    fi
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -- '-security' | head -1 || true)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' \
        | grep -v -- '-security' | head -1 || true)
    [ -n "$uri" ] || die "cannot tell which Debian archive apt uses: set SPAWND_VM_MIRROR"
    echo "$uri"
}

# KVM where it really works (nested KVM may exist and hang or abort), TCG otherwise. The probe
# boots the image's kernel with no disk: under working KVM it prints its banner within seconds.
# The answer is kept per host boot. SPAWND_VM_ACCEL=tcg|kvm forces one.
ACCEL_ARGS=()
choose_accel() { # choose_accel IMAGE_DIR
    local want=${SPAWND_VM_ACCEL:-} stamp="$CACHE/accel.$(cat /proc/sys/kernel/random/boot_id)"
    if [ -z "$want" ] && [ -f "$stamp" ]; then want=$(cat "$stamp"); fi
    if [ -z "$want" ]; then
        want=tcg
        if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
            local probe; probe=$(mktemp)
            # (in a subshell that outlives it, so that qemu aborting under a broken nested KVM
            # is reported to /dev/null, not to the terminal)
            (timeout -k 2 15 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none \
                -no-reboot -nic none -serial "file:$probe" -kernel "$1/vmlinuz" \
                -append "console=ttyS0 panic=-1" >/dev/null 2>&1; exit 0) 2>/dev/null
            if grep -q 'Linux version' "$probe"; then want=kvm; fi
            rm -f "$probe"
        fi
        rm -f "$CACHE"/accel.*
        echo "$want" >"$stamp"
    fi
    case $want in
        kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
        tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
        *) die "SPAWND_VM_ACCEL must be kvm or tcg, not '$want'" ;;
    esac
    ACCEL=$want
}

# boot_vm IMAGE_DIR DISK FORMAT TIMEOUT CONSOLE_LOG "KERNEL ARGS" [QEMU ARGS...]
# Boots until the guest powers off or reboots (-no-reboot); fails after TIMEOUT seconds.
QEMU_PID=
boot_vm() {
    local img=$1 disk=$2 fmt=$3 limit=$4 console=$5 args=$6
    shift 6
    choose_accel "$img"
    : >"$console"
    qemu-system-x86_64 "${ACCEL_ARGS[@]}" -m 3072 -smp 2 -display none -vga none -no-reboot -nic none \
        -serial "file:$console" -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 $args" \
        -drive "file=$disk,format=$fmt,if=virtio,cache=unsafe" "$@" >/dev/null 2>&1 &
    QEMU_PID=$!
    local waited=0
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if ((waited >= limit)); then
            log "the VM did not power off within $limit s: stopping it (qemu pid $QEMU_PID)"
            kill "$QEMU_PID" 2>/dev/null || true
            sleep 2
            kill -9 "$QEMU_PID" 2>/dev/null || true
            wait "$QEMU_PID" 2>/dev/null || true
            QEMU_PID=
            return 124
        fi
        sleep 1
        waited=$((waited + 1))
    done
    local rc=0
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=
    return "$rc"
}
