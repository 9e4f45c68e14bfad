#!/usr/bin/env bash
# The NAT lab: the README walk-through between two peers behind two NATs,
# by key alone, on network namespaces this script builds and removes.
#
#                      pub (172.31.0.1: relay, DHT of 5 nodes)
#                     /                                      \
#        172.31.1.1 pa                                        pb 172.31.2.1
#                   |                                          |
#        172.31.1.2 wan                                       wan 172.31.2.2
#              ra (masquerades 10.0.1/24)        rb (masquerades 10.0.2/24)
#          10.0.1.1 lan                                       lan 10.0.2.1
#                   |                                          |
#          10.0.1.2 a: peermq listen           b: peermq connect 10.0.2.2
#
# Each router is an ordinary home NAT: it masquerades its LAN behind its
# one public address and lets in only replies to what went out. Run 1
# leaves UDP between the routers open, so iroh punches a hole and the
# connection must end up direct (`peermq status` says so on both sides).
# Run 2 drops UDP between the routers, so the connection must go through
# the relay, and still deliver every message once, with acknowledgements.
#
# Needs root and Linux network namespaces; where they are not permitted it
# prints one line saying so and exits 0. It installs nftables (apt-get)
# where missing. Only addresses inside its own namespaces are used, and the
# namespaces, processes and files go when it ends, even on failure.
#
# Usage: bash tests/nat-lab.sh (from anywhere; builds what it runs).

set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "nat-lab: $*"; }
skip() { say "skipped: $*"; exit 0; }
fail() { say "FAIL: $*" >&2; return 1; }

[ "$(uname -s)" = Linux ] || skip "network namespaces need Linux"
[ "$(id -u)" = 0 ] || skip "building network namespaces needs root"
command -v ip >/dev/null || skip "no \`ip\` command (iproute2)"
probe="pmqlab-probe-$$"
if ! why=$(ip netns add "$probe" 2>&1); then
    skip "cannot create a network namespace here: $why"
fi
ip netns del "$probe"
if ! command -v nft >/dev/null; then
    say "installing nftables"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nftables >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null 2>&1; } ||
        skip "nftables is missing and apt-get could not install it"
fi

# The whole workspace's binaries and examples, as `cargo test --workspace
# --release` builds them: after the tests, nothing is built again.
cargo build --release --quiet --workspace --bins --examples
PEERMQ="$PWD/target/release/peermq"
RELAY="$PWD/target/release/examples/relay"
TESTNET="$PWD/target/release/examples/testnet"

LAB="pmqlab$$"
PUB="$LAB-pub" RA="$LAB-ra" RB="$LAB-rb" NA="$LAB-a" NB="$LAB-b"
WORK=$(mktemp -d /tmp/nat-lab.XXXXXX)

cleanup() {
    local status=$?
    disown -a
    for ns in "$NA" "$NB" "$RA" "$RB" "$PUB"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for ns in "$NA" "$NB" "$RA" "$RB" "$PUB"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "${NAT_LAB_LOGS:-}" ]; then
        mkdir -p "$NAT_LAB_LOGS" && cp -r "$WORK"/. "$NAT_LAB_LOGS"/
    fi
    if [ "$status" != 0 ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "----- ${log##*/} (last 40 lines)"
            tail -n 40 "$log"
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- The networks -------------------------------------------------------
for ns in "$PUB" "$RA" "$RB" "$NA" "$NB"; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
done
in_ns "$PUB" ip addr add 172.31.0.1/32 dev lo
in_ns "$PUB" sysctl -qw net.ipv4.ip_forward=1

# router: NS LAN-PREFIX (10.0.N) WAN-PREFIX (172.31.N) PUB-SIDE-NAME HOST-NS
router() {
    local ns=$1 lan=$2 wan=$3 pubside=$4 host=$5
    ip link add wan netns "$ns" type veth peer name "$pubside" netns "$PUB"
    in_ns "$PUB" ip addr add "$wan.1/24" dev "$pubside"
    in_ns "$PUB" ip link set "$pubside" up
    in_ns "$ns" ip addr add "$wan.2/24" dev wan
    in_ns "$ns" ip link set wan up
    in_ns "$ns" ip route add default via "$wan.1"
    ip link add lan netns "$ns" type veth peer name eth0 netns "$host"
    in_ns "$ns" ip addr add "$lan.1/24" dev lan
    in_ns "$ns" ip link set lan up
    in_ns "$host" ip addr add "$lan.2/24" dev eth0
    in_ns "$host" ip link set eth0 up
    in_ns "$host" ip route add default via "$lan.1"
    in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
    in_ns "$ns" nft -f - <<'NFT'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat;
        oifname "wan" masquerade
    }
}
table ip filter {
    # Unsolicited packets from outside are dropped, not answered, as home
    # routers do. (Answered, their conntrack entry would also take the
    # port that the NAT must keep for the LAN host's hole punch.)
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }
}
NFT
}
router "$RA" 10.0.1 172.31.1 pa "$NA"
router "$RB" 10.0.2 172.31.2 pb "$NB"

