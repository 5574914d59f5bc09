import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, TabCoordinator } from '../postbox.js';
import {
  FakeClock,
  FakeLocks,
  MemoryStorage,
  channelHub,
  deferred,
  events,
  ev,
  flush,
  isolated,
  json,
  scriptedFetch,
  until,
} from '../test-support/fakes.js';

/** One browser "tab": its own fetch, storage and handlers; the channel hub and locks are the origin's. */
function tab(origin, name, steps = [], extra = {}) {
  const fetch = scriptedFetch(steps);
  const received = [];
  const client = new PostboxClient(
    isolated({
      fetch,
      shareAcrossTabs: true,
      BroadcastChannel: origin.Channel,
      locks: origin.locks,
      storage: new MemoryStorage(),
      timers: origin.clock ?? new FakeClock(),
      ...extra,
    }),
  );
  client.on('*', (data, event) => received.push(event.id));
  return { name, client, fetch, received };
}

test('Web Locks: only the leader polls, the other tab gets its events, and takes over when it stops', async () => {
  const origin = { Channel: channelHub(), locks: new FakeLocks() };
  const answer = deferred(); // A's first poll answers once B has joined
  const a = tab(origin, 'A', [answer]);
  const b = tab(origin, 'B', [events(ev('e2'), ev('e3'))]);

  a.client.start();
  await until(() => a.client.isLeader, 200, 'A leads');
  b.client.start();
  await until(() => a.client._coordinator.peerCount === 1, 200, 'A knows B');
  answer.resolve(events(ev('e1'), ev('e2')));
  await until(() => b.received.length === 2, 200, 'B gets e1 and e2 from A');

  assert.deepEqual(a.received, ['e1', 'e2']);
  assert.deepEqual(b.received, ['e1', 'e2']);
  assert.equal(b.client.isLeader, false);
  assert.equal(b.fetch.calls.length, 0, 'the follower does not poll');
  assert.equal(a.fetch.calls.length, 2, 'the leader answered once and polls again');
  // The follower adopted the leader's client id and cursor.
  assert.equal(b.client.clientId, a.client.clientId);
  assert.equal(b.client.lastEventId, 'e2');

  // A closes: B takes over the same client id from the same cursor; e2 comes again and is dropped.
  a.client.stop();
  await until(() => b.client.isLeader, 200, 'B leads');
  const first = await b.fetch.waitForCall(1);
  const url = new URL(first.url, 'http://x');
  assert.equal(url.searchParams.get('client_id'), a.client.clientId);
  assert.equal(url.searchParams.get('last_event_id'), 'e2');
  await b.fetch.waitForCall(2);
  assert.deepEqual(b.received, ['e1', 'e2', 'e3']);
  assert.equal(a.fetch.calls[1].aborted, true, 'the old leader aborted its poll');
  b.client.stop();
});

test('Web Locks: a tab that joins later learns the client id and cursor before any event', async () => {
  const origin = { Channel: channelHub(), locks: new FakeLocks() };
  const a = tab(origin, 'A', [events(ev('e1'))]);
  a.client.start();
  await a.fetch.waitForCall(2);
  const b = tab(origin, 'B');
  b.client.start();
  await until(() => b.client.lastEventId === 'e1', 200, 'B syncs');
  assert.equal(b.client.clientId, a.client.clientId);
  assert.equal(b.fetch.calls.length, 0);
  a.client.stop();
  b.client.stop();
});

test('heartbeat election (no Web Locks): one leader, followers take over on resign and on silence', async () => {
  const clock = new FakeClock();
  const origin = { Channel: channelHub(), locks: null, clock };
  const answer = deferred();
  const a = tab(origin, 'A', [answer]);
  const b = tab(origin, 'B');
  const c = tab(origin, 'C');

  a.client.start();
  await clock.advance(200); // nobody answered: A claims
  assert.equal(a.client.isLeader, true);
  b.client.start();
  c.client.start();
  await until(() => a.client._coordinator.peerCount === 2, 200, 'A knows B and C');
  answer.resolve(events(ev('e1')));
  await until(() => b.received.length === 1 && c.received.length === 1, 200, 'followers get e1');
  await clock.advance(10000); // heartbeats keep A the leader
  assert.equal(b.client.isLeader, false);
  assert.equal(c.client.isLeader, false);
  assert.equal(b.fetch.calls.length + c.fetch.calls.length, 0);

  // A resigns: B and C both claim; the smaller tab id keeps the lead.
  a.client.stop();
  await until(() => b.client.isLeader || c.client.isLeader, 200, 'a new leader');
  await clock.advance(1000);
  assert.equal([b, c].filter((t) => t.client.isLeader).length, 1, 'exactly one leader');
  const leader = b.client.isLeader ? b : c;
  const follower = leader === b ? c : b;
  await leader.fetch.waitForCall(1);
  assert.equal(new URL(leader.fetch.calls[0].url, 'http://x').searchParams.get('client_id'), a.client.clientId);
  assert.equal(new URL(leader.fetch.calls.at(-1).url, 'http://x').searchParams.get('last_event_id'), 'e1');

  // The leader's tab freezes (no resign, no heartbeat): the follower takes over after 3 s of silence.
  const polled = follower.fetch.calls.length; // it may have polled while both claimed
  leader.client._coordinator._channel.frozen = true;
  await clock.advance(2900);
  assert.equal(follower.client.isLeader, false);
  await clock.advance(200);
  assert.equal(follower.client.isLeader, true);
  await follower.fetch.waitForCall(polled + 1);
  leader.client.stop();
  follower.client.stop();
});

