#!/usr/bin/env bash
# Installs, upgrades, rolls back or removes the Loopline edge agent as a systemd service on a
# Raspberry Pi (or any systemd Linux board). Run it as root on the board, from a checkout or
# from a folder holding this script, loopline-agent.service, agent.toml, agent.env and the
# loopline-agent binary. `install.sh --help` lists the options; docs/pi.md is the procedure.
#
# Invariants:
# - An existing /etc/loopline/agent.toml or agent.env is never overwritten without
#   --force-config, and then the replaced file is kept as agent.toml.old / agent.env.old.
# - A broker password goes to agent.env only (mode 0640, root:loopline-agent): never to
#   agent.toml, a child's command line or this script's output.
# - A configuration written from flags passes the agent's own --check-config before anything
#   is installed, whenever the binary can run on this machine.
# - Under --root or --destdir nothing outside that folder changes.
# - Rerunning with the same arguments changes nothing and says "unchanged"; the service is
#   restarted only when the binary, the unit or the configuration changed.
# Exit status: 0 done, 1 failed (nothing half-done is left behind by a refused step), 2 bad
# flags (the message names the flag).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=install.sh
user=loopline-agent
unit=loopline-agent.service
# The NPU profiles the agent accepts (loopline_npusim::Profile), in its order.
profiles=(hailo-8l hailo-8 rk3588 dx-m1)
known_profiles=$(printf '%s, ' "${profiles[@]}")
known_profiles=${known_profiles%, }

usage() {
    cat <<'EOF'
Usage:
  install.sh [--binary FILE] [CONFIG FLAGS] [--force-config] [--no-start] [OPTIONS]
  install.sh --upgrade [--binary FILE] [OPTIONS]
  install.sh --rollback [OPTIONS]
  install.sh --uninstall [--purge] [OPTIONS]

Install (the default) creates the loopline-agent system user, installs the binary, the
systemd unit and /etc/loopline, then enables and starts the service. Running it again is
safe: what did not change is reported "unchanged", and the service restarts only when the
binary, the unit or the configuration changed.

Config flags write /etc/loopline/agent.toml (and agent.env for the broker credentials) on
the first install; the result is checked with `loopline-agent --check-config` first. Without
any of them the example agent.toml and agent.env are copied, to be edited.
  --broker URL            mqtt://host[:port] or mqtts://host[:port], without credentials
  --site NAME             site identity segment ([A-Za-z0-9_.-], 1 to 64 bytes)
  --line NAME             production line identity segment (same rules)
  --device NAME[,NAME]    a device this agent publishes for; repeat it or give a comma list
  --npu-profile NAME      the NPU: hailo-8l (default), hailo-8, rk3588 or dx-m1
  --model-public-key HEX  Ed25519 key (64 hex digits) that model releases must be signed with
  --tls-ca-file FILE      CA bundle (PEM) of an mqtts:// broker; copied to
                          /etc/loopline/tls/ca.pem
  --username NAME         broker username; the broker URL with the credentials goes to
                          /etc/loopline/agent.env as LOOPLINE_BROKER (mode 0640)
  --password-file FILE    the broker password: the first line of FILE ('-': standard input)
  --force-config          replace existing configuration files with the ones written from
                          the flags (the old ones are kept as *.old); without it an
                          existing agent.toml or agent.env is never overwritten

Other actions:
  --upgrade     replace the installed binary, keeping the one it replaces as
                loopline-agent.previous; keeps the configuration and the spool; restarts the
                service only if it is running. Refuses when nothing is installed.
  --rollback    put loopline-agent.previous back in place (the replaced binary becomes
                loopline-agent.previous); restarts the service only if it is running
  --uninstall   stop and disable the service, remove the binaries and the unit; keeps
                /etc/loopline and the spool in /var/lib/loopline-agent
  --purge       with --uninstall: also remove those, and the loopline-agent user and group

Options:
  --binary FILE   the agent binary (default: ./loopline-agent beside this script, else the
                  cross-build output target/pi/aarch64-unknown-linux-gnu/edge/loopline-agent)
  --prefix DIR    install the binary as DIR/bin/loopline-agent (default /usr/local)
  --root DIR      install into DIR as if it were the system root: DIR/etc/passwd, group,
                  shadow and gshadow must exist; the user is created there (useradd --root),
                  files get its ids there, the unit is enabled with systemctl --root=DIR and
                  nothing is started. Needs root privileges.
  --destdir DIR   stage the files under DIR (also $DESTDIR) for a package: no user, no
                  owners, no systemctl
  --dry-run       print every action instead of doing it
  --no-start      install and enable, but do not start or restart the service
  -h, --help      this text

Exit status: 0 done, 1 failed, 2 bad flags.
EOF
}

