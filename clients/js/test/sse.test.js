import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient } from '../postbox.js';
import { eventSourceClass, flush, isolated, json, recordingSleep, scriptedFetch, until } from '../test-support/fakes.js';

function sseClient(extra = {}) {
  const EventSource = eventSourceClass();
  const fetch = extra.fetch ?? scriptedFetch([]);
  const client = new PostboxClient(isolated({ transport: 'sse', EventSource, fetch, clientId: 'tab-9', ...extra }));
  return { client, EventSource, fetch };
}

test('SSE: connects with token and client id, dispatches events with their ids', () => {
  const { client, EventSource } = sseClient();
  const got = [];
  client.on('message', (data, event) => got.push(['message', data, event]));
  client.on('*', (data, event) => got.push(['*', event.event, event.id]));
  client.start();

  assert.equal(EventSource.instances.length, 1);
  const es = EventSource.instances[0];
  const url = new URL(es.url, 'http://x');
  assert.equal(url.pathname, '/api/v1/communication/sse/events/');
  assert.equal(url.searchParams.get('token'), 'tok-alice');
  assert.equal(url.searchParams.get('client_id'), 'tab-9');
  assert.equal(url.searchParams.get('last_event_id'), null);

  es.open();
  es.emit('connected', { client_id: 'tab-9' });
  es.emit('message', { id: 41, message: 'hi' }, 'u1');
  es.emit('heartbeat', '');
  es.emit('typing', { is_typing: true }, 'u2');
  client.stop();

  assert.deepEqual(got, [
    ['message', { id: 41, message: 'hi' }, { id: 'u1', event: 'message', data: { id: 41, message: 'hi' }, timestamp: null }],
    ['*', 'message', 'u1'],
    ['*', 'typing', 'u2'],
  ]);
  assert.equal(client.lastEventId, 'u2');
  assert.equal(es.readyState, EventSource.CLOSED, 'stop() closes the stream');
});

test('SSE: listens to the known types and to every type subscribed, even after connecting', () => {
  const { client, EventSource } = sseClient();
  client.start();
  const es = EventSource.instances[0];
  for (const type of ['message', 'typing', 'read_receipt', 'notification', 'presence', 'delivered', 'resync']) {
    assert.ok(es.listens(type), type);
  }
  const got = [];
  client.on('poll_closed', (data) => got.push(data));
  es.emit('poll_closed', { poll: 3 }, 'p1');
  client.stop();
  assert.deepEqual(got, [{ poll: 3 }]);
});

test('SSE: duplicates across a reconnect reach the handlers once; the manual reconnect resumes', async () => {
  const fetch = scriptedFetch([json(503, { error: 'broker_unavailable', detail: 'down', status: 503 }, { 'Retry-After': '4' })]);
  const sleep = recordingSleep();
  const { client, EventSource } = sseClient({ fetch, sleep });
  const ids = [];
  const resyncs = [];
  client.on('message', (data, event) => ids.push(event.id));
  client.on('resync', (data) => resyncs.push(data.reason));
  client.start();

  const first = EventSource.instances[0];
  first.open();
  first.emit('message', { id: 1 }, 'a');
  first.emit('message', { id: 2 }, 'b');

  // The browser reconnects by itself (it sends Last-Event-ID); the server replays b.
  first.fail(false);
  first.open();
  first.emit('message', { id: 2 }, 'b');
  first.emit('message', { id: 3 }, 'c');

  // The browser gives up (an error status): the client asks why, waits, and opens a new stream.
  first.fail(true);
  await until(() => EventSource.instances.length === 2, 200, 'a new EventSource');
  const probe = fetch.calls[0];
  assert.equal(new URL(probe.url, 'http://x').searchParams.get('token'), null, 'the probe uses the header');
  assert.equal(probe.init.headers.Authorization, 'Token tok-alice');
  assert.deepEqual(sleep.delays, [4000]);

  const second = EventSource.instances[1];
  const url = new URL(second.url, 'http://x');
  assert.equal(url.searchParams.get('last_event_id'), 'c');
  assert.equal(url.searchParams.get('client_id'), 'tab-9');
  second.open();
  second.emit('message', { id: 3 }, 'c');
  second.emit('resync', { reason: 'expired', lost: null, since: null }, 'd');
  second.emit('message', { id: 4 }, 'e');
  client.stop();

  assert.deepEqual(ids, ['a', 'b', 'c', 'e']);
  assert.deepEqual(resyncs, ['expired']);
  assert.equal(client.lastEventId, 'e');

  // Records of the closed first stream are ignored.
  first.readyState = EventSource.OPEN;
  first.emit('message', { id: 9 }, 'z');
  assert.deepEqual(ids, ['a', 'b', 'c', 'e']);
});

test('SSE: a stream refused with 401 stops the client', async () => {
  const fetch = scriptedFetch([json(401, { error: 'unauthorized', detail: 'invalid token', status: 401 })]);
  const { client, EventSource } = sseClient({ fetch });
  const reported = [];
  client.on('unauthorized', (e) => reported.push(e.code));
  client.start();
  EventSource.instances[0].fail(true);
  await until(() => reported.length === 1, 200, 'unauthorized');
  await flush();
  assert.equal(client.running, false);
  assert.equal(EventSource.instances.length, 1, 'no reconnect');
});

test('SSE: without an EventSource the client long-polls', async () => {
  const fetch = scriptedFetch([]);
  const client = new PostboxClient(isolated({ transport: 'sse', EventSource: null, fetch }));
  client.start();
  const call = await fetch.waitForCall(1);
  client.stop();
  assert.match(call.url, /\/poll\/events\//);
});

test('SSE: a stream the server ends with `reconnect` resumes without an error report', () => {
  const { client, EventSource } = sseClient();
  const errors = [];
  client.on('error', (err) => errors.push(err.code));
  client.start();
  const es = EventSource.instances[0];
  es.open();
  es.emit('message', { id: 1 }, 'a');
  es.emit('reconnect', { reason: 'confirm' });
  es.fail(false); // the stream ended; the browser reconnects by itself
  assert.deepEqual(errors, [], 'an announced end is not an error');
  es.open();
  es.emit('message', { id: 2 }, 'b');
  es.fail(false); // an unannounced interruption is reported
  client.stop();
  assert.deepEqual(errors, ['network_error']);
});

test('SSE: a stream superseded by another tab with the same client id reopens with an id of its own', () => {
  const { client, EventSource } = sseClient();
  const errors = [];
  client.on('error', (err) => errors.push(err.code));
  client.start();
  const first = EventSource.instances[0];
  first.open();
  first.emit('reconnect', { reason: 'superseded' });
  assert.equal(first.readyState, EventSource.CLOSED, 'the shared stream is closed');
  assert.equal(EventSource.instances.length, 2);
  const url = new URL(EventSource.instances[1].url, 'http://x');
  assert.notEqual(url.searchParams.get('client_id'), 'tab-9');
  assert.equal(url.searchParams.get('client_id'), client.clientId);
  client.stop();
  assert.deepEqual(errors, []);
});
