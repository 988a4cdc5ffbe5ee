#!/bin/sh
# drainer example hook: wait until established TCP connections to the service ports reach zero,
# for at most WAIT_SECONDS (default 300). Use it in post-drain: the VM is already out of the load
# balancer, so the count only goes down.
#   ln -s /usr/share/drainer/hooks/wait-connections.sh /etc/drainer/hooks.d/post-drain/50-wait-connections
# Give it a long enough timeout in drainer's config:
#   [hooks.timeouts]
#   "post-drain/50-wait-connections" = 360
# Settings (environment of drainer is NOT passed through; edit the defaults below or use a wrapper):
#   PORTS         space-separated local ports (default "80 443")
#   WAIT_SECONDS  the bound (default 300); exits 0 when the bound is reached, saying how many remained
set -eu

ports=${PORTS:-"80 443"}
limit=${WAIT_SECONDS:-300}

count_established() {
    total=0
    for port in $ports; do
        n=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)
        total=$((total + n))
    done
    echo "$total"
}

if ! command -v ss >/dev/null 2>&1; then
    echo "wait-connections.sh: ss(8) not found (package iproute2); not waiting" >&2
    exit 0
fi

waited=0
while :; do
    open=$(count_established)
    if [ "$open" -eq 0 ]; then
        echo "no established connections on ports $ports after ${waited}s"
        exit 0
    fi
    if [ "$waited" -ge "$limit" ]; then
        echo "still $open established connections on ports $ports after ${limit}s; going on" >&2
        exit 0
    fi
    sleep 1
    waited=$((waited + 1))
done
