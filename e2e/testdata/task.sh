#!/bin/sh
# The task end-to-end tests run. It records that it ran (one line per run in
# $MARK_DIR/<task>), then does what its arguments say:
#   ok                    exit 0
#   exit N                print to stderr and exit N
#   output K=V [K=V...]   write outputs to $BATON_OUTPUT
#   sleep S               sleep S seconds, then exit 0
echo "run=$BATON_RUN_ID agent=$AGENT_NAME attempt=$BATON_ATTEMPT item=$BATON_ITEM" >> "$MARK_DIR/$BATON_TASK"
case "$1" in
  ok) ;;
  exit)
    echo "task $BATON_TASK failing with exit code $2" >&2
    exit "$2" ;;
  output)
    shift
    for kv in "$@"; do echo "$kv" >> "$BATON_OUTPUT"; done ;;
  sleep)
    sleep "$2" ;;
esac
echo "task $BATON_TASK done"