bad_flag() { printf '%s: %s (see --help)\n' "$me" "$*" >&2; exit 2; }
fail() { printf '%s: %s\n' "$me" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$me" "$*"; }
# Refuses option $1 without a value, or with another option where its value should be.
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ] || [[ "$2" == --* ]]; then bad_flag "$1 needs a value"; fi
}

# ---------------------------------------------------------------- flags
prefix=/usr/local
destdir=${DESTDIR:-}
root=""
binary=""
dry_run=0
start=1
action=install
purge=0
force_config=0
broker="" site="" line="" npu_profile="" model_key="" tls_ca="" username="" password_file=""
devices=()
config_flags=()
set_action() {
    if [ "$action" != install ]; then bad_flag "$1 cannot be combined with --$action"; fi
    action=${1#--}
}
while [ $# -gt 0 ]; do
    # --flag=value is --flag value.
    case "$1" in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac
    case "$1" in
        --binary) need_value "$@"; binary=$2; shift 2 ;;
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --destdir) need_value "$@"; destdir=$2; shift 2 ;;
        --root) need_value "$@"; root=$2; shift 2 ;;
        --broker) need_value "$@"; broker=$2; config_flags+=("$1"); shift 2 ;;
        --site) need_value "$@"; site=$2; config_flags+=("$1"); shift 2 ;;
        --line) need_value "$@"; line=$2; config_flags+=("$1"); shift 2 ;;
        --device|--devices)
            need_value "$@"
            IFS=, read -r -a more <<<"$2"
            devices+=("${more[@]}")
            config_flags+=("$1"); shift 2 ;;
        --npu-profile) need_value "$@"; npu_profile=$2; config_flags+=("$1"); shift 2 ;;
        --model-public-key) need_value "$@"; model_key=$2; config_flags+=("$1"); shift 2 ;;
        --tls-ca-file) need_value "$@"; tls_ca=$2; config_flags+=("$1"); shift 2 ;;
        --username) need_value "$@"; username=$2; config_flags+=("$1"); shift 2 ;;
        --password-file)
            if [ "${2:-}" != - ]; then need_value "$@"; fi
            password_file=$2; config_flags+=("$1"); shift 2 ;;
        --force-config) force_config=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --no-start) start=0; shift ;;
        --upgrade|--rollback|--uninstall) set_action "$1"; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) bad_flag "unknown argument $1" ;;
    esac
done