# The lab is closed: nothing on the public side routes into a private
# network; only the routers' masquerading lets traffic back in.
for private in 10.0.1.2 10.0.2.2; do
    if in_ns "$PUB" ip route get "$private" >/dev/null 2>&1; then
        fail "the public namespace has a route to $private"
        exit 1
    fi
done

# --- The public services ------------------------------------------------
ip netns exec "$PUB" "$TESTNET" 172.31.0.1 5 >"$WORK/dht.out" 2>"$WORK/dht.log" &
disown
ip netns exec "$PUB" "$RELAY" 172.31.0.1 "$WORK/relay.pem" >"$WORK/relay.out" 2>"$WORK/relay.log" &
disown
for _ in $(seq 100); do
    [ -s "$WORK/dht.out" ] && [ -s "$WORK/relay.out" ] && break
    sleep 0.1
done
BOOTSTRAP=$(head -n1 "$WORK/dht.out")
RELAY_URL=$(head -n1 "$WORK/relay.out")
[ -n "$BOOTSTRAP" ] && [ -n "$RELAY_URL" ] || { fail "the DHT or the relay did not start"; exit 1; }
in_ns "$NA" timeout 5 bash -c 'exec 3<>/dev/tcp/172.31.0.1/3340' ||
    { fail "A cannot reach the relay through its NAT"; exit 1; }
say "DHT $BOOTSTRAP, relay $RELAY_URL"

# --- The walk-through -----------------------------------------------------
# Every peermq command runs with these: no address anywhere, only the key.
export PEERMQ_TRANSPORT=iroh PEERMQ_DHT=1 PEERMQ_BOOTSTRAP="$BOOTSTRAP" \
    PEERMQ_RELAY="$RELAY_URL" PEERMQ_RELAY_CA="$WORK/relay.pem"

