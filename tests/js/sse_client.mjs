// GraphQL over Server-Sent Events with the npm graphql-sse client (distinct connections
// mode, the default), for clients that cannot use WebSocket:
//
//   node sse_client.mjs http://127.0.0.1:8080
//
// A query, a subscription that receives messages sent meanwhile over HTTP, the depth limit,
// and a bad token refused. Exit 0 when everything holds.

import assert from 'node:assert/strict';
import { createClient } from 'graphql-sse';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!/^https?:\/\/./.test(base)) {
  console.error('usage: node sse_client.mjs http://HOST:PORT');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error('sse_client.mjs: timed out after 60 s');
  process.exit(1);
}, 60_000);
watchdog.unref();
const step = (text) => console.log(`[sse] ${text}`);

async function gql(query, variables, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/graphql`, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

const username = `sse_${Math.random().toString(36).slice(2, 10)}`;
const { register } = await gql(
  'mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token } }',
  { u: username, p: 'password-123' },
);
const { token } = register;
const room = (await gql('mutation { createRoom(name: "sse-room") { id } }', {}, token)).createRoom.id;

const client = createClient({
  url: `${base}/graphql/stream`,
  headers: { Authorization: `Bearer ${token}` },
  retryAttempts: 0,
});

// A query: one result.
const results = [];
for await (const result of client.iterate({ query: '{ me { username } }' })) results.push(result);
assert.deepEqual(results, [{ data: { me: { username } } }]);
step('a query answered over SSE');

// A subscription: replay and live, in order.
const received = [];
const subscription = client.iterate({
  query: 'subscription($r: ID!) { messages(roomId: $r, after: 0) { seq body } }',
  variables: { r: room },
});
const reading = (async () => {
  for await (const result of subscription) {
    assert.equal(result.errors, undefined, JSON.stringify(result.errors));
    received.push(result.data.messages);
    if (received.length === 3) break; // ends the request
  }
})();
for (let i = 1; i <= 3; i += 1) {
  await gql('mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }', { r: room, b: `sse ${i}`, c: `sse-${i}` }, token);
}
await reading;
assert.deepEqual(received, [{ seq: 1, body: 'sse 1' }, { seq: 2, body: 'sse 2' }, { seq: 3, body: 'sse 3' }]);
step('three messages arrived over an SSE subscription');

// The same limits as everywhere.
const deep = '{ __schema { types { fields { type { fields { type { fields { type { fields { type { fields { type { name } } } } } } } } } } } } }';
const refused = [];
for await (const result of client.iterate({ query: deep })) refused.push(result);
assert.equal(refused.length, 1);
assert.equal(refused[0].errors[0].extensions.code, 'GRAPHQL_VALIDATION_FAILED');
step('the depth limit applies over SSE');

// A bad token is refused (401) for anything that needs a user.
const stranger = createClient({ url: `${base}/graphql/stream`, headers: { Authorization: 'Bearer nope' }, retryAttempts: 0 });
await assert.rejects(async () => {
  for await (const _ of stranger.iterate({ query: '{ me { id } }' })) { /* nothing */ }
}, (error) => { step(`bad token refused: ${error && (error.message || error)}`); return true; });
client.dispose();
stranger.dispose();
console.log('all assertions passed');