case "$prefix" in /*) ;; *) bad_flag "--prefix must be an absolute path: $prefix" ;; esac
if [ -n "$root" ]; then
    case "$root" in /*) ;; *) bad_flag "--root must be an absolute path: $root" ;; esac
    [ -z "$destdir" ] || bad_flag "--root and --destdir exclude each other (--destdir stages for a package, --root installs)"
    root=${root%/}
    [ -n "$root" ] || bad_flag "--root / is the running system: leave --root out"
fi
if [ -n "$destdir" ]; then
    case "$destdir" in /*) ;; *) destdir="$(pwd)/$destdir" ;; esac
    destdir=${destdir%/}
fi
if [ "$purge" = 1 ] && [ "$action" != uninstall ]; then bad_flag "--purge goes with --uninstall"; fi
if [ "${#config_flags[@]}" -gt 0 ] && [ "$action" != install ]; then
    bad_flag "${config_flags[0]} writes the configuration of a first install; --$action keeps the configuration"
fi
if [ "$force_config" = 1 ] && [ "${#config_flags[@]}" = 0 ]; then
    bad_flag "--force-config replaces the configuration with one written from config flags, and none was given"
fi

# Checks an identity segment the way the agent does (site, line, device).
check_segment() {
    local flag=$1 value=$2
    if [ -z "$value" ] || [ "${#value}" -gt 64 ] || [[ "$value" == .* ]] \
        || ! [[ "$value" =~ ^[A-Za-z0-9_.-]+$ ]]; then
        bad_flag "$flag $value: 1 to 64 of ASCII letters, digits, '_', '.' and '-', not starting with '.'"
    fi
}
[ -z "$site" ] || check_segment --site "$site"
[ -z "$line" ] || check_segment --line "$line"
declare -A seen=()
for device in ${devices[@]+"${devices[@]}"}; do
    check_segment --device "$device"
    [ -z "${seen[$device]:-}" ] || bad_flag "--device $device is given twice"
    seen[$device]=1
done
if [ -n "$npu_profile" ]; then
    npu_profile=${npu_profile,,}
    case " ${profiles[*]} " in
        *" $npu_profile "*) ;;
        *) bad_flag "--npu-profile $npu_profile is not a known NPU; valid: $known_profiles" ;;
    esac
fi
if [ -n "$model_key" ] && ! [[ "$model_key" =~ ^[0-9a-fA-F]{64}$ ]]; then
    bad_flag "--model-public-key must be 64 hex digits (an Ed25519 public key)"
fi
# The broker as agent.toml holds it (no credentials); tls=1 for mqtts://.
broker_tls=0
if [ -n "$broker" ]; then
    case "$broker" in
        *://*) scheme=${broker%%://*}; address=${broker#*://} ;;
        *) scheme=mqtt; address=$broker ;;
    esac
    address=${address%/}
    case "$scheme" in
        mqtt|tcp) ;;
        mqtts|ssl) broker_tls=1 ;;
        *) bad_flag "--broker $broker: unknown scheme $scheme:// (mqtt:// or mqtts://)" ;;
    esac
    [[ "$address" != *@* ]] \
        || bad_flag "--broker takes no credentials: give --username and --password-file, which go to agent.env"
    if [ -z "$address" ] || [[ "$address" == */* ]] || [[ "$address" =~ [[:space:]\"\\] ]]; then
        bad_flag "--broker $broker: expected mqtt://host[:port] or mqtts://host[:port]"
    fi
    broker="$scheme://$address"
fi
if [ -n "$tls_ca" ]; then
    if [ ! -f "$tls_ca" ] || [ ! -r "$tls_ca" ]; then bad_flag "--tls-ca-file $tls_ca is not a readable file"; fi
    [ "$broker_tls" = 1 ] || bad_flag "--tls-ca-file needs an mqtts:// --broker (the agent never mixes TLS keys with plain MQTT)"
fi
password=""
if [ -n "$password_file" ]; then
    [ -n "$username" ] || bad_flag "--password-file needs --username"
    if [ "$password_file" = - ]; then
        IFS= read -r password || true
    else
        if [ ! -f "$password_file" ] || [ ! -r "$password_file" ]; then
            bad_flag "--password-file $password_file is not a readable file"
        fi
        IFS= read -r password <"$password_file" || true
    fi
    password=${password%$'\r'}
    [ -n "$password" ] || bad_flag "--password-file $password_file holds no password on its first line"
fi
if [ -n "$username" ] && [ -z "$broker" ]; then bad_flag "--username needs --broker"; fi

# ---------------------------------------------------------------- where things go
# top: the folder every file path is under (empty for the running system).
if [ -n "$root" ]; then mode=root; top=$root
elif [ -n "$destdir" ]; then mode=destdir; top=$destdir
else mode=system; top=""; fi
bin_path=$prefix/bin/loopline-agent
unit_path=/etc/systemd/system/$unit
wants_path=/etc/systemd/system/multi-user.target.wants/$unit
etc=/etc/loopline
state=/var/lib/loopline-agent
did=installed
[ "$dry_run" = 1 ] && did="would install"

if [ "$mode" = root ]; then
    [ -d "$root" ] || fail "--root $root is not a directory"
    for f in passwd group shadow gshadow; do
        [ -f "$root/etc/$f" ] || fail "--root $root has no etc/$f: useradd --root needs etc/passwd, group, shadow and gshadow there"
    done
fi
if [ "$dry_run" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    case "$mode" in
        system) fail "run as root (sudo $0 ...), or use --dry-run or --destdir" ;;
        root) fail "--root needs root privileges: it creates the $user user in $root/etc/passwd and sets owners" ;;
    esac
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs a command, or prints it under --dry-run.
run() {
    if [ "$dry_run" = 1 ]; then printf 'would run:'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
# Prints a step that only makes sense on the running system, skipped under --root/--destdir.
skipped() { printf 'skipped (--%s):' "$mode"; printf ' %q' "$@"; printf '\n'; }

# The numeric id of group $user in --root's etc/group (empty if there is none).
root_gid() { awk -F: -v g="$user" '$1 == g { print $3 }' "$root/etc/group"; }
# Makes $1 (a path under $top) owned by root and the service's group, so that the agent reads
# it but cannot change it.
own() {
    case "$mode" in
        system) run chown "root:$user" "$1" ;;
        root)
            local gid
            gid=$(root_gid)
            if [ -z "$gid" ] && [ "$dry_run" = 1 ]; then gid="<gid of $user>"; fi
            [ -n "$gid" ] || fail "no group $user in $root/etc/group"
            run chown "0:$gid" "$1" ;;
        destdir) skipped chown "root:$user" "$1" ;;
    esac
}

