// Parley's public API driven by the graphql-ws npm client, as a JavaScript app would use it.
//
//   node api_client.mjs http://127.0.0.1:8080
//
// Registers two users and a room over HTTP (fetch), subscribes over the WebSocket with
// graphql-ws (`graphql-transport-ws`, token in connectionParams), joins and sends over HTTP,
// and asserts what arrives: a MEMBER_JOINED notice and messages seq 1..N in order. Then a
// client with a bad token must be closed with 4403. Exit code 0 when all holds; any failed
// assertion or timeout exits non-zero with the reason on stderr.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!/^https?:\/\/./.test(base)) {
  console.error('usage: node api_client.mjs http://HOST:PORT');
  process.exit(2);
}
const wsUrl = `${base.replace(/^http/, 'ws')}/graphql/ws`;
const MESSAGES = Number(process.env.PARLEY_JS_MESSAGES ?? 20);
const WAIT_MS = 15_000;

// The whole run must not hang, whatever the server does.
const watchdog = setTimeout(() => {
  console.error('api_client.mjs: timed out after 60 s');
  process.exit(1);
}, 60_000);
watchdog.unref();

function step(text) {
  console.log(`[js] ${text}`);
}

/** POST /graphql; returns `data`, failing on any error. */
async function gql(query, variables = {}, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  assert.equal(response.status, 200, `HTTP ${response.status}: ${JSON.stringify(body)}`);
  assert.equal(body.errors, undefined, `GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

async function register(prefix) {
  // Usernames: 3–32 of [a-z0-9_].
  const username = `${prefix}_${Math.random().toString(36).slice(2, 10)}`;
  const data = await gql(
    'mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { id username } } }',
    { u: username, p: 'password-123' },
  );
  assert.equal(data.register.user.username, username);
  return { token: data.register.token, id: data.register.user.id, username };
}

/** A promise that rejects after `ms` with `what` in the message. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next result of a subscription iterator; fails on errors, completion or timeout. */
async function next(iterator, what) {
  const { value, done } = await within(iterator.next(), WAIT_MS, what);
  assert.ok(!done, `the subscription ended while waiting for ${what}`);
  assert.equal(value.errors, undefined, `errors while waiting for ${what}: ${JSON.stringify(value.errors)}`);
  return value.data;
}

function client(token, extra = {}) {
  return createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { token },
    ...extra,
  });
}

async function theFlow() {
  const alice = await register('alice');
  const bob = await register('bob');
  step(`registered ${alice.username} and ${bob.username}`);

  const created = await gql(
    'mutation($n: String!, $p: [ID!]) { createRoom(name: $n, participants: $p) { id host { id } members { id } invited { id } } }',
    { n: 'js client room', p: [bob.id] },
    alice.token,
  );
  const room = created.createRoom.id;
  assert.equal(created.createRoom.host.id, alice.id);
  assert.deepEqual(created.createRoom.members.map((m) => m.id), [alice.id]);
  assert.deepEqual(created.createRoom.invited.map((m) => m.id), [bob.id]);
  step(`created room ${room} with ${bob.username} invited`);

  let connected = 0;
  const aliceWs = client(alice.token, { on: { connected: () => connected++ } });
  try {
    const notices = aliceWs.iterate({
      query: 'subscription($r: ID) { notices(roomId: $r) { kind roomId user { id username } text position } }',
      variables: { r: room },
    });
    // `after: 0`: history first, then live, with no gap and no duplicate.
    const messages = aliceWs.iterate({
      query: 'subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body clientMsgId sender { id username } } }',
      variables: { r: room, a: 0 },
    });
    // graphql-ws has no "subscribed" acknowledgement: give the server a moment to set the
    // subscriptions up once the connection is acknowledged (as the Rust end-to-end tests do).
    const deadline = Date.now() + WAIT_MS;
    while (connected === 0) {
      assert.ok(Date.now() < deadline, 'no connection_ack from the server');
      await sleep(20);
    }
    await sleep(500);
    step('connected and subscribed to notices and messages');

    const joined = await gql('mutation($r: ID!) { joinRoom(roomId: $r) { members { id } } }', { r: room }, bob.token);
    assert.deepEqual(new Set(joined.joinRoom.members.map((m) => m.id)), new Set([alice.id, bob.id]));
    // Presence notices (MEMBER_ONLINE/OFFLINE) may come in between: skip them.
    let notice;
    do {
      notice = (await next(notices, 'the MEMBER_JOINED notice')).notices;
    } while (notice.kind === 'MEMBER_ONLINE' || notice.kind === 'MEMBER_OFFLINE');
    assert.equal(notice.kind, 'MEMBER_JOINED', JSON.stringify(notice));
    assert.equal(notice.roomId, room);
    assert.equal(notice.user.id, bob.id);
    assert.equal(notice.user.username, bob.username);
    assert.equal(typeof notice.text, 'string');
    assert.ok(notice.position > 0, `position ${notice.position}`);
    step(`got ${notice.kind}: "${notice.text}"`);

    // Both members send, alternately; the subscription must see 1..N in order.
    for (let i = 1; i <= MESSAGES; i++) {
      const sender = i % 2 ? bob : alice;
      const sent = await gql(
        'mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }',
        { r: room, b: `message ${i} from ${sender.username}`, c: `js-${i}` },
        sender.token,
      );
      assert.equal(sent.sendMessage.seq, i);
    }
    for (let i = 1; i <= MESSAGES; i++) {
      const message = (await next(messages, `message seq ${i}`)).messages;
      const sender = i % 2 ? bob : alice;
      assert.equal(message.seq, i, `expected seq ${i}, got ${JSON.stringify(message)}`);
      assert.equal(message.body, `message ${i} from ${sender.username}`);
      assert.equal(message.clientMsgId, `js-${i}`);
      assert.equal(message.sender.id, sender.id);
    }
    step(`received messages seq 1..${MESSAGES} in order`);

    // Nothing more: no duplicate after the last one.
    const extra = await Promise.race([messages.next(), sleep(300, 'quiet')]);
    assert.equal(extra, 'quiet', `unexpected message after seq ${MESSAGES}: ${JSON.stringify(extra)}`);
    await notices.return?.();
  } finally {
    await aliceWs.dispose();
  }
}

async function aBadTokenIsRefusedWith4403() {
  let closedWith;
  const refused = client('not-a-valid-token', {
    retryAttempts: 0,
    on: {
      closed: (event) => {
        closedWith ??= event.code;
      },
    },
  });
  try {
    const failure = await within(
      new Promise((resolve) => {
        refused.subscribe(
          { query: 'subscription { notices { kind } }' },
          {
            next: (value) => resolve({ unexpected: value }),
            error: (error) => resolve({ error }),
            complete: () => resolve({ unexpected: 'complete' }),
          },
        );
      }),
      WAIT_MS,
      'the server to refuse a bad token',
    );
    assert.equal(failure.unexpected, undefined, `a bad token got ${JSON.stringify(failure.unexpected)}`);
    assert.equal(failure.error?.code, 4403, `expected close code 4403, got ${failure.error?.code ?? failure.error}`);
    assert.equal(closedWith, 4403, `the client's "closed" event reported ${closedWith}`);
    step(`a bad token: closed with ${closedWith} (${failure.error.reason})`);
  } finally {
    await refused.dispose();
  }
}

try {
  await theFlow();
  await aBadTokenIsRefusedWith4403();
  step('all assertions passed');
  process.exit(0);
} catch (error) {
  console.error(`[js] FAILED: ${error?.stack ?? error}`);
  process.exit(1);
}
