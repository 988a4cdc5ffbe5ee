#!/bin/sh
# drainer example hook: make nginx stop accepting new work, and resume it.
# Link it into two phases:
#   ln -s /usr/share/drainer/hooks/nginx-drain.sh /etc/drainer/hooks.d/pre-drain/20-nginx
#   ln -s /usr/share/drainer/hooks/nginx-drain.sh /etc/drainer/hooks.d/post-restore/80-nginx
# pre-drain creates a flag file and reloads nginx; your server block answers the load balancer's
# health probe with 503 while the flag exists, so no new connections arrive while the established
# ones finish:
#   location = /healthz { if (-f /run/drainer/nginx-maintenance) { return 503; } return 200; }
# post-restore removes the flag and reloads. A dry run (DRAINER_DRY_RUN=1) only says what it would do.
set -eu

flag=${NGINX_MAINTENANCE_FLAG:-/run/drainer/nginx-maintenance}

reload() {
    if [ "${DRAINER_DRY_RUN:-0}" = 1 ]; then
        echo "dry run: would reload nginx"
        return 0
    fi
    nginx -t -q
    nginx -s reload
}

case "${DRAINER_PHASE:-}" in
    pre-drain)
        if [ "${DRAINER_DRY_RUN:-0}" = 1 ]; then
            echo "dry run: would create $flag"
        else
            mkdir -p "$(dirname "$flag")"
            : > "$flag"
        fi
        reload
        echo "nginx: maintenance flag set, health probe now answers 503"
        ;;
    post-restore)
        if [ "${DRAINER_DRY_RUN:-0}" = 1 ]; then
            echo "dry run: would remove $flag"
        else
            rm -f "$flag"
        fi
        reload
        echo "nginx: maintenance flag cleared"
        ;;
    *)
        echo "nginx-drain.sh: nothing to do in phase ${DRAINER_PHASE:-unknown}" >&2
        ;;
esac
