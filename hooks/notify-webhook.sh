#!/bin/sh
# drainer example hook: post a JSON notification (Slack / Teams incoming-webhook style) with curl.
# Put the URL in a root-only file, not in drainer's environment (hooks get an allow-listed one):
#   install -m 0600 /dev/null /etc/drainer/webhook-url && echo 'https://hooks.slack.com/...' > /etc/drainer/webhook-url
#   ln -s /usr/share/drainer/hooks/notify-webhook.sh /etc/drainer/hooks.d/post-drain/90-notify
#   ln -s /usr/share/drainer/hooks/notify-webhook.sh /etc/drainer/hooks.d/post-restore/90-notify
# The text is built from contract variables whose characters are restricted first, so nothing in an
# event can break out of the JSON string.
set -eu

url_file=${WEBHOOK_URL_FILE:-/etc/drainer/webhook-url}
if [ ! -r "$url_file" ]; then
    echo "notify-webhook.sh: no webhook URL in $url_file; nothing sent" >&2
    exit 0
fi
url=$(head -n 1 "$url_file")

# Keep only characters that need no JSON escaping.
clean() {
    printf '%s' "$1" | tr -cd 'A-Za-z0-9 ._:,/+=-'
}

vm=$(clean "${DRAINER_VM_NAME:-?}")
phase=$(clean "${DRAINER_PHASE:-?}")
event=$(clean "${DRAINER_EVENT_TYPE:-manual} ${DRAINER_EVENT_ID:-}")
when=$(clean "${DRAINER_NOT_BEFORE:-}")
text="drainer: $vm $phase ($event${when:+, not before $when})"

if [ "${DRAINER_DRY_RUN:-0}" = 1 ]; then
    echo "dry run: would post: $text"
    exit 0
fi

curl --silent --show-error --fail --max-time 10 \
    --header 'Content-Type: application/json' \
    --data "{\"text\": \"$text\"}" \
    "$url" >/dev/null
echo "posted: $text"