test('TabCoordinator: two tabs claiming at once settle on the smaller id', async () => {
  const Channel = channelHub();
  const clock = new FakeClock();
  const roles = [];
  const make = (tabId) =>
    new TabCoordinator({
      name: 'u1',
      tabId,
      BroadcastChannel: Channel,
      timers: clock,
      onRoleChange: (leader) => roles.push([tabId, leader]),
    });
  const x = make('tab-b');
  const y = make('tab-a');
  x.start();
  y.start();
  // Neither hears a heartbeat during the election window: both claim.
  x._claim();
  y._claim();
  await flush();
  await clock.advance(1000);
  assert.equal(y.isLeader, true);
  assert.equal(x.isLeader, false);
  assert.deepEqual(roles, [['tab-b', true], ['tab-a', true], ['tab-b', false]]);
  assert.equal(x.peerCount, 1);
  y.stop();
  await flush();
  assert.equal(x.peerCount, 0);
  assert.equal(x.isLeader, true, 'the resign hands the lead over at once');
  x.stop();
});

test('TabCoordinator: messages reach the other tabs only', async () => {
  const Channel = channelHub();
  const got = [];
  const locks = new FakeLocks();
  const make = (tabId) =>
    new TabCoordinator({ name: 'u1', tabId, BroadcastChannel: Channel, locks, onMessage: (m, from) => got.push([tabId, m, from]) });
  const x = make('x');
  const y = make('y');
  const other = new TabCoordinator({ name: 'u2', tabId: 'z', BroadcastChannel: Channel, onMessage: (m) => got.push(['z', m]) });
  x.start();
  y.start();
  other.start();
  x.send({ n: 1 });
  await flush();
  assert.deepEqual(got, [['y', { n: 1 }, 'x']]);
  x.stop();
  y.stop();
  other.stop();
});

test('a 401 at the leader stops every tab', async () => {
  const origin = { Channel: channelHub(), locks: new FakeLocks() };
  const answer = deferred();
  const a = tab(origin, 'A', [answer]);
  const b = tab(origin, 'B');
  const unauthorized = [];
  b.client.on('unauthorized', (e) => unauthorized.push([e.code, e.detail, e.fatal]));
  a.client.start();
  await until(() => a.client.isLeader, 200, 'A leads');
  b.client.start();
  await until(() => a.client._coordinator.peerCount === 1, 200, 'A knows B');
  answer.resolve(json(401, { error: 'unauthorized', detail: 'revoked', status: 401 }));
  await until(() => unauthorized.length === 1, 200, 'B hears of the 401');
  await flush();
  assert.deepEqual(unauthorized, [['unauthorized', 'revoked', true]]);
  assert.equal(a.client.running, false);
  assert.equal(b.client.running, false);
  assert.equal(b.fetch.calls.length, 0, 'B never took over');
});

test('on pagehide only the last tab sends the disconnect beacon', async () => {
  const origin = { Channel: channelHub(), locks: new FakeLocks() };
  const beacons = [];
  const page = () => {
    const w = new EventTarget();
    w.onpagehide = null;
    return w;
  };
  const winA = page();
  const winB = page();
  const a = tab(origin, 'A', [], { window: winA, sendBeacon: (u) => beacons.push(['A', u]) > 0 });
  const b = tab(origin, 'B', [], { window: winB, sendBeacon: (u) => beacons.push(['B', u]) > 0 });
  a.client.start();
  await until(() => a.client.isLeader, 200, 'A leads');
  b.client.start();
  await until(() => a.client._coordinator.peerCount === 1 && b.client._coordinator.peerCount === 1, 200, 'tabs know each other');

  winA.dispatchEvent(new Event('pagehide'));
  assert.deepEqual(beacons, [], 'B is still open: the user stays online');
  await until(() => b.client.isLeader, 200, 'B takes over');
  winB.dispatchEvent(new Event('pagehide'));
  assert.deepEqual(beacons, [['B', '/api/v1/communication/poll/disconnect/?token=tok-alice']]);
});
