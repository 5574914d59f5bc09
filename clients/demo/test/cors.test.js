// A frontend served from another origin than Postbox (started by scripts/browser-test.sh with
// POSTBOX_CORS_ORIGINS naming this test's page origin), in a real headless browser.
//
// The page lives on http://localhost:PAGE_PORT, Postbox on http://127.0.0.1:<port>: two origins. The
// page imports the JavaScript client from Postbox (a cross-origin module script needs CORS), calls the
// REST API with the `Authorization` header (a preflighted request), receives Bob's message through the
// client's long poll, and reads `Retry-After` of a 429 (an exposed header). A page of an origin nobody
// allowed (another port) is kept from the answers by the browser.
//
// Environment: POSTBOX_URL, ALICE_TOKEN, ALICE_ID, BOB_TOKEN, BOB_ID, PAGE_PORT, CHROMIUM (optional).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run scripts/browser-test.sh)`);
  return value;
};

const BASE = env('POSTBOX_URL');
const ALICE = { token: env('ALICE_TOKEN'), id: Number(env('ALICE_ID')) };
const BOB = { token: env('BOB_TOKEN'), id: Number(env('BOB_ID')) };
const PAGE_PORT = Number(env('PAGE_PORT'));

const LAUNCH = {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  timeout: 30000,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
};

/** Serves one empty HTML page on `port` (any path), until closed. */
async function pageServer(port) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>host app</title><p>host app</p>');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, 'localhost', resolve);
  });
  return server;
}

test('a page of an allowed origin uses Postbox across origins', { timeout: 60_000 }, async () => {
  const server = await pageServer(PAGE_PORT);
  const browser = await chromium.launch(LAUNCH);
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(String(e)));
    await page.goto(`http://localhost:${PAGE_PORT}/`);
    assert.notEqual(new URL(page.url()).origin, new URL(BASE).origin, 'two origins');

    const result = await page.evaluate(
      async ({ base, alice, bob }) => {
        const out = {};
        // The client module itself comes from Postbox's origin.
        const { PostboxClient } = await import(`${base}/static/postbox.js`);
        const received = new Promise((resolve) => {
          const client = new PostboxClient({ baseUrl: base, token: alice.token, shareAcrossTabs: false });
          client.on('message', (m) => {
            resolve(m);
            client.stop();
          });
          client.start();
        });
        const auth = (user) => ({ Authorization: `Token ${user.token}`, 'Content-Type': 'application/json' });
        const me = await fetch(`${base}/api/v1/communication/me/`, { headers: auth(alice) });
        out.meStatus = me.status;
        out.meId = (await me.json()).id;
        // Bob sends; Alice's client gets it through its long poll.
        const sent = await fetch(`${base}/api/v1/communication/chats/`, {
          method: 'POST',
          headers: auth(bob),
          body: JSON.stringify({ receiver: alice.id, message: 'across origins' }),
        });
        out.sendStatus = sent.status;
        out.requestId = sent.headers.get('x-request-id');
        const message = await Promise.race([
          received,
          new Promise((resolve) => setTimeout(() => resolve(null), 15000)),
        ]);
        out.received = message && message.message;
        // A burst of typing signals meets the per-sender limit: the 429's Retry-After is readable.
        const answers = await Promise.all(
          Array.from({ length: 12 }, () =>
            fetch(`${base}/api/v1/communication/chats/typing/`, {
              method: 'POST',
              headers: auth(bob),
              body: JSON.stringify({ receiver: alice.id, is_typing: true }),
            }),
          ),
        );
        const limited = answers.find((r) => r.status === 429);
        out.limited = Boolean(limited);
        out.retryAfter = limited ? limited.headers.get('retry-after') : null;
        return out;
      },
      { base: BASE, alice: ALICE, bob: BOB },
    );

    assert.equal(result.meStatus, 200);
    assert.equal(result.meId, ALICE.id);
    assert.equal(result.sendStatus, 201);
    assert.match(result.requestId || '', /\S/, 'X-Request-Id is exposed');
    assert.equal(result.received, 'across origins', 'the long poll delivered across origins');
    assert.ok(result.limited, 'a 429 was met');
    assert.match(result.retryAfter || '', /^\d+$/, 'Retry-After is exposed');
    assert.deepEqual(problems, [], 'no page errors');
  } finally {
    await browser.close().catch(() => {});
    server.close();
  }
});

test('a page of an origin nobody allowed cannot read the answers', { timeout: 60_000 }, async () => {
  // Another port is another origin, and it is not in POSTBOX_CORS_ORIGINS.
  const server = await pageServer(0);
  const port = server.address().port;
  const browser = await chromium.launch(LAUNCH);
  try {
    const page = await browser.newPage();
    await page.goto(`http://localhost:${port}/`);
    const outcome = await page.evaluate(
      async ({ base, alice }) => {
        try {
          const r = await fetch(`${base}/api/v1/communication/me/`, {
            headers: { Authorization: `Token ${alice.token}` },
          });
          return `read ${r.status}`;
        } catch (e) {
          return `blocked: ${e.name}`;
        }
      },
      { base: BASE, alice: ALICE },
    );
    assert.equal(outcome, 'blocked: TypeError');
  } finally {
    await browser.close().catch(() => {});
    server.close();
  }
});
