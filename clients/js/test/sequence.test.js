import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, SequenceTracker } from '../postbox.js';
import { events, isolated, json, until } from '../test-support/fakes.js';

function seqEv(id, seq, event = 'message') {
  return { id, event, data: { id }, timestamp: 1700000000.25, seq };
}

/** A fetch that answers polls from `polls` (then hangs) and `poll/missed/` from `missed`. */
function routedFetch(polls, missed) {
  const calls = [];
  const fetch = (url, init = {}) => {
    calls.push(String(url));
    const queue = String(url).includes('/poll/missed/') ? missed : polls;
    const step = queue.shift();
    if (step === 'network') return Promise.reject(new TypeError('Failed to fetch'));
    if (step) return Promise.resolve(typeof step === 'function' ? step(url) : step);
    return new Promise((resolve, reject) => {
      init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')), { once: true });
    });
  };
  fetch.calls = calls;
  fetch.missedCalls = () => calls.filter((u) => u.includes('/poll/missed/')).map((u) => new URL(u, 'http://x'));
  return fetch;
}

test('the tracker finds jumps and closes them when the numbers arrive', () => {
  const t = new SequenceTracker();
  assert.equal(t.see(41), false);
  assert.equal(t.last, 41);
  assert.equal(t.see(44), true);
  assert.equal(t.see(42), true);
  assert.equal(t.last, 42);
  assert.equal(t.see(43), false);
  assert.equal(t.last, 44);
  assert.equal(t.see(undefined), false, 'events without a number change nothing');
  assert.equal(t.see(40), false, 'old numbers change nothing');
});

test('a jump in the sequence is filled from poll/missed/ and the missing events reach the handlers', async () => {
  const fetch = routedFetch(
    [events(seqEv('a', 41)), events(seqEv('d', 44))],
    [json(200, { events: [seqEv('b', 42), seqEv('c', 43), seqEv('d', 44)], last_seq: 44, kept: true, more: false })],
  );
  const got = [];
  const resyncs = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (d) => resyncs.push(d) }));
  client.on('message', (_data, event) => got.push(event.id));
  client.start();
  await until(() => got.length === 4, 500, 'four messages');
  client.stop();
  assert.deepEqual(got, ['a', 'd', 'b', 'c'], 'each once, d not twice');
  assert.equal(fetch.missedCalls()[0].searchParams.get('after'), '41');
  assert.equal(client.lastSeq, 44);
  assert.equal(client.lastEventId, 'd', 'the cursor stays the postbox one');
  assert.deepEqual(resyncs, []);
});

test('a resync with a kept range is filled instead of announced', async () => {
  const resync = { id: 'r', event: 'resync', data: { reason: 'maxlen', lost: 2, lost_unknown: false, since: 1, seq_from: 3, seq_to: 4 }, timestamp: 1 };
  const fetch = routedFetch(
    [events(resync, seqEv('e', 5))],
    [json(200, { events: [seqEv('c', 3), seqEv('d', 4), seqEv('e', 5)], last_seq: 5, kept: true, more: false })],
  );
  const got = [];
  const resyncs = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (d) => resyncs.push(d) }));
  client.on('message', (_data, event) => got.push(event.id));
  client.start();
  await until(() => got.length === 3, 500, 'three messages');
  client.stop();
  assert.deepEqual(got, ['e', 'c', 'd']);
  assert.equal(fetch.missedCalls()[0].searchParams.get('after'), '2');
  assert.deepEqual(resyncs, [], 'nothing to reload');
});

test('a range no longer kept is announced as a resync, once', async () => {
  const resync = { id: 'r', event: 'resync', data: { reason: 'expired', lost: 2, lost_unknown: false, since: 1, seq_from: 3, seq_to: 4 }, timestamp: 1 };
  const fetch = routedFetch(
    [events(resync)],
    [json(200, { events: [], last_seq: 9, kept: false, more: false })],
  );
  const resyncs = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (d) => resyncs.push(d) }));
  client.start();
  await until(() => resyncs.length === 1, 500, 'the resync');
  client.stop();
  assert.equal(resyncs[0].reason, 'expired');
  assert.equal(client.lastSeq, 9, 'counting goes on from the last number');
});

test('a jump that cannot be fetched falls back to a resync', async () => {
  const fetch = routedFetch([events(seqEv('a', 1)), events(seqEv('c', 3))], ['network']);
  const resyncs = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (d) => resyncs.push(d) }));
  client.start();
  await until(() => resyncs.length === 1, 500, 'the resync');
  client.stop();
  assert.equal(resyncs[0].seq_from, 2);
  assert.equal(resyncs[0].lost_unknown, true);
  assert.equal(client.lastSeq, 3, 'counting goes on from the highest number seen');
});

test('a resync that lost events without a number is filled and announced', async () => {
  const resync = { id: 'r', event: 'resync', data: { reason: 'maxlen', lost: 3, lost_unknown: false, since: 1, seq_from: 3, seq_to: 4, lost_unnumbered: 1 }, timestamp: 1 };
  const fetch = routedFetch(
    [events(resync)],
    [json(200, { events: [seqEv('c', 3), seqEv('d', 4)], last_seq: 4, kept: true, more: false })],
  );
  const got = [];
  const resyncs = [];
  const client = new PostboxClient(isolated({ fetch, onResync: (d) => resyncs.push(d) }));
  client.on('message', (_data, event) => got.push(event.id));
  client.start();
  await until(() => got.length === 2 && resyncs.length === 1, 500, 'the fill and the resync');
  client.stop();
  assert.deepEqual(got, ['c', 'd']);
  assert.equal(resyncs[0].lost_unnumbered, 1);
});
