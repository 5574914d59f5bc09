import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient } from '../postbox.js';
import { FakeLocks, MemoryStorage, channelHub, deferred, events, ev, flush, isolated, json, scriptedFetch, until } from '../test-support/fakes.js';

/** A window that only dispatches what the test fires. */
function fakeWindow() {
  const listeners = new Map();
  return {
    addEventListener: (type, fn) => listeners.set(type, [...(listeners.get(type) || []), fn]),
    removeEventListener: (type, fn) => listeners.set(type, (listeners.get(type) || []).filter((f) => f !== fn)),
    fire: (type) => (listeners.get(type) || []).forEach((fn) => fn({ type })),
  };
}

test('the connection state goes connecting, connected, disconnected with a reason, and back', async () => {
  const fetch = scriptedFetch([
    events(ev('e1')),
    json(503, { error: 'broker_unavailable', detail: 'down', status: 503 }),
    events(ev('e2')),
  ]);
  const states = [];
  const client = new PostboxClient(isolated({ fetch }));
  client.on('state', (s) => states.push(`${s.state}${s.reason ? `:${s.reason}` : ''}`));
  client.start();
  await fetch.waitForCall(4);
  client.stop();
  assert.deepEqual(states, ['connecting', 'connected', 'disconnected:broker_unavailable', 'connected', 'disconnected:stopped']);
  assert.deepEqual(client.state, { state: 'disconnected', reason: 'stopped' });
});

test('401 leaves the state disconnected: unauthorized', async () => {
  const fetch = scriptedFetch([json(401, { error: 'unauthorized', detail: 'no', status: 401 })]);
  const client = new PostboxClient(isolated({ fetch }));
  client.start();
  await fetch.waitForCall(1);
  await flush(10);
  assert.deepEqual(client.state, { state: 'disconnected', reason: 'unauthorized' });
});

test('offline stops the requests until the browser is online again', async () => {
  const win = fakeWindow();
  const fetch = scriptedFetch([events(ev('e1'))]); // then hangs
  const states = [];
  const client = new PostboxClient(isolated({ fetch, window: win }));
  client.on('state', (s) => states.push(`${s.state}${s.reason ? `:${s.reason}` : ''}`));
  client.start();
  await fetch.waitForCall(2);
  win.fire('offline');
  await flush(10);
  assert.equal(fetch.calls[1].aborted, true, 'the poll in flight is aborted');
  assert.equal(fetch.calls.length, 2, 'no request while offline');
  assert.deepEqual(client.state, { state: 'disconnected', reason: 'offline' });
  fetch.push(events(ev('e2')));
  win.fire('online');
  await fetch.waitForCall(4);
  client.stop();
  assert.deepEqual(states.slice(0, 5), ['connecting', 'connected', 'disconnected:offline', 'connecting', 'connected']);
  const url = new URL(fetch.calls[2].url, 'http://x');
  assert.equal(url.searchParams.get('last_event_id'), 'e1', 'the cursor goes on');
});

test('every tab hears the connection state of the tab that holds the connection', async () => {
  const Channel = channelHub();
  const locks = new FakeLocks();
  const answer = deferred();
  const make = (fetch) =>
    new PostboxClient(isolated({ fetch, shareAcrossTabs: true, BroadcastChannel: Channel, locks, storage: new MemoryStorage() }));
  const a = make(scriptedFetch([answer]));
  const b = make(scriptedFetch([]));
  const seenByB = [];
  b.on('state', (s) => seenByB.push(s.state));
  a.start();
  await until(() => a.isLeader, 200, 'A leads');
  b.start();
  await until(() => a._coordinator.peerCount === 1, 200, 'A knows B');
  answer.resolve(events(ev('e1')));
  await until(() => b.state.state === 'connected', 200, 'B hears connected');
  a.stop();
  b.stop();
  assert.ok(seenByB.includes('connected'), String(seenByB));
});
