import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, RecentIds } from '../postbox.js';
import { events, ev, isolated, scriptedFetch } from '../test-support/fakes.js';

test('RecentIds: remembers ids, reports duplicates, forgets the oldest beyond its limit', () => {
  const ids = new RecentIds(3);
  assert.equal(ids.add('a'), true);
  assert.equal(ids.add('a'), false);
  assert.equal(ids.add('b'), true);
  assert.equal(ids.add('c'), true);
  assert.equal(ids.size, 3);
  assert.equal(ids.add('d'), true); // evicts 'a'
  assert.equal(ids.size, 3);
  assert.equal(ids.has('a'), false);
  assert.equal(ids.has('b'), true);
  assert.equal(ids.add('a'), true); // forgotten, so new again (and evicts 'b')
  assert.equal(ids.has('b'), false);
  assert.equal(new RecentIds().limit, 1000);
});

test('an event delivered twice reaches the handlers once', async () => {
  // The answer carrying e2 was lost on the way back from a proxy's point of view: the server sends e2
  // again, after e1 and e2 had already been handled.
  const fetch = scriptedFetch([
    events(ev('e1'), ev('e2')),
    events(ev('e2'), ev('e3')),
    events(ev('e1')),
  ]);
  const client = new PostboxClient(isolated({ fetch }));
  const seen = [];
  const all = [];
  client.on('message', (data, event) => seen.push([data.id, event.id]));
  client.on('*', (data, event) => all.push(event.id));
  client.start();
  await fetch.waitForCall(4);
  client.stop();
  assert.deepEqual(seen, [['e1', 'e1'], ['e2', 'e2'], ['e3', 'e3']]);
  assert.deepEqual(all, ['e1', 'e2', 'e3']);
});

test('the bounded set forgets old ids (dedupeLimit)', async () => {
  const fetch = scriptedFetch([events(ev('a'), ev('b'), ev('c')), events(ev('a'), ev('c'))]);
  const client = new PostboxClient(isolated({ fetch, dedupeLimit: 2 }));
  const seen = [];
  client.on('message', (data) => seen.push(data.id));
  client.start();
  await fetch.waitForCall(3);
  client.stop();
  // 'a' fell out of the last two ids remembered; 'c' did not.
  assert.deepEqual(seen, ['a', 'b', 'c', 'a']);
});

test('handlers: per type, "*" for all, off() and the returned unsubscribe', async () => {
  const fetch = scriptedFetch([
    events(ev('1', 'message'), ev('2', 'typing', { is_typing: true }), ev('3', 'custom_thing', { x: 1 })),
    events(ev('4', 'message'), ev('5', 'typing', { is_typing: false })),
  ]);
  const client = new PostboxClient(isolated({ fetch }));
  const log = [];
  const onMessage = (d, e) => log.push(`message:${e.id}`);
  client.on('message', onMessage);
  const unsubscribeTyping = client.on('typing', (d, e) => log.push(`typing:${e.id}:${d.is_typing}`));
  client.on('*', (d, e) => {
    log.push(`*:${e.event}`);
    if (e.id === '3') {
      client.off('message', onMessage);
      unsubscribeTyping();
    }
  });
  client.start();
  await fetch.waitForCall(3);
  client.stop();
  assert.deepEqual(log, [
    'message:1',
    '*:message',
    'typing:2:true',
    '*:typing',
    '*:custom_thing',
    '*:message',
    '*:typing',
  ]);
});

test('a throwing handler is reported and does not stop the others', async () => {
  const fetch = scriptedFetch([events(ev('1'), ev('2'))]);
  const errors = [];
  const client = new PostboxClient(isolated({ fetch, onError: (e) => errors.push(e) }));
  const seen = [];
  client.on('message', () => {
    throw new Error('oops');
  });
  client.on('message', (d) => seen.push(d.id));
  client.start();
  await fetch.waitForCall(2);
  client.stop();
  assert.deepEqual(seen, ['1', '2']);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].code, 'handler_error');
  assert.equal(errors[0].cause.message, 'oops');
  assert.equal(errors[0].fatal, false);
});
