// Parley's web pages in a real Chromium (Debian's `chromium`, driven by playwright-core):
//
//   node browser.mjs http://127.0.0.1:PORT ARTIFACT_DIR
//
// Two browser contexts (two people) chat through the page at `/`: sign up, create a room,
// join it by id, see each other's messages live, the typing indicator, a join notice, an
// unread count and scroll-back through history. Then GraphiQL at `/graphql` runs a query
// and loads the schema docs (introspection), with no network access but the server's.
// Screenshots go to ARTIFACT_DIR. Exit 0 when everything holds.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
const artifacts = process.argv[3];
if (!/^https?:\/\/./.test(base) || !artifacts) {
  console.error('usage: node browser.mjs http://HOST:PORT ARTIFACT_DIR');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.PARLEY_CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`Chromium not found at ${executablePath}: install it (sudo apt-get install chromium) or set PARLEY_CHROMIUM`);
  process.exit(3);
}
const watchdog = setTimeout(() => {
  console.error('browser.mjs: timed out after 150 s');
  process.exit(1);
}, 150_000);
watchdog.unref();

const WAIT = { timeout: 15_000 };
const step = (text) => console.log(`[browser] ${text}`);
const suffix = Math.random().toString(36).slice(2, 8);

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

/** A person with their own browser context; fails on any page error or request off the server. */
async function person(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  // Nothing may come from anywhere but Parley (no CDN).
  await context.route('**/*', (route) =>
    route.request().url().startsWith(base) || route.request().url().startsWith(base.replace(/^http/, 'ws'))
      ? route.continue()
      : route.abort());
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`${name}: page error: ${error.message}`));
  page.on('requestfailed', (request) => problems.push(`${name}: request failed: ${request.url()}`));
  page.on('console', (message) => { if (message.type() === 'error') problems.push(`${name}: console: ${message.text()}`); });
  return { name, context, page, problems, username: `${name}_${suffix}` };
}

async function signUp(who) {
  const { page } = who;
  await page.goto(`${base}/`);
  await page.getByLabel('Username').fill(who.username);
  await page.getByLabel('Password').fill('password-123');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByText(`Signed in as ${who.username}`).waitFor(WAIT);
  step(`${who.name} signed up`);
}

const messageItems = (page) => page.locator('#messages li.message');
/** The message whose body is exactly `text`. */
const message = (page, text) => page.locator('#messages li.message .body').getByText(text, { exact: true });
const people = [];

