import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, generateClientId } from '../postbox.js';
import { MemoryStorage, events, ev, isolated, json, scriptedFetch } from '../test-support/fakes.js';

test('every poll after the first carries last_event_id of the last processed event', async () => {
  const fetch = scriptedFetch([
    events(ev('e1'), ev('e2')),
    events(), // nothing new: the cursor stays
    'network', // a retry carries the cursor too
    events(ev('e3')),
  ]);
  const client = new PostboxClient(isolated({ fetch, clientId: 'tab-1' }));
  assert.equal(client.lastEventId, null);
  client.start();
  await fetch.waitForCall(5);
  client.stop();

  const polls = fetch.polls();
  assert.equal(polls.length, 5);
  for (const url of polls) {
    assert.equal(url.pathname, '/api/v1/communication/poll/events/');
    assert.equal(url.searchParams.get('client_id'), 'tab-1');
    assert.equal(url.searchParams.get('token'), null, 'the token travels in the header');
  }
  assert.deepEqual(
    polls.map((u) => u.searchParams.get('last_event_id')),
    [null, 'e2', 'e2', 'e2', 'e3'],
  );
  assert.equal(client.lastEventId, 'e3');
  assert.equal(fetch.calls[0].init.headers.Authorization, 'Token tok-alice');
  assert.equal(fetch.calls[0].init.method, 'GET');
});

test('the cursor moves only once the handlers ran', async () => {
  const fetch = scriptedFetch([events(ev('e1'), ev('e2'))]);
  const client = new PostboxClient(isolated({ fetch }));
  const cursors = [];
  client.on('message', (d) => cursors.push([d.id, client.lastEventId]));
  client.start();
  await fetch.waitForCall(2);
  client.stop();
  assert.deepEqual(cursors, [['e1', null], ['e2', 'e1']]);
});

test('a client stopped while an answer arrives does not process it (the server sends it again)', async () => {
  let client;
  const fetch = scriptedFetch([
    () => {
      client.stop();
      return events(ev('late'));
    },
  ]);
  client = new PostboxClient(isolated({ fetch }));
  const seen = [];
  client.on('message', (d) => seen.push(d.id));
  client.start();
  await fetch.waitForCall(1);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, []);
  assert.equal(client.lastEventId, null);
});

test('a handler that stops the client ends the batch there; the cursor names the last handled event', async () => {
  const storage = new MemoryStorage();
  const fetch = scriptedFetch([events(ev('e1'), ev('e2'), ev('e3'))]);
  const client = new PostboxClient(isolated({ fetch, storage }));
  const seen = [];
  client.on('message', (d) => {
    seen.push(d.id);
    if (d.id === 'e2') client.stop();
  });
  client.start();
  await fetch.waitForCall(1);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, ['e1', 'e2']);
  assert.equal(client.lastEventId, 'e2');
  assert.equal(new PostboxClient(isolated({ fetch, storage })).lastEventId, 'e2', 'saved for a reload');
});

test('baseUrl prefixes every path', async () => {
  const fetch = scriptedFetch([events()]);
  const client = new PostboxClient(isolated({ fetch, baseUrl: 'https://chat.example.com/' }));
  client.start();
  await fetch.waitForCall(2);
  client.stop();
  assert.match(fetch.calls[0].url, /^https:\/\/chat\.example\.com\/api\/v1\/communication\/poll\/events\/\?client_id=/);
});

test('client id and cursor survive a reload through sessionStorage', async () => {
  const storage = new MemoryStorage();
  const fetch1 = scriptedFetch([events(ev('e1'), ev('e7'))]);
  const first = new PostboxClient(isolated({ fetch: fetch1, storage }));
  const id = first.clientId;
  assert.match(id, /^[A-Za-z0-9_-]{1,64}$/);
  first.start();
  await fetch1.waitForCall(2);
  first.stop();

  // The page reloads: same tab, same sessionStorage.
  const fetch2 = scriptedFetch([]);
  const second = new PostboxClient(isolated({ fetch: fetch2, storage }));
  assert.equal(second.clientId, id);
  assert.equal(second.lastEventId, 'e7');
  second.start();
  await fetch2.waitForCall(1);
  second.stop();
  const [url] = fetch2.polls();
  assert.equal(url.searchParams.get('client_id'), id);
  assert.equal(url.searchParams.get('last_event_id'), 'e7');

  // Another user in the same tab gets its own entry.
  const other = new PostboxClient(isolated({ fetch: fetch2, storage, token: 'tok-bob' }));
  assert.notEqual(other.clientId, id);
  assert.equal(other.lastEventId, null);
});

test('client ids: explicit ones are validated, generated ones fit the server pattern', () => {
  assert.throws(() => new PostboxClient(isolated({ clientId: 'has space' })), TypeError);
  assert.throws(() => new PostboxClient(isolated({ clientId: 'x'.repeat(65) })), TypeError);
  assert.throws(() => new PostboxClient({ ...isolated(), token: '' }), TypeError);
  assert.equal(new PostboxClient(isolated({ clientId: 'tab_A-1' })).clientId, 'tab_A-1');

  assert.match(generateClientId(), /^[0-9a-f-]{36}$/);
  try {
    // Without crypto.randomUUID (old browsers, insecure contexts): letters and digits from random().
    Object.defineProperty(globalThis.crypto, 'randomUUID', { value: undefined, configurable: true });
    assert.equal(generateClientId(() => 0), 'A'.repeat(22));
    assert.match(generateClientId(), /^[A-Za-z0-9]{22}$/);
  } finally {
    delete globalThis.crypto.randomUUID; // uncovers the prototype's again
  }
});

test('a poll superseded by another tab with the same client id takes a client id of its own', async () => {
  const fetch = scriptedFetch([
    events(ev('e1')),
    json(409, { error: 'superseded', detail: 'a newer poll took the postbox over', status: 409 }),
    events(ev('e2')),
  ]);
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, clientId: 'tab-copy' }));
  client.on('error', (err) => errors.push(err.code));
  client.start();
  await fetch.waitForCall(3);
  client.stop();
  const polls = fetch.polls();
  assert.equal(polls[0].searchParams.get('client_id'), 'tab-copy');
  assert.equal(polls[1].searchParams.get('client_id'), 'tab-copy');
  const renewed = polls[2].searchParams.get('client_id');
  assert.notEqual(renewed, 'tab-copy', 'a new client id, at once');
  assert.match(renewed, /^[A-Za-z0-9_-]{1,64}$/);
  assert.equal(polls[2].searchParams.get('last_event_id'), null, 'a new postbox starts without a cursor');
  assert.equal(client.clientId, renewed);
  assert.deepEqual(errors, [], 'not an error for the application');
});