# wait_lines FILE PATTERN COUNT SECONDS: until FILE has COUNT lines
# matching PATTERN.
wait_lines() {
    local file=$1 pattern=$2 count=$3 deadline=$((SECONDS + $4))
    while [ "$(grep -c -- "$pattern" "$file" 2>/dev/null || true)" -lt "$count" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$4 s without $count lines matching \`$pattern\` in ${file##*/}"
            return 1
        fi
        sleep 0.2
    done
}

# expect_exactly FILE PATTERN COUNT: exactly COUNT matching lines.
expect_exactly() {
    local got
    got=$(grep -c -- "$2" "$1" || true)
    [ "$got" = "$3" ] || { fail "$got lines matching \`$2\` in ${1##*/}, expected $3"; return 1; }
}

# status_route NS DIR PATTERN SECONDS: until `peermq status` on DIR shows
# a connection matching PATTERN; prints that line.
status_route() {
    local ns=$1 dir=$2 pattern=$3 deadline=$(($SECONDS + $4)) line
    while :; do
        line=$(in_ns "$ns" "$PEERMQ" -d "$dir" status | grep "connection:" || true)
        if grep -q -- "$pattern" <<<"$line"; then
            echo "$line" | sed 's/^ *//'
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "after $4 s, $(basename "$dir")'s status shows \`${line:-no connection}\`, expected \`$pattern\`"
            return 1
        fi
        sleep 0.5
    done
}

# stop PID: Ctrl-C, as a user stops `listen` or `connect`; it must end
# within 10 s.
stop() {
    kill -INT "$1"
    (sleep 10 && kill -9 "$1" 2>/dev/null) &
    local watchdog=$! status=0
    wait "$1" || status=$?
    kill "$watchdog" 2>/dev/null || true
    if [ "$status" = 137 ]; then
        fail "a command still ran 10 s after Ctrl-C"
        return 1
    fi
}

# walk NAME ROUTE-PATTERN-A ROUTE-PATTERN-B: the README walk-through, A
# behind one NAT, B behind the other; checks each side's route.
walk() {
    local name=$1 want_a=$2 want_b=$3
    local a="$WORK/$name/a" b="$WORK/$name/b"
    mkdir -p "$a" "$b"
    # Each node its own discovery directory: nothing is found on "this
    # machine", as on two real ones.
    local env_a=(env PEERMQ_DISCOVERY_DIR="$WORK/$name/disc-a")
    local env_b=(env PEERMQ_DISCOVERY_DIR="$WORK/$name/disc-b")
    local A B
    A=$(in_ns "$NA" "${env_a[@]}" "$PEERMQ" -d "$a" id)
    B=$(in_ns "$NB" "${env_b[@]}" "$PEERMQ" -d "$b" id)
    in_ns "$NA" "${env_a[@]}" "$PEERMQ" -d "$a" add-peer "$B" >/dev/null
    for m in wow cool hiiiiiiii; do
        in_ns "$NB" "${env_b[@]}" "$PEERMQ" -d "$b" send --to "$A" --message "$m" >/dev/null
    done

    ip netns exec "$NB" "${env_b[@]}" "$PEERMQ" -d "$b" connect "$A" >"$WORK/$name-connect1.out" 2>"$WORK/$name-connect1.log" &
    local connect=$!
    ip netns exec "$NA" "${env_a[@]}" "$PEERMQ" -d "$a" listen >"$WORK/$name-listen.out" 2>"$WORK/$name-listen.log" &
    local listen=$!

    wait_lines "$WORK/$name-listen.out" "^MESSAGE $B@" 3 60
    wait_lines "$WORK/$name-connect1.out" "^ACK $A@" 3 30
    local route
    route=$(status_route "$NA" "$a" "$want_a" 30)
    say "$name: A: $route"
    route=$(status_route "$NB" "$b" "$want_b" 30)
    say "$name: B: $route"

    stop "$connect"
    for m in beep boop; do
        in_ns "$NB" "${env_b[@]}" "$PEERMQ" -d "$b" send --to "$A" --message "$m" >/dev/null
    done
    ip netns exec "$NB" "${env_b[@]}" "$PEERMQ" -d "$b" connect "$A" >"$WORK/$name-connect2.out" 2>"$WORK/$name-connect2.log" &
    connect=$!
    wait_lines "$WORK/$name-listen.out" "^MESSAGE $B@" 5 60
    wait_lines "$WORK/$name-connect2.out" "^ACK $A@4" 1 30
    route=$(status_route "$NA" "$a" "$want_a" 30)
    say "$name: A: $route"

    stop "$connect"
    stop "$listen"
    # Every message once, in order, and nothing else.
    printf 'MESSAGE %s@%s\n' "$B" "0 wow" "$B" "1 cool" "$B" "2 hiiiiiiii" "$B" "3 beep" "$B" "4 boop" \
        >"$WORK/$name-expected.out"
    if ! diff -u "$WORK/$name-expected.out" "$WORK/$name-listen.out"; then
        fail "$name: A's listen printed something other than each message once"
        return 1
    fi
    for seq in 0 1 2; do expect_exactly "$WORK/$name-connect1.out" "^ACK $A@$seq\$" 1; done
    for seq in 3 4; do expect_exactly "$WORK/$name-connect2.out" "^ACK $A@$seq\$" 1; done
    # B's next status: all five acknowledged.
    in_ns "$NB" "$PEERMQ" -d "$b" status | grep -q "5 sent, 5 acknowledged" ||
        { fail "$name: B's status does not show five acknowledged"; in_ns "$NB" "$PEERMQ" -d "$b" status; return 1; }
    say "$name: every message delivered once, every ack back"
}

walk punched "direct over iroh to 172.31.2.2:" "direct over iroh to 172.31.1.2:"

# UDP between the two routers dropped: only the relay (TCP) connects them.
in_ns "$PUB" nft -f - <<'NFT'
table inet lab {
    chain forward {
        type filter hook forward priority filter;
        iifname "pa" oifname "pb" meta l4proto udp drop
        iifname "pb" oifname "pa" meta l4proto udp drop
    }
}
NFT
walk relayed "relayed over iroh via $RELAY_URL" "relayed over iroh via $RELAY_URL"

say "passed"
