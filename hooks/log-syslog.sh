#!/bin/sh
# drainer example hook: log every phase to syslog with logger(1).
# Install it in any phase, e.g.:
#   ln -s /usr/share/drainer/hooks/log-syslog.sh /etc/drainer/hooks.d/pre-drain/00-log-syslog
# It reads only the DRAINER_* variables of the hook contract and never fails the phase.
set -u

message="phase=${DRAINER_PHASE:-?} vm=${DRAINER_VM_NAME:-?} event=${DRAINER_EVENT_ID:-manual} type=${DRAINER_EVENT_TYPE:-} status=${DRAINER_EVENT_STATUS:-} not_before=${DRAINER_NOT_BEFORE:-} dry_run=${DRAINER_DRY_RUN:-0}"

if command -v logger >/dev/null 2>&1; then
    logger -t drainer-hook -p daemon.notice -- "$message" || true
else
    echo "logger not found; $message" >&2
fi
exit 0
