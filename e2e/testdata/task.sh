#!/bin/sh
# The task end-to-end tests run. It records that it ran (one line per run in
# $MARK_DIR/<task>), then does what its arguments say, verb after verb:
#   ok                    nothing (exit 0 at the end)
#   exit N                print to stderr and exit N
#   output K=V [K=V...]   write outputs to $BATON_OUTPUT (takes every argument left)
#   sleep S               sleep S seconds
#   span                  record "S <ns> <pid> <agent>" now and "E ..." at exit
#                         (also when stopped with SIGTERM) in
#                         $MARK_DIR/<task>.span, so a test can compute how
#                         many children ran at once
#   fail-items I,J,...    exit 1 if $BATON_ITEM is one of the items, unless
#                         $MARK_DIR/fixed exists
#   fail-once             exit 1 the first time this task instance (task and
#                         item) runs; succeed from then on
#   spawn N S             start N grandchildren sleeping S seconds and sleep S
#                         itself (as one more child); every pid (this shell's
#                         and the sleeps') goes to $MARK_DIR/<task>.pids
#   wait-file F           wait until $MARK_DIR/F exists (exit 3 after 120 s)
#   secret VAR            print "VAR is <its value>" to stdout and stderr and
#                         write the outputs VAR=<value> and VAR_matches=yes
#                         (or no) saying whether the value is the content of
#                         $MARK_DIR/VAR.expected
me="$MARK_DIR/$BATON_TASK"
echo "run=$BATON_RUN_ID agent=$AGENT_NAME attempt=$BATON_ATTEMPT item=$BATON_ITEM id=$BATON_ATTEMPT_ID" >> "$me"
while [ $# -gt 0 ]; do
  verb=$1
  shift
  case "$verb" in
    secret)
      eval "value=\${$1}"
      echo "$1 is $value"
      echo "$1 is $value" >&2
      echo "$1=$value" >> "$BATON_OUTPUT"
      if [ "$value" = "$(cat "$MARK_DIR/$1.expected")" ]; then matches=yes; else matches=no; fi
      echo "$1_matches=$matches" >> "$BATON_OUTPUT"
      shift ;;
    ok) ;;
    exit)
      echo "task $BATON_TASK failing with exit code $1" >&2
      exit "$1" ;;
    output)
      for kv in "$@"; do echo "$kv" >> "$BATON_OUTPUT"; done
      shift $# ;;
    sleep)
      sleep "$1"
      shift ;;
    span)
      echo "S $(date +%s%N) $$ $AGENT_NAME" >> "$me.span"
      trap 'echo "E $(date +%s%N) $$ $AGENT_NAME" >> "$me.span"' EXIT
      # Stopped (SIGTERM): record the end too, then exit as killed.
      trap 'exit 143' TERM ;;
    fail-items)
      case ",$1," in
        *",$BATON_ITEM,"*)
          if [ ! -e "$MARK_DIR/fixed" ]; then
            echo "item $BATON_ITEM is poison" >&2
            exit 1
          fi ;;
      esac
      shift ;;
    fail-once)
      flag="$me.failed-once.$BATON_ITEM"
      if [ ! -e "$flag" ]; then
        : > "$flag"
        echo "task $BATON_TASK failing on its first run" >&2
        exit 1
      fi ;;
    spawn)
      echo "$$" >> "$me.pids"
      n=$1
      while [ "$n" -gt 0 ]; do
        sleep "$2" &
        echo "$!" >> "$me.pids"
        n=$((n - 1))
      done
      sleep "$2" &
      echo "$!" >> "$me.pids"
      wait
      shift 2 ;;
    wait-file)
      n=0
      while [ ! -e "$MARK_DIR/$1" ]; do
        n=$((n + 1))
        if [ "$n" -gt 2400 ]; then
          echo "gave up waiting for $1" >&2
          exit 3
        fi
        sleep 0.05
      done
      shift ;;
    *)
      echo "task.sh: unknown verb $verb" >&2
      exit 64 ;;
  esac
done
echo "task $BATON_TASK done"
