import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient } from '../postbox.js';
import { events, ev, flush, isolated, json, scriptedFetch, until } from '../test-support/fakes.js';

const unauthorized = () => json(401, { error: 'unauthorized', detail: 'token expired', status: 401 });

test('on 401 the client asks getToken for a fresh token and goes on with its cursor', async () => {
  const fetch = scriptedFetch([events(ev('e1')), unauthorized(), events(ev('e2'))]);
  const got = [];
  let asked = 0;
  const client = new PostboxClient(
    isolated({
      fetch,
      getToken: async () => {
        asked += 1;
        return 'tok-fresh';
      },
    }),
  );
  client.on('message', (_d, e) => got.push(e.id));
  client.start();
  await until(() => got.length === 2, 500, 'both events');
  client.stop();
  assert.equal(asked, 1);
  assert.deepEqual(got, ['e1', 'e2']);
  const third = fetch.calls[2];
  assert.equal(third.init.headers.Authorization, 'Token tok-fresh');
  const url = new URL(third.url, 'http://x');
  assert.equal(url.searchParams.get('last_event_id'), 'e1', 'the cursor survived');
  assert.equal(url.searchParams.get('client_id'), new URL(fetch.calls[0].url, 'http://x').searchParams.get('client_id'));
});

test('a getToken that gives nothing new ends in unauthorized, as without it', async () => {
  const fetch = scriptedFetch([unauthorized(), events(ev('never'))]);
  const seen = [];
  const client = new PostboxClient(isolated({ fetch, token: 'tok-alice', getToken: () => 'tok-alice' }));
  client.on('unauthorized', (e) => seen.push(e.status));
  client.start();
  await fetch.waitForCall(1);
  await flush(20);
  assert.deepEqual(seen, [401]);
  assert.equal(client.running, false);
  assert.equal(fetch.calls.length, 1);
});

test('tokens that keep being refused stop the client after three fresh ones', async () => {
  const fetch = scriptedFetch([unauthorized(), unauthorized(), unauthorized(), unauthorized(), events(ev('never'))]);
  let n = 0;
  const seen = [];
  const client = new PostboxClient(isolated({ fetch, getToken: () => `tok-${(n += 1)}` }));
  client.on('unauthorized', () => seen.push('unauthorized'));
  client.start();
  await until(() => seen.length === 1, 500, 'unauthorized');
  assert.equal(n, 3);
  assert.equal(fetch.calls.length, 4);
  assert.equal(client.running, false);
});
