import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient } from '../postbox.js';
import { events, ev, isolated, scriptedFetch } from '../test-support/fakes.js';

test('a resync event calls onResync with its data, and the resync handlers', async () => {
  const info = { reason: 'maxlen', lost: 12, since: 1700000000.125 };
  const fetch = scriptedFetch([events(ev('r1', 'resync', info), ev('m1', 'message', { id: 5 }))]);
  const calls = [];
  const client = new PostboxClient(
    isolated({
      fetch,
      onResync: (data, event) => calls.push(['onResync', data, event.id]),
    }),
  );
  client.on('resync', (data) => calls.push(['on', data]));
  client.on('message', (data) => calls.push(['message', data.id]));
  client.start();
  await fetch.waitForCall(2);
  client.stop();
  assert.deepEqual(calls, [
    ['onResync', info, 'r1'],
    ['on', info],
    ['message', 5],
  ]);
  assert.equal(client.lastEventId, 'm1');
});

test('resync with unknown counts and a redelivered resync is reported once', async () => {
  const info = { reason: 'queue_deleted', lost: null, since: null };
  const fetch = scriptedFetch([events(ev('r1', 'resync', info)), events(ev('r1', 'resync', info))]);
  const seen = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (data) => seen.push(data) }));
  client.start();
  await fetch.waitForCall(3);
  client.stop();
  assert.deepEqual(seen, [info]);
});
