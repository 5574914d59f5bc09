import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, backoffDelay, parseRetryAfter } from '../postbox.js';
import { events, ev, isolated, json, recordingSleep, scriptedFetch, until } from '../test-support/fakes.js';

test('backoffDelay: full jitter within [0, min(cap, base * 2^n))', () => {
  const almostOne = () => 0.999999;
  for (let n = 0; n < 10; n += 1) {
    const ceiling = Math.min(30000, 500 * 2 ** n);
    assert.equal(backoffDelay(n, () => 0), 0, `attempt ${n} can be 0`);
    assert.equal(backoffDelay(n, almostOne), ceiling - 1, `attempt ${n} just below ${ceiling}`);
    assert.equal(backoffDelay(n, () => 0.5), Math.floor(ceiling / 2));
  }
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, almostOne) + 1),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
  );
  assert.equal(backoffDelay(3, () => 0.5, { base: 100, factor: 3, cap: 1000 }), 500);
  for (let i = 0; i < 1000; i += 1) {
    const d = backoffDelay(4);
    assert.ok(d >= 0 && d < 8000 && Number.isInteger(d));
  }
});

test('parseRetryAfter: seconds or HTTP date, in ms', () => {
  assert.equal(parseRetryAfter('3'), 3000);
  assert.equal(parseRetryAfter(' 0 '), 0);
  assert.equal(parseRetryAfter('1.5'), 1500);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('soon'), null);
  const now = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT');
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', now), 10000);
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:27:00 GMT', now), 0);
});

test('network errors and 5xx back off exponentially, then reset after a success', async () => {
  const fetch = scriptedFetch([
    'network',
    json(500, { error: 'internal_error', detail: 'boom', status: 500 }),
    json(502, { error: 'bad_gateway', detail: 'proxy', status: 502 }),
    'network',
    events(ev('e1')), // success: the next failure starts over
    'network',
    'network',
  ]);
  const sleep = recordingSleep();
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, sleep, random: () => 0.999999, onError: (e) => errors.push(e) }));
  client.start();
  await fetch.waitForCall(8); // 7 scripted answers, then a poll that hangs
  client.stop();

  assert.deepEqual(sleep.delays, [499, 999, 1999, 3999, 499, 999]);
  assert.deepEqual(
    errors.map((e) => [e.code, e.status, e.fatal]),
    [
      ['network_error', 0, false],
      ['internal_error', 500, false],
      ['bad_gateway', 502, false],
      ['network_error', 0, false],
      ['network_error', 0, false],
      ['network_error', 0, false],
    ],
  );
});

test('503 and 429 wait at least Retry-After', async () => {
  const fetch = scriptedFetch([
    json(503, { error: 'broker_unavailable', detail: 'RabbitMQ is down', status: 503 }, { 'Retry-After': '7' }),
    json(429, { error: 'rate_limited', detail: 'slow down', status: 429 }, { 'Retry-After': '2' }),
    json(503, { error: 'database_unavailable', detail: 'db', status: 503 }), // no header: plain backoff
    events(),
  ]);
  const sleep = recordingSleep();
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, sleep, random: () => 0.5 }));
  client.on('error', (e) => errors.push(e));
  client.start();
  await fetch.waitForCall(5);
  client.stop();

  // Retry-After wins over the jittered backoff (250, then 500), which wins when there is no header (1000).
  assert.deepEqual(sleep.delays, [7000, 2000, 1000]);
  assert.deepEqual(errors.map((e) => [e.code, e.retryAfter]), [
    ['broker_unavailable', 7000],
    ['rate_limited', 2000],
    ['database_unavailable', null],
  ]);
});

test('Retry-After shorter than the backoff does not shorten it', async () => {
  const fetch = scriptedFetch(['network', 'network', 'network', json(503, { error: 'x', detail: 'y', status: 503 }, { 'Retry-After': '1' })]);
  const sleep = recordingSleep();
  const client = new PostboxClient(isolated({ fetch, sleep, random: () => 0.999999 }));
  client.start();
  await fetch.waitForCall(5);
  client.stop();
  assert.deepEqual(sleep.delays, [499, 999, 1999, 3999]);
});

test('a poll answered 200 is followed by the next poll at once, without sleeping', async () => {
  const fetch = scriptedFetch([events(), events(ev('a')), events()]);
  const sleep = recordingSleep();
  const client = new PostboxClient(isolated({ fetch, sleep }));
  client.start();
  await fetch.waitForCall(4);
  client.stop();
  assert.deepEqual(sleep.delays, []);
});

test('a 200 that is not the poll shape is retried with backoff', async () => {
  const fetch = scriptedFetch([new Response('<html>proxy</html>', { status: 200 }), json(200, { nope: true }), events()]);
  const sleep = recordingSleep();
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, sleep, random: () => 0.5, onError: (e) => errors.push(e.code) }));
  client.start();
  await fetch.waitForCall(4);
  client.stop();
  assert.deepEqual(errors, ['bad_response', 'bad_response']);
  assert.deepEqual(sleep.delays, [250, 500]);
});

test('the default sleep returns as soon as the client stops', async () => {
  // Real timers and sleep: a 30 s backoff must not keep stop() waiting.
  const fetch = scriptedFetch(['network']);
  const client = new PostboxClient({ ...isolated({ fetch, random: () => 0.999999 }), sleep: undefined, backoff: { base: 30000 } });
  client.start();
  await until(() => fetch.calls.length === 1, 200, 'first poll');
  const started = Date.now();
  client.stop();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(fetch.calls.length, 1);
  assert.ok(Date.now() - started < 1000);
});