# The CPU an ELF file is built for, in uname -m's words ("" when it is no ELF file).
elf_machine() {
    local magic machine
    magic=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
    [ "$magic" = 7f454c46 ] || return 0
    machine=$(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n')
    case "$machine" in
        3e00) echo x86_64 ;;
        b700) echo aarch64 ;;
        2800) echo arm ;;
        f300) echo riscv64 ;;
        *) echo "e_machine 0x$machine" ;;
    esac
}
# Whether binary $1 runs on this machine (a 32-bit ARM board calls itself armv7l).
runs_here() {
    local machine
    machine=$(elf_machine "$1")
    case "$(uname -m):$machine" in
        x86_64:x86_64 | aarch64:aarch64 | arm*:arm | riscv64:riscv64) return 0 ;;
        *) return 1 ;;
    esac
}

# Finds and checks the binary to install (install and upgrade).
find_binary() {
    if [ -z "$binary" ]; then
        for candidate in "$here/loopline-agent" \
            "$here/../../target/pi/aarch64-unknown-linux-gnu/edge/loopline-agent"; do
            if [ -f "$candidate" ]; then binary=$candidate; break; fi
        done
    fi
    if [ -z "$binary" ] || [ ! -f "$binary" ]; then
        fail "no agent binary${binary:+ at $binary}; build one with deploy/pi/cross-build or pass --binary FILE"
    fi
    # A binary for another architecture would only fail at start, in the journal: say it now.
    if [ "$mode" = system ] && ! runs_here "$binary"; then
        fail "$binary is not for this machine ($(uname -m)): $(elf_machine "$binary" || true)"
    fi
}

