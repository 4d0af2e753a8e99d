// Parley driven by Apollo Client, the way its docs set it up:
//
//   node apollo_client.mjs http://127.0.0.1:8080
//
// HttpLink for queries and mutations behind PersistedQueryLink (automatic persisted queries:
// hash first, the text only when the server does not know it), GraphQLWsLink (graphql-ws,
// `connectionParams: { authToken }` as Apollo's docs write it) for subscriptions, joined by
// `split`. Asserts what goes over the wire and what arrives. Exit 0 when all holds.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ApolloClient, HttpLink, InMemoryCache, gql, split } from '@apollo/client/core/index.js';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries/index.js';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/index.js';
import { getMainDefinition } from '@apollo/client/utilities/index.js';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!/^https?:\/\/./.test(base)) {
  console.error('usage: node apollo_client.mjs http://HOST:PORT');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error('apollo_client.mjs: timed out after 60 s');
  process.exit(1);
}, 60_000);
watchdog.unref();
const step = (text) => console.log(`[apollo] ${text}`);

// Every HTTP request the client makes, as sent.
const sent = [];
async function recordingFetch(url, init) {
  sent.push(JSON.parse(init.body));
  return fetch(url, init);
}

function client(token) {
  const http = createPersistedQueryLink({
    sha256: (text) => createHash('sha256').update(text).digest('hex'),
  }).concat(
    new HttpLink({
      uri: `${base}/graphql`,
      fetch: recordingFetch,
      headers: token ? { authorization: `Bearer ${token}` } : {},
    }),
  );
  const wsClient = createClient({
    url: `${base.replace(/^http/, 'ws')}/graphql/ws`,
    webSocketImpl: WebSocket,
    connectionParams: { authToken: token },
    retryAttempts: 0,
  });
  const ws = new GraphQLWsLink(wsClient);
  const link = split(
    ({ query }) => {
      const definition = getMainDefinition(query);
      return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
    },
    ws,
    http,
  );
  return { apollo: new ApolloClient({ link, cache: new InMemoryCache() }), wsClient };
}

const REGISTER = gql`
  mutation Register($u: String!, $p: String!) {
    register(username: $u, password: $p) { token user { id username } }
  }
`;
const CREATE = gql`mutation Create($n: String!) { createRoom(name: $n) { id name } }`;
const SEND = gql`
  mutation Send($r: ID!, $b: String!, $c: String!) {
    sendMessage(roomId: $r, body: $b, clientMsgId: $c) { id seq body }
  }
`;
const ROOMS = gql`query Rooms { me { id username } rooms { id name } }`;
const MESSAGES = gql`
  subscription Messages($r: ID!) { messages(roomId: $r, after: 0) { seq body sender { username } } }
`;

const anonymous = client(undefined);
const username = `apollo_${Math.random().toString(36).slice(2, 10)}`;
const registered = await anonymous.apollo.mutate({ mutation: REGISTER, variables: { u: username, p: 'password-123' } });
assert.equal(registered.data.register.user.username, username);
// APQ: the hash alone first (PERSISTED_QUERY_NOT_FOUND), then the hash with the text.
assert.equal(sent.length, 2, `two requests for a new operation: ${JSON.stringify(sent)}`);
assert.equal(sent[0].query, undefined, 'the first request carries only the hash');
assert.ok(sent[0].extensions.persistedQuery.sha256Hash);
assert.match(sent[1].query, /register/);
step('registered through PersistedQueryLink (hash, then text)');
anonymous.wsClient.dispose();

const { token } = registered.data.register;
const alice = client(token);
sent.length = 0;
const room = (await alice.apollo.mutate({ mutation: CREATE, variables: { n: 'apollo-room' } })).data.createRoom;
assert.equal(room.name, 'apollo-room');
const first = await alice.apollo.query({ query: ROOMS, fetchPolicy: 'network-only' });
assert.equal(first.data.me.username, username);
assert.deepEqual(first.data.rooms.map((r) => r.id), [room.id]);
// Query the same operation again: the server knows its hash now, one request with no text.
sent.length = 0;
const again = await alice.apollo.query({ query: ROOMS, fetchPolicy: 'network-only' });
assert.deepEqual(again.data, first.data);
assert.equal(sent.length, 1, `one request for a known operation: ${JSON.stringify(sent)}`);
assert.equal(sent[0].query, undefined, 'a known operation goes as its hash alone');
step('a known query went as its hash alone');

// Subscriptions over GraphQLWsLink with { authToken }.
const received = [];
const done = new Promise((resolve, reject) => {
  const subscription = alice.apollo.subscribe({ query: MESSAGES, variables: { r: room.id } }).subscribe({
    next: ({ data }) => {
      received.push(data.messages);
      if (received.length === 3) {
        subscription.unsubscribe();
        resolve();
      }
    },
    error: reject,
  });
});
for (let i = 1; i <= 3; i += 1) {
  const sentMessage = await alice.apollo.mutate({ mutation: SEND, variables: { r: room.id, b: `apollo ${i}`, c: `apollo-${i}` } });
  assert.equal(sentMessage.data.sendMessage.seq, i);
}
await done;
assert.deepEqual(received.map((m) => [m.seq, m.body, m.sender.username]), [
  [1, 'apollo 1', username],
  [2, 'apollo 2', username],
  [3, 'apollo 3', username],
]);
step('three messages arrived over GraphQLWsLink (connectionParams.authToken)');
alice.wsClient.dispose();
console.log('all assertions passed');