try {
  const alice = await person('alice');
  const bob = await person('bob');
  people.push(alice, bob);
  await signUp(alice);
  await signUp(bob);

  // Alice creates a room and fills it with history.
  await alice.page.getByLabel('New room').fill('lobby');
  await alice.page.getByRole('button', { name: 'Create' }).click();
  await alice.page.locator('#room-title', { hasText: 'lobby' }).waitFor(WAIT);
  const roomId = (await alice.page.locator('#room-info').textContent()).replace('Room id: ', '').trim();
  assert.match(roomId, /^[0-9a-f-]{36}$/, `room id shown: ${roomId}`);
  step(`alice created room ${roomId}`);
  const HISTORY = 35; // more than one page (30)
  for (let i = 1; i <= HISTORY; i += 1) {
    await alice.page.getByRole('textbox', { name: 'Message', exact: true }).fill(`history ${i}`);
    await alice.page.getByRole('button', { name: 'Send' }).click();
    await message(alice.page, `history ${i}`).waitFor(WAIT);
  }
  step(`alice sent ${HISTORY} messages, each shown live`);

  // Bob joins by id: Alice sees the notice; Bob sees the last page and scrolls back.
  await bob.page.getByLabel('Join room by id').fill(roomId);
  await bob.page.getByRole('button', { name: 'Join' }).click();
  await bob.page.locator('#room-title', { hasText: 'lobby' }).waitFor(WAIT);
  await alice.page.locator('#messages li.notice', { hasText: 'joined' }).first().waitFor(WAIT);
  step('alice saw the join notice');
  await message(bob.page, `history ${HISTORY}`).waitFor(WAIT);
  assert.equal(await messageItems(bob.page).count(), 30, 'one page of history first');
  await bob.page.getByRole('button', { name: 'Load earlier messages' }).click();
  await message(bob.page, 'history 1').waitFor(WAIT);
  assert.equal(await messageItems(bob.page).count(), HISTORY, 'the whole history after scrolling back');
  assert.equal(await bob.page.getByRole('button', { name: 'Load earlier messages' }).isHidden(), true);
  step('bob scrolled back through the history');

  // Typing indicator, then live messages both ways.
  await bob.page.getByRole('textbox', { name: 'Message', exact: true }).pressSequentially('hi al', { delay: 20 });
  await alice.page.locator('#typing', { hasText: `${bob.username} is typing` }).waitFor(WAIT);
  step('alice saw bob typing');
  await bob.page.getByRole('textbox', { name: 'Message', exact: true }).fill('hi alice!');
  await bob.page.getByRole('button', { name: 'Send' }).click();
  await message(alice.page, 'hi alice!').waitFor(WAIT);
  await alice.page.locator('#typing', { hasText: /^$/ }).waitFor(WAIT);
  await alice.page.getByRole('textbox', { name: 'Message', exact: true }).fill('hello bob');
  await alice.page.getByRole('button', { name: 'Send' }).click();
  await message(bob.page, 'hello bob').waitFor(WAIT);
  step('messages went both ways, live');

  // Unread count: Alice opens a second room; Bob's message in the lobby counts as unread.
  await alice.page.getByLabel('New room').fill('quiet');
  await alice.page.getByRole('button', { name: 'Create' }).click();
  await alice.page.locator('#room-title', { hasText: 'quiet' }).waitFor(WAIT);
  await bob.page.getByRole('textbox', { name: 'Message', exact: true }).fill('are you there?');
  await bob.page.getByRole('button', { name: 'Send' }).click();
  await alice.page.getByRole('button', { name: 'lobby, 1 unread' }).waitFor(WAIT);
  step('alice saw 1 unread in the lobby');
  await alice.page.screenshot({ path: join(artifacts, 'chat-alice.png'), fullPage: true });
  await alice.page.getByRole('button', { name: 'lobby, 1 unread' }).click();
  await message(alice.page, 'are you there?').waitFor(WAIT);
  await alice.page.getByRole('button', { name: 'lobby', exact: true }).waitFor(WAIT);
  step('opening the room read it');
  await bob.page.screenshot({ path: join(artifacts, 'chat-bob.png'), fullPage: true });

  // GraphiQL, from the server only, signed in with the chat page's token.
  const { page } = alice;
  await page.goto(`${base}/graphql`);
  await page.locator('.graphiql-container').waitFor(WAIT);
  const headers = await page.locator('.graphiql-editor-tool .graphiql-editor').last().textContent();
  assert.match(headers, /Bearer ey/, `the Authorization header is filled in: ${headers}`);
  await page.getByRole('button', { name: /Execute query/ }).click();
  await page.locator('.result-window', { hasText: '"__typename": "Query"' }).waitFor(WAIT);
  step('GraphiQL ran a query');
  await page.getByRole('button', { name: /Show Documentation Explorer/ }).click();
  await page.locator('.graphiql-doc-explorer', { hasText: 'Query' }).waitFor(WAIT);
  await page.locator('.graphiql-doc-explorer').getByText('Mutation').first().waitFor(WAIT);
  step('GraphiQL loaded the schema docs');
  await page.screenshot({ path: join(artifacts, 'graphiql.png'), fullPage: true });

  const problems = [...alice.problems, ...bob.problems];
  assert.deepEqual(problems, [], 'no page errors, console errors or failed requests');
  console.log('all assertions passed');
} catch (error) {
  // What the pages looked like and said, to see why.
  for (const who of people) {
    await who.page.screenshot({ path: join(artifacts, `failure-${who.name}.png`), fullPage: true }).catch(() => {});
    const status = await who.page.locator('#status').textContent().catch(() => '?');
    console.error(`${who.name}: status line ${JSON.stringify(status)}; problems: ${JSON.stringify(who.problems)}`);
  }
  throw error;
} finally {
  await browser.close();
}