changed=0
# Copies $1 to path $2 (under $top) with mode $3 unless it already has the same content.
put() {
    local src=$1 dst=$top$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        log "unchanged: $2"
        return
    fi
    run install -D -m "$mode" "$src" "$dst"
    log "$did: $2"
    changed=1
}
# Installs the binary, keeping the one it replaces as loopline-agent.previous. The new file
# is renamed into place, so a running agent keeps its old inode.
put_binary() {
    local dst=$top$bin_path
    if [ -f "$dst" ] && cmp -s "$binary" "$dst"; then
        log "unchanged: $bin_path"
        return
    fi
    if [ -f "$dst" ]; then
        run cp -p "$dst" "$dst.previous"
        log "kept the binary it replaces as $bin_path.previous (--rollback puts it back)"
    fi
    run install -D -m 0755 "$binary" "$dst.new"
    run mv -f "$dst.new" "$dst"
    log "$did: $bin_path"
    changed=1
}
# Puts configuration file $1 at path $2 (mode 0640, root:loopline-agent). An existing file is
# kept unless it is identical or --force-config is given; $3 says where $1 came from.
put_config() {
    local src=$1 dst=$top$2 origin=$3
    if [ -e "$dst" ]; then
        if [ "$origin" = flags ] && cmp -s "$src" "$dst"; then
            log "unchanged: $2"
            return
        fi
        if [ "$origin" = example ] || [ "$force_config" = 0 ]; then
            if [ "$origin" = flags ]; then
                log "kept existing: $2 (it differs from what the flags give; --force-config replaces it)"
            else
                log "kept existing: $2"
            fi
            return
        fi
        run cp -p "$dst" "$dst.old"
        run install -m 0640 "$src" "$dst"
        own "$dst"
        log "replaced: $2 (the previous one is $2.old)"
        changed=1
        return
    fi
    run install -D -m 0640 "$src" "$dst"
    own "$dst"
    if [ "$origin" = example ]; then log "$did example: $2 (edit it)"; else log "$did: $2"; fi
    changed=1
}

# Percent-encodes everything but RFC 3986's unreserved characters, byte by byte, as the
# agent's broker URL parser expects in a username or password.
percent_encode() {
    local hex out="" byte
    hex=$(printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n')
    while [ -n "$hex" ]; do
        byte=${hex:0:2}
        hex=${hex:2}
        case "$byte" in
            3[0-9] | 4[1-9a-f] | 5[0-9a] | 6[1-9a-f] | 7[0-9a] | 2d | 2e | 5f | 7e)
                out+=$(printf '%b' "\\x$byte") ;;
            *) out+="%${byte^^}" ;;
        esac
    done
    printf '%s' "$out"
}

# ---------------------------------------------------------------- service control
have_systemctl() { command -v systemctl >/dev/null; }
# After an upgrade or rollback: reloads and restarts the service only if it is running.
restart_if_running() {
    if [ "$mode" != system ]; then
        log "not restarted (--$mode): nothing runs from $top"
        return
    fi
    if [ "$changed" = 0 ]; then
        log "nothing changed; $unit left as it is"
        return
    fi
    if ! have_systemctl; then
        log "no systemctl on this machine: restart the agent yourself"
        return
    fi
    run systemctl daemon-reload
    if systemctl is-active --quiet "$unit"; then
        run systemctl restart "$unit"
        log "restarted $unit"
    else
        log "$unit is not running; left stopped (start it with: systemctl start $unit)"
    fi
}

# ---------------------------------------------------------------- uninstall
if [ "$action" = uninstall ]; then
    case "$mode" in
        system)
            if have_systemctl; then run systemctl disable --now "$unit" || true; fi ;;
        root) run systemctl --root="$root" disable "$unit" || true ;;
        destdir) skipped systemctl disable --now "$unit" ;;
    esac
    run rm -f "$top$wants_path" "$top$unit_path" "$top$bin_path" "$top$bin_path.previous"
    if [ "$mode" = system ] && have_systemctl; then run systemctl daemon-reload; fi
    if [ "$purge" = 0 ]; then
        log "removed the agent; kept $etc and $state (--purge removes them)"
        exit 0
    fi
    run rm -rf "$top$etc" "$top$state"
    case "$mode" in
        system)
            if id "$user" >/dev/null 2>&1; then run userdel "$user"; fi
            if getent group "$user" >/dev/null; then run groupdel "$user"; fi ;;
        root)
            if grep -q "^$user:" "$root/etc/passwd"; then run userdel --root "$root" "$user"; fi
            # userdel removes the user's group only where login.defs says USERGROUPS_ENAB.
            if grep -q "^$user:" "$root/etc/group"; then run groupdel --root "$root" "$user"; fi ;;
        destdir) skipped userdel "$user" ;;
    esac
    log "removed the agent, its configuration, its spool and the $user user"
    exit 0
fi

