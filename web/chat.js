// Parley's chat page: plain JavaScript over the public API. HTTP (fetch) for queries and
// mutations, the bundled graphql-ws client (global `graphqlWs`) for live messages, typing
// and notices. The session token is kept in localStorage (GraphiQL picks it up too).

(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql/ws`;
  const PAGE = 30;

  const state = {
    token: localStorage.getItem('parley.token'),
    me: null,
    rooms: new Map(), // id -> { id, name, unread, lastSeq, li }
    current: null, // room id
    oldest: null, // seq of the oldest message shown
    ws: null,
    roomSubs: new Map(), // id -> dispose
    viewSubs: [], // disposers of the open room's typing/notices subscriptions
    typingSentAt: 0,
    typers: new Map(), // username -> timer
  };

  function say(text) {
    $('status').textContent = text || '';
  }

  async function gql(query, variables = {}) {
    const headers = { 'content-type': 'application/json', accept: 'application/graphql-response+json, application/json;q=0.9' };
    if (state.token) headers.authorization = `Bearer ${state.token}`;
    const response = await fetch('/graphql', { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
    const body = await response.json();
    if (body.errors && body.errors.length) {
      const error = new Error(body.errors.map((e) => e.message).join('; '));
      error.code = body.errors[0].extensions && body.errors[0].extensions.code;
      throw error;
    }
    return body.data;
  }

  function subscribe(query, variables, onData) {
    return state.ws.subscribe(
      { query, variables },
      {
        next: (result) => {
          if (result.errors) say(result.errors.map((e) => e.message).join('; '));
          else onData(result.data);
        },
        error: (error) => say(`live updates: ${error && error.message ? error.message : 'connection closed'}`),
        complete: () => {},
      },
    );
  }

  // ---- signing in -------------------------------------------------------------------------

  $('auth-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const action = event.submitter && event.submitter.value === 'login' ? 'login' : 'register';
    say('');
    try {
      const data = await gql(
        `mutation($u: String!, $p: String!) { ${action}(username: $u, password: $p) { token user { id username } } }`,
        { u: $('username').value.trim(), p: $('password').value },
      );
      state.token = data[action].token;
      localStorage.setItem('parley.token', state.token);
      await start(data[action].user);
    } catch (error) {
      say(error.message);
    }
  });

  $('sign-out').addEventListener('click', () => {
    localStorage.removeItem('parley.token');
    location.reload();
  });

  /** Shows the chat for `me` (the user a login or register returned), or for the token's user. */
  async function start(me) {
    const data = me
      ? await gql('{ rooms { id name unreadCount lastMessage { seq } } }')
      : await gql('{ me { id username } rooms { id name unreadCount lastMessage { seq } } }');
    state.me = me || data.me;
    $('whoami').textContent = `Signed in as ${state.me.username}`;
    $('auth').hidden = true;
    $('chat').hidden = false;
    $('sign-out').hidden = false;
    state.ws = graphqlWs.createClient({
      url: wsUrl,
      connectionParams: () => ({ token: state.token }),
      retryAttempts: 5,
      shouldRetry: (event) => !(event && event.code === 4403),
    });
    for (const room of data.rooms) addRoom(room);
    if (data.rooms.length) openRoom(data.rooms[0].id);
  }

  // ---- rooms ------------------------------------------------------------------------------

  function renderRoom(room) {
    const button = room.li.querySelector('button');
    button.querySelector('.name').textContent = room.name;
    const badge = button.querySelector('.unread');
    badge.textContent = room.unread > 0 ? String(room.unread) : '';
    badge.hidden = room.unread === 0;
    button.setAttribute('aria-label', room.unread > 0 ? `${room.name}, ${room.unread} unread` : room.name);
    button.setAttribute('aria-current', String(room.id === state.current));
  }

  function addRoom(view) {
    if (state.rooms.has(view.id)) return state.rooms.get(view.id);
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.roomId = view.id;
    button.innerHTML = '<span class="name"></span><span class="unread" hidden></span>';
    button.addEventListener('click', () => openRoom(view.id));
    li.appendChild(button);
    $('rooms').appendChild(li);
    const room = {
      id: view.id,
      name: view.name,
      unread: view.unreadCount || 0,
      lastSeq: view.lastMessage ? view.lastMessage.seq : 0,
      li,
    };
    state.rooms.set(view.id, room);
    renderRoom(room);
    // Every room's messages, live from what the list already counts.
    const dispose = subscribe(
      'subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body sentAt sender { id username } } }',
      { r: room.id, a: room.lastSeq },
      (data) => onMessage(room, data.messages),
    );
    state.roomSubs.set(room.id, dispose);
    return room;
  }

  function onMessage(room, message) {
    if (message.seq <= room.lastSeq && room.id !== state.current) return;
    room.lastSeq = Math.max(room.lastSeq, message.seq);
    if (room.id === state.current) {
      showMessage(message, false);
      stopTyping(message.sender.username);
      markRead(room, message.seq);
    } else if (message.sender.id !== state.me.id) {
      room.unread += 1;
      renderRoom(room);
    }
  }

  async function markRead(room, seq) {
    try {
      await gql('mutation($r: ID!, $s: Int!) { markRead(roomId: $r, seq: $s) { id } }', { r: room.id, s: seq });
      room.unread = 0;
      renderRoom(room);
    } catch (error) {
      say(error.message);
    }
  }

  $('create-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const data = await gql('mutation($n: String!) { createRoom(name: $n) { id name } }', { n: $('room-name').value.trim() });
      $('room-name').value = '';
      addRoom(data.createRoom);
      openRoom(data.createRoom.id);
    } catch (error) {
      say(error.message);
    }
  });

  $('join-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const data = await gql('mutation($r: ID!) { joinRoom(roomId: $r) { id name lastMessage { seq } } }', { r: $('room-id').value.trim() });
      $('room-id').value = '';
      addRoom(data.joinRoom);
      openRoom(data.joinRoom.id);
    } catch (error) {
      say(error.message);
    }
  });

  // ---- the open room ----------------------------------------------------------------------

  function time(iso) {
    const el = document.createElement('time');
    el.dateTime = iso;
    el.textContent = new Date(iso).toLocaleTimeString();
    return el;
  }

  function showMessage(message, atTop) {
    const list = $('messages');
    // A message can come both live and in a history page: show it once.
    if (list.querySelector(`li[data-seq="${message.seq}"]`)) return;
    const li = document.createElement('li');
    li.className = 'message';
    li.dataset.seq = String(message.seq);
    const sender = document.createElement('span');
    sender.className = 'sender';
    sender.textContent = message.sender.username;
    const body = document.createElement('span');
    body.className = 'body';
    body.textContent = message.body;
    li.append(sender, body, time(message.sentAt));
    if (atTop) {
      list.insertBefore(li, list.firstChild);
    } else {
      list.appendChild(li);
      list.scrollTop = list.scrollHeight;
    }
    if (state.oldest === null || message.seq < state.oldest) state.oldest = message.seq;
  }

  function showNotice(notice) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = notice.text;
    li.appendChild(time(notice.at));
    $('messages').appendChild(li);
  }

  function stopTyping(username) {
    clearTimeout(state.typers.get(username));
    state.typers.delete(username);
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typers.keys()];
    $('typing').textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
  }

  async function loadEarlier() {
    const room = state.rooms.get(state.current);
    const variables = { r: room.id, n: PAGE };
    if (state.oldest !== null) variables.b = state.oldest;
    const data = await gql(
      'query($r: ID!, $n: Int, $b: Int) { messages(roomId: $r, last: $n, before: $b) { hasMore messages { seq body sentAt sender { id username } } } }',
      variables,
    );
    if (room.id !== state.current) return;
    const page = data.messages.messages;
    for (let i = page.length - 1; i >= 0; i -= 1) showMessage(page[i], true);
    $('earlier').hidden = !data.messages.hasMore;
    return page;
  }

  async function openRoom(id) {
    const room = state.rooms.get(id);
    state.current = id;
    state.oldest = null;
    for (const dispose of state.viewSubs) dispose();
    state.viewSubs = [];
    state.typers.forEach((timer) => clearTimeout(timer));
    state.typers.clear();
    renderTyping();
    for (const other of state.rooms.values()) renderRoom(other);
    $('room-title').textContent = room.name;
    $('room-info').textContent = `Room id: ${room.id}`;
    $('messages').replaceChildren();
    $('send-form').hidden = false;
    try {
      const page = await loadEarlier();
      $('messages').scrollTop = $('messages').scrollHeight;
      if (page && page.length) {
        room.lastSeq = Math.max(room.lastSeq, page[page.length - 1].seq);
        markRead(room, page[page.length - 1].seq);
      }
    } catch (error) {
      say(error.message);
    }
    state.viewSubs.push(
      subscribe('subscription($r: ID!) { typing(roomId: $r) { isTyping user { id username } } }', { r: id }, (data) => {
        const event = data.typing;
        if (event.user.id === state.me.id) return;
        stopTyping(event.user.username);
        if (event.isTyping) {
          state.typers.set(event.user.username, setTimeout(() => stopTyping(event.user.username), 6000));
          renderTyping();
        }
      }),
      subscribe('subscription($r: ID!) { notices(roomId: $r) { kind text at } }', { r: id }, (data) => showNotice(data.notices)),
    );
  }

  $('earlier').addEventListener('click', () => loadEarlier().catch((error) => say(error.message)));

  $('body').addEventListener('input', () => {
    const now = Date.now();
    if (!state.current || now - state.typingSentAt < 2000) return;
    state.typingSentAt = now;
    gql('mutation($r: ID!) { typing(roomId: $r) }', { r: state.current }).catch(() => {});
  });

  $('send-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = $('body').value;
    if (!body.trim() || !state.current) return;
    const clientMsgId = crypto.randomUUID ? crypto.randomUUID() : `c-${Date.now()}-${Math.random()}`;
    // Cleared at once (the message shows up live); put back if it could not be sent.
    $('body').value = '';
    state.typingSentAt = 0;
    try {
      await gql('mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }', {
        r: state.current,
        b: body,
        c: clientMsgId,
      });
    } catch (error) {
      if (!$('body').value) $('body').value = body;
      say(error.message);
    }
  });

  if (state.token) {
    start().catch((error) => {
      localStorage.removeItem('parley.token');
      state.token = null;
      say(error.code === 'UNAUTHENTICATED' ? 'Your session ended: sign in again.' : error.message);
    });
  }
})();
