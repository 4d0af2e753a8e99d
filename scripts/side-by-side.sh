#!/usr/bin/env bash
# Parley's load bench side by side with a baseline peer and the machine's ceilings, in one
# run, on the same machine: prints each figure and the ratio.
#
#   scripts/side-by-side.sh            # all shapes, 10 s each
#   SECONDS_EACH=5 scripts/side-by-side.sh
#
# Needs: PostgreSQL on 127.0.0.1:5432 (user postgres), Redis on 127.0.0.1:6379, Node 18+
# and npm, pgbench and redis-benchmark. The peer (a Socket.IO + Postgres + Redis-adapter
# chat server with its load client, `PEER_DIR`) and the ceilings script (`LIMITS`) are
# measuring tools kept outside this repository; point the two variables at them.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_DIR=${PEER_DIR:-../shared/peers/socketio}
LIMITS=${LIMITS:-../shared/limits.sh}
SECS=${SECONDS_EACH:-10}
[ -f "$PEER_DIR/server.mjs" ] || { echo "no peer at PEER_DIR=$PEER_DIR" >&2; exit 2; }
[ -f "$LIMITS" ] || { echo "no ceilings script at LIMITS=$LIMITS" >&2; exit 2; }

work=$(mktemp -d)
peer_pid=""
cleanup() {
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -q -c "drop database if exists peer_side_by_side" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building the load bench (release)"
cargo bench --bench load --no-run --quiet 2>&1 | tail -n 3

echo "== ceilings ($LIMITS)"
limits=$(bash "$LIMITS")
echo "$limits"
pg_commits=$(awk '/pg_commits_per_s/{print $2}' <<<"$limits")

echo "== peer ($PEER_DIR)"
cp -r "$PEER_DIR/." "$work/peer"
(cd "$work/peer" && npm ci --silent >/dev/null 2>&1)
psql -h 127.0.0.1 -U postgres -q -c "drop database if exists peer_side_by_side" -c "create database peer_side_by_side"
(cd "$work/peer" && PORT=3077 DATABASE_URL=postgres://postgres@127.0.0.1:5432/peer_side_by_side \
  REDIS_URL=redis://127.0.0.1:6379 exec node server.mjs >"$work/peer.log" 2>&1) &
peer_pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:3077/healthz >/dev/null && break; sleep 0.2; done
kill -0 "$peer_pid" 2>/dev/null || { echo "the peer did not start (port 3077 taken?):" >&2; cat "$work/peer.log" >&2; exit 1; }

json() { sed -n 's/^JSON //p' | tail -n 1; }
field() { node -e "const r=JSON.parse(process.argv[1]); console.log($2)" "$1"; }

peer() { (cd "$work/peer" && node load.mjs --send-url=http://127.0.0.1:3077 --seconds="$SECS" "$@") | tee -a /dev/stderr | json; }
parley() { cargo bench --bench load --quiet -- --seconds="$SECS" "$@" 2>/dev/null | tee -a /dev/stderr | json; }

echo "-- peer: 50 rooms, 100 senders x 4, 100 receivers"
p50=$(peer --senders=100 --receivers=100 --rooms=50 --inflight=4)
echo "-- peer: hot room, 100 senders x 1, 100 receivers"
phot=$(peer --senders=100 --receivers=100 --rooms=1 --inflight=1)
kill "$peer_pid" 2>/dev/null || true; wait "$peer_pid" 2>/dev/null || true; peer_pid=""

echo "-- parley: 50 rooms, 100 senders x 4, 100 receivers"
q50=$(parley --senders=100 --receivers=100 --rooms=50 --inflight=4)
echo "-- parley: hot room, 100 senders x 1, 100 receivers"
qhot=$(parley --senders=100 --receivers=100 --rooms=1 --inflight=1)
echo "-- parley: hot room, 100 senders x 1, no receivers"
qhot0=$(parley --senders=100 --receivers=0 --rooms=1 --inflight=1)
echo "-- parley: 50 rooms, 64 HTTP clients, no receivers"
q64=$(parley --senders=64 --receivers=0 --rooms=50 --inflight=1)

echo
echo "== side by side (same run)"
printf '%-52s %10s %10s %8s\n' "shape" "peer" "parley" "ratio"
row() { printf '%-52s %10s %10s %8s\n' "$1" "$2" "$3" "$(node -e "console.log(($2>0? $3/$2 : 0).toFixed(2)+'x')")"; }
row "50 rooms, 100 receivers: acked sends/s" "$(field "$p50" r.ackedPerS)" "$(field "$q50" r.ackedPerS)"
row "50 rooms: delivery p99 ms (lower is better)" "$(field "$p50" r.deliveryMs.p99)" "$(field "$q50" r.deliveryMs.p99)"
row "hot room, 100 receivers: deliveries/s" "$(field "$phot" "Math.round(r.deliveries/r.seconds)")" "$(field "$qhot" "Math.round(r.deliveries/r.seconds)")"
row "hot room, no receivers: sends/s (vs peer w/ recv)" "$(field "$phot" r.ackedPerS)" "$(field "$qhot0" r.ackedPerS)"
row "no receivers, 64 clients: sends/s vs pg commits/s" "$pg_commits" "$(field "$q64" r.ackedPerS)"
echo "parley 64 clients: ack p99 $(field "$q64" r.ackMs.p99) ms"
echo "deliveries (parley 50 rooms): $(field "$q50" r.deliveries) / $(field "$q50" r.expectedDeliveries); (hot) $(field "$qhot" r.deliveries) / $(field "$qhot" r.expectedDeliveries)"
echo "deliveries (peer 50 rooms): $(field "$p50" r.deliveries) / $(field "$p50" r.expectedDeliveries)"