# ---------------------------------------------------------------- rollback
if [ "$action" = rollback ]; then
    dst=$top$bin_path
    [ -f "$dst.previous" ] || fail "no $bin_path.previous under ${top:-/} to roll back to"
    [ -f "$dst" ] || fail "nothing is installed at $top$bin_path"
    run mv -f "$dst.previous" "$dst.rollback"
    run mv -f "$dst" "$dst.previous"
    run mv -f "$dst.rollback" "$dst"
    log "rolled back $bin_path to the previous binary; the one it replaced is now $bin_path.previous"
    changed=1
    restart_if_running
    exit 0
fi

if [ "$action" = upgrade ] && [ ! -f "$top$bin_path" ]; then
    fail "nothing is installed at $top$bin_path: install first (without --upgrade)"
fi
find_binary

# The unit as installed: ExecStart follows --prefix.
sed "s|^ExecStart=/usr/local/bin/loopline-agent|ExecStart=$bin_path|" \
    "$here/loopline-agent.service" >"$work/$unit"

# ---------------------------------------------------------------- upgrade
if [ "$action" = upgrade ]; then
    put_binary
    put "$work/$unit" "$unit_path" 0644
    restart_if_running
    exit 0
fi

# ---------------------------------------------------------------- install
for file in loopline-agent.service agent.toml agent.env; do
    [ -f "$here/$file" ] || fail "$here/$file is missing"
done

# The configuration written from the flags, checked by the agent before anything is installed.
broker_env=""
if [ "${#config_flags[@]}" -gt 0 ]; then
    {
        echo "# loopline-agent: /etc/loopline/agent.toml, written by deploy/pi/install.sh from its flags."
        echo "# Every key left out keeps its default (\`loopline-agent --print-config\` shows them all)."
        echo "# Check a change with: sudo -u $user loopline-agent --config $etc/agent.toml --check-config"
        echo
        if [ -n "$username" ]; then
            echo "# The username and password are in $etc/agent.env (LOOPLINE_BROKER), not here."
        fi
        echo "broker = \"${broker:-mqtt://192.168.1.10:1883}\""
        echo "site = \"${site:-site-1}\""
        echo "line = \"${line:-line-1}\""
        if [ "${#devices[@]}" -gt 0 ]; then
            printf 'devices = ['
            sep=""
            for device in "${devices[@]}"; do printf '%s"%s"' "$sep" "$device"; sep=", "; done
            printf ']\n'
        else
            echo 'devices = ["dev-1"]'
        fi
        echo
        echo "# The NPU the model runs on: $known_profiles."
        echo "npu_profile = \"${npu_profile:-hailo-8l}\""
        echo
        echo "# Logs go to the journal; \"json\" for a log shipper."
        echo 'log_format = "human"'
        if [ -n "$tls_ca" ]; then
            echo
            echo "# The CA bundle that signed the broker's certificate. When the broker authenticates"
            echo "# devices by certificate, add tls_client_cert_file and tls_client_key_file."
            echo "tls_ca_file = \"$etc/tls/ca.pem\""
        fi
        echo
        if [ -n "$model_key" ]; then
            echo "# Model releases are accepted only when signed by this Ed25519 key."
            echo "model_public_key = \"${model_key,,}\""
        else
            echo "# Model releases are accepted only when signed by this Ed25519 key (64 hex digits)."
            echo '# model_public_key = "..."'
        fi
        echo
        echo "# The spool's cap per device, and what a long outage that fills it does (defaults shown)."
        echo '# spool_max_bytes = "64 MiB"'
        echo '# spool_when_full = "block"'
    } >"$work/agent.toml"
    if [ -n "$username" ]; then
        userinfo=$(percent_encode "$username")
        if [ -n "$password" ]; then userinfo+=":$(percent_encode "$password")"; fi
        broker_env="${broker%%://*}://$userinfo@${broker#*://}"
        (
            umask 077
            {
                echo "# Environment of the loopline-agent service: $etc/agent.env (systemd EnvironmentFile),"
                echo "# written by deploy/pi/install.sh. It holds the broker password: keep it"
                echo "# root:$user, mode 0640. LOOPLINE_BROKER overrides broker in agent.toml."
                echo
                echo "LOOPLINE_BROKER=$broker_env"
            } >"$work/agent.env"
        )
    fi
    if runs_here "$binary"; then
        check=(--config "$work/agent.toml" --check-config)
        # The CA file is not in place yet: check the one given.
        if [ -n "$tls_ca" ]; then check+=(--tls-ca-file "$tls_ca"); fi
        # Only the service's own environment: the password travels in it, not in argv.
        environment=(PATH="$PATH")
        if [ -n "$broker_env" ]; then environment+=("LOOPLINE_BROKER=$broker_env"); fi
        if ! env -i "${environment[@]}" "$binary" "${check[@]}" >"$work/check.log" 2>&1; then
            sed 's/^/  /' "$work/check.log" >&2
            fail "the configuration from the flags does not pass loopline-agent --check-config; nothing was installed"
        fi
        log "the configuration from the flags passes loopline-agent --check-config"
    else
        log "skipped loopline-agent --check-config: $binary is built for $(elf_machine "$binary"), this machine is $(uname -m)"
    fi
