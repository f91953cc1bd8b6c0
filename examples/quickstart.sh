#!/usr/bin/env bash
# The quickstart behind `make run`: starts batond on the embedded store and
# two local agents (role=ssis and role=sql), applies the example nightly load,
# starts a run and shows its live progress. Everything keeps running so you
# can explore with bin/baton; Ctrl-C stops it all.
#
# Environment:
#   BATON_QUICKSTART_DIR  where data and logs go (default: .baton)
#   BATON_GRPC_ADDR       batond's gRPC address (default: 127.0.0.1:7700)
#   BATON_HTTP_ADDR       batond's REST address (default: 127.0.0.1:7701)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
dir=${BATON_QUICKSTART_DIR:-$root/.baton}
mkdir -p "$dir"
rm -f "$dir/addr.json"

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping batond and agents..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  echo "stopped. Data and logs are in $dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

"$bin/batond" --data-dir "$dir/batond" --addr-file "$dir/addr.json" \
  --grpc-addr "${BATON_GRPC_ADDR:-127.0.0.1:7700}" --http-addr "${BATON_HTTP_ADDR:-127.0.0.1:7701}" \
  >"$dir/batond.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  [ -s "$dir/addr.json" ] && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "batond did not start; its log ($dir/batond.log) says:" >&2
    tail -n 20 "$dir/batond.log" >&2
    exit 1
  fi
  sleep 0.1
done
grpc=$(sed -n 's/.*"grpc":"\([^"]*\)".*/\1/p' "$dir/addr.json")
http=$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$dir/addr.json")
export BATON_ADDR=$grpc
echo "batond is up: gRPC $grpc, REST http://$http (log: $dir/batond.log)"

# The example's tasks call dtexec-sim, sqlcmd-sim and notify-sim, found in
# PATH; the agents' allowlist names that directory and nothing else, so a
# job asking for any other program is refused (shown as rejected).
export PATH="$root/examples/nightly-dw-load/bin:$PATH"
for a in "etl-ssis role=ssis" "etl-sql role=sql"; do
  set -- $a
  "$bin/baton-agent" --server "$grpc" --name "$1" --label "$2" --slots 2 \
    --allow "$root/examples/nightly-dw-load/bin/*" \
    --state-dir "$dir/agents/$1" >"$dir/agent-$1.log" 2>&1 &
  pids+=($!)
done

for _ in $(seq 1 100); do
  n=$("$bin/baton" agents 2>/dev/null | grep -cw connected || true)
  [ "$n" -ge 2 ] && break
  sleep 0.1
done
"$bin/baton" agents

"$bin/baton" job apply -f "$root/examples/nightly-dw-load/job.yaml"
run=$("$bin/baton" run start nightly-dw-load)
echo "started run $run; watching it (the run goes on if you stop watching)"
"$bin/baton" run watch "$run" || true

cat <<MSG

batond and both agents keep running. In another terminal:
  export BATON_ADDR=$grpc
  bin/baton run get $run          # every task, its agent, exit code and duration
  bin/baton logs $run stage-customers
  bin/baton run start nightly-dw-load --param fail=load-fact-sales --wait
  curl -s http://$http/v1/runs/$run
Ctrl-C here stops everything.
MSG
wait
