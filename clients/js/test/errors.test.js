import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient } from '../postbox.js';
import { events, ev, flush, isolated, json, scriptedFetch } from '../test-support/fakes.js';

test('401 stops the loop and reports unauthorized and a fatal error', async () => {
  const fetch = scriptedFetch([
    events(ev('e1')),
    json(401, { error: 'unauthorized', detail: 'invalid token', status: 401 }),
    events(ev('never')),
  ]);
  const reported = [];
  const client = new PostboxClient(isolated({ fetch, onError: (e) => reported.push(['onError', e.code, e.fatal]) }));
  client.on('unauthorized', (e) => reported.push(['unauthorized', e.status, e.detail, client.running]));
  client.on('error', (e) => reported.push(['error', e.code]));
  client.start();
  await fetch.waitForCall(2);
  await flush();
  assert.equal(fetch.calls.length, 2, 'no poll after the 401');
  assert.equal(client.running, false);
  assert.deepEqual(reported, [
    ['unauthorized', 401, 'invalid token', false],
    ['onError', 'unauthorized', true],
    ['error', 'unauthorized'],
  ]);
});

test('403 stops too; 400 and 404 are retried', async () => {
  const fetch = scriptedFetch([
    json(400, { error: 'bad_request', detail: 'client_id', status: 400 }),
    new Response('not found', { status: 404, statusText: 'Not Found' }),
    json(403, { error: 'forbidden', detail: 'disabled', status: 403 }),
  ]);
  const codes = [];
  const client = new PostboxClient(isolated({ fetch, onError: (e) => codes.push([e.code, e.fatal]) }));
  let unauthorized = 0;
  client.on('unauthorized', () => {
    unauthorized += 1;
  });
  client.start();
  await fetch.waitForCall(3);
  await flush();
  assert.equal(fetch.calls.length, 3);
  assert.equal(client.running, false);
  assert.deepEqual(codes, [['bad_request', false], ['http_404', false], ['forbidden', true]]);
  assert.equal(unauthorized, 0);
});

test('disconnect() aborts the poll in flight and posts disconnect', async () => {
  const fetch = scriptedFetch([events(ev('e1')), 'hang', json(200, { status: 'disconnected', user_id: 2 })]);
  const client = new PostboxClient(isolated({ fetch }));
  client.start();
  const inFlight = await fetch.waitForCall(2);
  assert.equal(inFlight.aborted, false);

  const ok = await client.disconnect();
  assert.equal(ok, true);
  assert.equal(inFlight.aborted, true);
  assert.equal(inFlight.init.signal.aborted, true);
  assert.equal(client.running, false);

  const last = fetch.calls[2];
  assert.equal(last.url, '/api/v1/communication/poll/disconnect/');
  assert.equal(last.init.method, 'POST');
  assert.equal(last.init.headers.Authorization, 'Token tok-alice');
  await flush();
  assert.equal(fetch.calls.length, 3, 'no poll after disconnect');
});

test('disconnect() resolves false when the server cannot be reached', async () => {
  const fetch = scriptedFetch(['network']);
  const client = new PostboxClient(isolated({ fetch }));
  assert.equal(await client.disconnect(), false);
});

test('a poll that gets no answer is aborted after requestTimeout and retried', async () => {
  const { FakeClock } = await import('../test-support/fakes.js');
  const clock = new FakeClock();
  const fetch = scriptedFetch(['hang', events(ev('e1'))]);
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, timers: clock, requestTimeout: 20000, onError: (e) => errors.push(e.code) }));
  client.start();
  const first = await fetch.waitForCall(1);
  await clock.advance(19999);
  assert.equal(first.aborted, false);
  await clock.advance(1);
  assert.equal(first.aborted, true);
  await fetch.waitForCall(3);
  client.stop();
  assert.deepEqual(errors, ['timeout']);
});

test('on pagehide the last tab sends a disconnect beacon with the token in the query', async () => {
  const beacons = [];
  const win = new EventTarget();
  win.onpagehide = null; // feature detection: this "browser" has pagehide
  const fetch = scriptedFetch([]);
  const client = new PostboxClient(
    isolated({ fetch, token: 'a b/c', window: win, sendBeacon: (url) => beacons.push(url) > 0 }),
  );
  client.start();
  const inFlight = await fetch.waitForCall(1);

  const hide = new Event('pagehide');
  hide.persisted = true; // into the back/forward cache
  win.dispatchEvent(hide);
  assert.deepEqual(beacons, ['/api/v1/communication/poll/disconnect/?token=a%20b%2Fc']);
  assert.equal(inFlight.aborted, true);
  assert.equal(client.running, false);

  // Back from the cache: polling resumes.
  const show = new Event('pageshow');
  show.persisted = true;
  win.dispatchEvent(show);
  assert.equal(client.running, true);
  await fetch.waitForCall(2);
  client.stop();

  // After stop() the page events are ignored.
  win.dispatchEvent(new Event('pagehide'));
  assert.equal(beacons.length, 1);
});

test('without sendBeacon the unload disconnect falls back to a keepalive fetch', async () => {
  const win = new EventTarget();
  win.onpagehide = null;
  const fetch = scriptedFetch(['hang', json(200, { status: 'disconnected', user_id: 1 })]);
  const client = new PostboxClient(isolated({ fetch, window: win, sendBeacon: null }));
  client.start();
  await fetch.waitForCall(1);
  win.dispatchEvent(new Event('pagehide'));
  const call = await fetch.waitForCall(2);
  assert.equal(call.url, '/api/v1/communication/poll/disconnect/');
  assert.equal(call.init.keepalive, true);
  assert.equal(call.init.headers.Authorization, 'Token tok-alice');
});