fi

# ---------------------------------------------------------------- user
nologin=/usr/sbin/nologin
case "$mode" in
    system)
        [ -x "$nologin" ] || nologin=/sbin/nologin
        if id "$user" >/dev/null 2>&1; then
            log "user $user exists"
        else
            if ! getent group "$user" >/dev/null; then run groupadd --system "$user"; fi
            run useradd --system --gid "$user" --no-create-home --home-dir "$state" \
                --shell "$nologin" --comment "Loopline edge agent" "$user"
            log "created the system user $user"
        fi ;;
    root)
        if [ ! -e "$root$nologin" ] && [ -e "$root/sbin/nologin" ]; then nologin=/sbin/nologin; fi
        if grep -q "^$user:" "$root/etc/passwd"; then
            log "user $user exists in $root/etc/passwd"
        else
            if ! grep -q "^$user:" "$root/etc/group"; then run groupadd --root "$root" --system "$user"; fi
            run useradd --root "$root" --system --gid "$user" --no-create-home \
                --home-dir "$state" --shell "$nologin" --comment "Loopline edge agent" "$user"
            log "created the system user $user in $root/etc/passwd"
        fi ;;
    destdir) skipped useradd --system "$user" ;;
esac

# ---------------------------------------------------------------- files
put_binary
put "$work/$unit" "$unit_path" 0644
if [ -d "$top$etc" ]; then
    run chmod 0750 "$top$etc"
else
    run install -d -m 0750 "$top$etc"
fi
own "$top$etc"
if [ "${#config_flags[@]}" -gt 0 ]; then
    put_config "$work/agent.toml" "$etc/agent.toml" flags
    if [ -n "$tls_ca" ]; then
        if [ ! -d "$top$etc/tls" ]; then
            run install -d -m 0750 "$top$etc/tls"
            own "$top$etc/tls"
        fi
        put_config "$tls_ca" "$etc/tls/ca.pem" flags
    fi
else
    put_config "$here/agent.toml" "$etc/agent.toml" example
fi
if [ -n "$broker_env" ]; then
    put_config "$work/agent.env" "$etc/agent.env" flags
else
    put_config "$here/agent.env" "$etc/agent.env" example
fi

# ---------------------------------------------------------------- service
case "$mode" in
    destdir)
        skipped systemctl daemon-reload
        skipped systemctl enable --now "$unit"
        log "staged under $destdir; nothing started"
        exit 0 ;;
    root)
        run systemctl --root="$root" enable "$unit"
        log "enabled $unit under $root ($wants_path); nothing started"
        exit 0 ;;
esac
if ! have_systemctl; then
    log "no systemctl on this machine: start $bin_path --config $etc/agent.toml yourself"
    exit 0
fi
run systemctl daemon-reload
if [ "$start" = 0 ]; then
    run systemctl enable "$unit"
    log "enabled $unit; start it with: systemctl start $unit"
elif [ "$changed" = 1 ] && [ "$dry_run" = 0 ] && systemctl is-active --quiet "$unit"; then
    run systemctl enable "$unit"
    run systemctl restart "$unit"
    log "restarted $unit with the new version"
else
    run systemctl enable --now "$unit"
    log "enabled and started $unit; follow it with: journalctl -u $unit -f"
fi
