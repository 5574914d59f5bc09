import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PostboxClient, PostboxError } from '../postbox.js';
import { isolated, json } from '../test-support/fakes.js';

/** A fetch that records each call and answers 200 with `{ok: true}` (or what `answer` returns). */
function recording(answer = () => json(200, { ok: true })) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url: new URL(String(url), 'http://x'), init });
    return answer(calls.length, url, init);
  };
  fetch.calls = calls;
  return fetch;
}

const API = '/api/v1/communication';

test('each REST call goes to its route with its method, query and body', async () => {
  const fetch = recording();
  const client = new PostboxClient(isolated({ fetch, baseUrl: 'http://h' }));
  await client.send(7, 'hi');
  await client.history(7, { before: 40, limit: 20 });
  await client.history(7, { since: '2026-12-01T00:00:00Z' });
  await client.conversations();
  await client.markRead({ userId: 7, upTo: 41 });
  await client.unreadCount();
  await client.onlineUsers();
  await client.notifications({ unread: true, limit: 5 });
  await client.markNotificationRead(3);
  await client.markAllNotificationsRead();
  await client.register();
  await client.missed(41, { limit: 10 });
  const seen = fetch.calls.map((c) => [c.init.method, c.url.pathname + c.url.search, c.init.body ?? null]);
  assert.deepEqual(seen, [
    ['POST', `${API}/chats/`, JSON.stringify({ receiver: 7, message: 'hi' })],
    ['GET', `${API}/chats/conversation/7/?before=40&limit=20`, null],
    ['GET', `${API}/chats/conversation/7/?since=2026-12-01T00%3A00%3A00Z`, null],
    ['GET', `${API}/chats/conversations/`, null],
    ['POST', `${API}/chats/mark-read/`, JSON.stringify({ user_id: 7, up_to: 41 })],
    ['GET', `${API}/chats/unread-count/`, null],
    ['GET', `${API}/chats/online-users/`, null],
    ['GET', `${API}/notifications/?unread=true&limit=5`, null],
    ['POST', `${API}/notifications/3/read/`, null],
    ['POST', `${API}/notifications/read-all/`, null],
    ['POST', `${API}/poll/register/`, JSON.stringify({ client_id: client.clientId })],
    ['GET', `${API}/poll/missed/?after=41&limit=10`, null],
  ]);
  assert.equal(fetch.calls[0].url.origin, 'http://h');
  assert.equal(fetch.calls[0].init.headers.Authorization, 'Token tok-alice');
  assert.equal(fetch.calls[0].init.headers['Content-Type'], 'application/json');
});

test('an attachment goes as a form with receiver, message and the file', async () => {
  const fetch = recording();
  const client = new PostboxClient(isolated({ fetch }));
  const file = new Blob(['%PDF-1.4'], { type: 'application/pdf' });
  await client.send(7, 'the report', { attachment: file, filename: 'report.pdf' });
  const body = fetch.calls[0].init.body;
  assert.ok(body instanceof FormData);
  assert.equal(body.get('receiver'), '7');
  assert.equal(body.get('message'), 'the report');
  assert.equal(body.get('attachment').name, 'report.pdf');
  assert.equal(fetch.calls[0].init.headers['Content-Type'], undefined, 'the browser sets the boundary');
});

test('typing is sent at most once per throttle period per receiver; stopping always goes', async () => {
  const fetch = recording();
  let now = 0;
  const client = new PostboxClient(isolated({ fetch, now: () => now }));
  assert.equal(await client.typing(7), true);
  now = 500;
  assert.equal(await client.typing(7), false);
  assert.equal(await client.typing(8), true);
  assert.equal(await client.typing(7, false), true);
  now = 2600;
  assert.equal(await client.typing(7), true);
  assert.deepEqual(
    fetch.calls.map((c) => JSON.parse(c.init.body)),
    [
      { receiver: 7, is_typing: true },
      { receiver: 8, is_typing: true },
      { receiver: 7, is_typing: false },
      { receiver: 7, is_typing: true },
    ],
  );
});

test('an error answer rejects with the server code, status and detail; a 401 asks getToken once', async () => {
  const fetch = recording((n) =>
    n === 1
      ? json(404, { error: 'not_found', detail: 'no such user', status: 404 })
      : n === 2
        ? json(401, { error: 'unauthorized', detail: 'expired', status: 401 })
        : json(201, { id: 9 }),
  );
  const client = new PostboxClient(isolated({ fetch, getToken: () => 'tok-new' }));
  await assert.rejects(client.send(99, 'x'), (err) => {
    assert.ok(err instanceof PostboxError);
    assert.equal(err.status, 404);
    assert.equal(err.code, 'not_found');
    assert.equal(err.detail, 'no such user');
    return true;
  });
  assert.deepEqual(await client.send(7, 'again'), { id: 9 });
  assert.equal(fetch.calls[2].init.headers.Authorization, 'Token tok-new');
});
