#!/bin/sh
# Entrypoint wrapper for images that run execd beside the user's command, compatible with the
# layout upstream's orchestrators use (`/opt/opensandbox/bootstrap.sh <entrypoint...>`):
#   - EXECD (default /opt/opensandbox/execd) is started in the background with no arguments,
#     on every interface unless EXECD_HOST says otherwise;
#   - EXECD_ENVS (default /opt/opensandbox/.env) is created and exported, so every command
#     execd runs sees what `set_env` appends to it;
#   - EXECD_BOOTSTRAP_PRE_SCRIPT, when set, is sourced first;
#   - the command is BOOTSTRAP_CMD (shell text), or `-c "<text>"`, or the arguments, or an
#     interactive shell; TERM, INT and HUP are forwarded to it; the script exits with its code;
#   - EXECD_INIT=1 (or true/yes/on) instead execs execd as init in front of the command,
#     which then reaps orphans and forwards signals itself.
set -u

EXECD="${EXECD:-/opt/opensandbox/execd}"
EXECD_ENVS="${EXECD_ENVS:-/opt/opensandbox/.env}"
mkdir -p "$(dirname "$EXECD_ENVS")" 2>/dev/null
touch "$EXECD_ENVS" 2>/dev/null
export EXECD EXECD_ENVS

if [ -n "${EXECD_BOOTSTRAP_PRE_SCRIPT:-}" ] && [ -r "$EXECD_BOOTSTRAP_PRE_SCRIPT" ]; then
  # shellcheck disable=SC1090
  . "$EXECD_BOOTSTRAP_PRE_SCRIPT"
fi

# The user command, as positional parameters.
if [ -n "${BOOTSTRAP_CMD:-}" ]; then
  set -- /bin/sh -c "$BOOTSTRAP_CMD"
elif [ "${1:-}" = "-c" ] && [ $# -ge 2 ]; then
  set -- /bin/sh -c "$2"
elif [ $# -eq 0 ]; then
  if [ -n "${BOOTSTRAP_SHELL:-}" ]; then set -- "$BOOTSTRAP_SHELL"
  elif command -v bash >/dev/null 2>&1; then set -- bash
  else set -- /bin/sh
  fi
fi

case "${EXECD_INIT:-}" in
  1 | true | TRUE | yes | on) exec "$EXECD" init -- "$@" ;;
esac

# The orchestrator that runs this script publishes execd's port and must reach it, so execd
# listens on every interface even without a token (alone it would keep to loopback then).
EXECD_HOST="${EXECD_HOST:-0.0.0.0}" "$EXECD" &
execd_pid=$!

child=""
_forward_signal() {
  [ -n "$child" ] && kill "-$1" "$child" 2>/dev/null
}
trap '_forward_signal TERM' TERM
trap '_forward_signal INT' INT
trap '_forward_signal HUP' HUP

"$@" &
child=$!
status=0
wait "$child" || status=$?
# A trapped signal interrupts `wait`; keep waiting until the command has really exited.
while kill -0 "$child" 2>/dev/null; do
  status=0
  wait "$child" || status=$?
done
kill "$execd_pid" 2>/dev/null
exit "$status"
