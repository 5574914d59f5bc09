// Two browsers chat through the demo page of a live Postbox (started by scripts/browser-test.sh).
//
// Alice and Bob each log in from their own browser context. Alice opens a chat with Bob and types: Bob
// sees her typing. She sends: the message appears in Bob's conversation list live, with an unread badge.
// Bob opens it: it is marked read, and Alice sees ✓✓ (read). Bob answers while Alice has the chat open:
// she sees him typing, then his message, live. Screenshots of both pages go to target/browser-artifacts/.
//
// A second test pages back through a long history, sends an attachment and logs out.
//
// A third has a staff user notify Alice (a toast and the bell's badge, live; the panel lists it; marking it
// read clears the badge, also on the server), then Alice's and Bob's college (both open pages get it).
//
// A fourth makes Alice's read receipt overtake Bob's own copy of his message on purpose (his postbox's
// copy is held back from his page, the send's answer waits for the receipt): he still sees ✓✓.
//
// Environment: POSTBOX_URL, {ALICE,BOB,CAROL,STAFF}_{TOKEN,ID}, COLLEGE_ID, ARTIFACTS_DIR, CHROMIUM
// (optional).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { crc32, deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run scripts/browser-test.sh)`);
  return value;
};

const BASE = env('POSTBOX_URL');
const ALICE = { token: env('ALICE_TOKEN'), id: Number(env('ALICE_ID')) };
const BOB = { token: env('BOB_TOKEN'), id: Number(env('BOB_ID')) };
const CAROL = { token: env('CAROL_TOKEN'), id: Number(env('CAROL_ID')) };
const STAFF = { token: env('STAFF_TOKEN'), id: Number(env('STAFF_ID')) };
const COLLEGE_ID = Number(env('COLLEGE_ID'));
const ARTIFACTS = process.env.ARTIFACTS_DIR || 'target/browser-artifacts';
/** Every single wait; the whole test has its own deadline below. */
const STEP_MS = 15000;

const tid = (id) => `[data-testid="${id}"]`;

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

/** A REST call as `user`, with a deadline. */
async function api(user, method, path, body) {
  const res = await fetch(`${BASE}/api/v1/communication/${path}`, {
    method,
    headers: { Authorization: `Token ${user.token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/** A small PNG (a 48x48 gradient), so the upload is an image the server accepts. */
function png(size = 48) {
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'ascii');
    data.copy(out, 8);
    out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = [];
  for (let y = 0; y < size; y += 1) {
    const row = Buffer.alloc(1 + size * 3);
    for (let x = 0; x < size; x += 1) row.set([79 + x * 3, 70 + y * 3, 229], 1 + x * 3);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function openAs(browser, name, user, problems) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  page.on('pageerror', (err) => problems.push(`${name}: uncaught ${err.message}`));
  page.on('console', (msg) => {
    // Failed requests are logged by the browser itself (the notifications probe answers 404 on servers
    // without that API); anything else logged as an error is a bug of the page.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
      problems.push(`${name}: console error: ${msg.text()}`);
    }
  });
  await page.goto(`${BASE}/demo/`);
  await page.locator(tid('login-view')).waitFor();
  await page.locator(tid('token-input')).fill(user.token);
  await page.locator(tid('login-button')).click();
  await page.locator(`${tid('me')}[data-user-id="${user.id}"]`).waitFor();
  await page.locator(`${tid('connection-status')}[data-state="online"]`).waitFor();
  return { context, page };
}

async function screenshots(pages, suffix = '') {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    if (!page) continue;
    const file = path.join(ARTIFACTS, `${name}${suffix}.png`);
    await page.screenshot({ path: file, timeout: STEP_MS }).catch((err) => console.error(`screenshot ${file}: ${err.message}`));
    console.log(`# screenshot: ${file}`);
  }
}

/**
 * Runs `body(browser, problems)` in a fresh browser: `problems` collects the pages' errors (openAs) and
 * must stay empty; on failure the pages named in `pages` are screenshotted; routes are let go and the
 * browser closed however it ends.
 */
async function withBrowser(pages, body) {
  const browser = await chromium.launch(LAUNCH);
  const problems = [];
  let passed = false;
  try {
    await body(browser, problems);
    assert.deepEqual(problems, [], 'no page errors');
    passed = true;
  } finally {
    if (!passed) await screenshots(pages, '-failure');
    // A poll held by a route is still waiting on the server: let it go before the browser does.
    for (const page of Object.values(pages)) if (page) await page.unrouteAll({ behavior: 'ignoreErrors' }).catch(() => {});
    await browser.close().catch(() => {});
  }
}

test('alice and bob chat live through the demo page', { timeout: 100_000 }, async () => {
  const pages = { alice: null, bob: null };
  await withBrowser(pages, async (browser, problems) => {
    const alice = await openAs(browser, 'alice', ALICE, problems);
    pages.alice = alice.page;
    const bob = await openAs(browser, 'bob', BOB, problems);
    pages.bob = bob.page;
    const a = alice.page;
    const b = bob.page;

    // Alice starts a chat with Bob by his id.
    await a.locator(tid('new-chat-input')).fill(String(BOB.id));
    await a.locator(tid('new-chat-button')).click();
    await a.locator(`${tid('chat-title')}[data-user-id="${BOB.id}"]`).waitFor();

    // She types: Bob sees it in his conversation list (he has no chat open).
    const text = 'Hello Bob <b>not bold</b> & <img src=x>';
    await a.locator(tid('message-input')).pressSequentially('Hello Bob', { delay: 30 });
    const aliceInBobsList = b.locator(`${tid('conversation')}[data-user-id="${ALICE.id}"]`);
    await aliceInBobsList.locator(tid('conversation-typing')).waitFor();

    // She sends: the message shows in Bob's list live, unread, with her name.
    await a.locator(tid('message-input')).fill(text);
    await a.locator(tid('send-button')).click();
    const sent = a.locator(`${tid('message')}[data-mine="true"]`).last();
    await sent.waitFor();
    assert.equal(await sent.locator(tid('message-text')).textContent(), text);
    const messageId = await sent.getAttribute('data-message-id');
    assert.match(messageId, /^\d+$/);
    assert.notEqual(await sent.getAttribute('data-status'), 'read', 'not read before Bob opens it');

    await aliceInBobsList.locator(tid('unread-badge')).filter({ hasText: '1' }).waitFor();
    await aliceInBobsList.locator(tid('conversation-preview')).filter({ hasText: 'Hello Bob' }).waitFor();
    await aliceInBobsList.locator(tid('conversation-typing')).waitFor({ state: 'detached' });

    // Bob opens the conversation: the message is there, escaped, and gets marked read.
    await aliceInBobsList.click();
    const received = b.locator(`${tid('message')}[data-message-id="${messageId}"]`);
    await received.waitFor();
    assert.equal(await received.getAttribute('data-mine'), 'false');
    assert.equal(await received.locator(tid('message-text')).textContent(), text, 'user text is shown as text');
    assert.equal(await received.locator('b, img').count(), 0, 'user text is never parsed as HTML');
    await aliceInBobsList.locator(tid('unread-badge')).waitFor({ state: 'detached' });

    // Alice sees ✓✓ read.
    await a.locator(`${tid('message')}[data-message-id="${messageId}"][data-status="read"]`).waitFor();
    assert.equal(await sent.locator(tid('message-status')).textContent(), '✓✓');

    // Bob answers while Alice has the chat open: she sees him typing, then his message, live.
    await b.locator(tid('message-input')).pressSequentially('Hi Alice', { delay: 30 });
    await a.locator(tid('typing-indicator')).filter({ hasText: 'is typing' }).waitFor();
    await b.locator(tid('message-input')).press('Enter');
    const reply = a.locator(`${tid('message')}[data-mine="false"]`).filter({ hasText: 'Hi Alice' });
    await reply.waitFor();
    await a.locator(tid('typing-indicator')).waitFor({ state: 'hidden' });
    // Alice's chat is open and visible, so Bob's message is read at once: Bob sees ✓✓ too.
    await b.locator(`${tid('message')}[data-mine="true"][data-status="read"]`).filter({ hasText: 'Hi Alice' }).waitFor();

    // Both see each other online.
    await a.locator(`${tid('chat-presence')}[data-online="true"]`).waitFor();
    await b.locator(`${tid('conversation')}[data-user-id="${ALICE.id}"] ${tid('presence-dot')}[data-online="true"]`).waitFor();

    await screenshots(pages);
  });
});

test('history pages back on scroll, an attachment goes out, logout forgets the token', { timeout: 90_000 }, async () => {
  // Carol wrote 45 messages to Alice before Alice looks (paced under the send rate limit).
  for (let i = 1; i <= 45; i += 1) {
    const sent = await api(CAROL, 'POST', 'chats/', { receiver: ALICE.id, message: `old message ${i}` });
    assert.equal(sent.status, 201, JSON.stringify(sent.body));
    await sleep(60);
  }
  const notifications = await api(ALICE, 'GET', 'notifications/');
  const pages = { 'alice-history': null };
  await withBrowser(pages, async (browser, problems) => {
    const { page: a } = await openAs(browser, 'alice', ALICE, problems);
    pages['alice-history'] = a;

    // The notifications panel exists exactly when the server has the notifications API.
    assert.ok([200, 404].includes(notifications.status), `notifications/ answered ${notifications.status}`);
    if (notifications.status === 200) await a.locator(tid('notifications-button')).waitFor();
    else assert.equal(await a.locator(tid('notifications-button')).isVisible(), false);

    const carol = a.locator(`${tid('conversation')}[data-user-id="${CAROL.id}"]`);
    await carol.locator(tid('unread-badge')).filter({ hasText: '45' }).waitFor();
    await carol.click();
    const messages = a.locator(`${tid('message-list')} ${tid('message')}`);
    await messages.filter({ hasText: 'old message 45' }).waitFor();
    assert.equal(await messages.count(), 30, 'the newest page first');
    await carol.locator(tid('unread-badge')).waitFor({ state: 'detached' });

    // Scrolling to the top loads the older page, keeping the reader's place.
    await a.locator(tid('message-scroller')).evaluate((node) => {
      node.scrollTop = 0;
    });
    await a.locator(tid('message-text')).filter({ hasText: /^old message 1$/ }).waitFor();
    assert.equal(await messages.count(), 45);
    await a.locator(tid('load-older')).waitFor({ state: 'hidden' });

    // An image attachment: sent as multipart, linked by message id, previewed, downloadable.
    await a.locator(tid('attachment-input')).setInputFiles({ name: 'gradient.png', mimeType: 'image/png', buffer: png() });
    await a.locator(tid('attachment-chip')).filter({ hasText: 'gradient.png' }).waitFor();
    await a.locator(tid('message-input')).fill('a picture');
    await a.locator(tid('send-button')).click();
    const mine = a.locator(`${tid('message')}[data-mine="true"]`).filter({ hasText: 'a picture' });
    const link = mine.locator(tid('message-attachment'));
    await link.waitFor();
    const id = await mine.getAttribute('data-message-id');
    assert.equal(await link.getAttribute('href'), `/api/v1/communication/chats/attachments/${id}/`);
    await a.locator(tid('attachment-chip')).waitFor({ state: 'hidden' });
    const preview = mine.locator(tid('attachment-preview'));
    await preview.waitFor();
    await a.waitForFunction((img) => img.complete && img.naturalWidth === 48, await preview.elementHandle(), { timeout: STEP_MS });
    const [download] = await Promise.all([a.waitForEvent('download', { timeout: STEP_MS }), link.click()]);
    assert.ok(download.suggestedFilename().length > 0);
    await screenshots(pages);

    // Logging out forgets the token: a reload shows the login form.
    await a.locator(tid('logout-button')).click();
    await a.locator(tid('login-view')).waitFor();
    assert.equal(await a.evaluate(() => localStorage.getItem('postbox-demo-token')), null);
    await a.reload();
    await a.locator(tid('login-view')).waitFor();
  });
});

test('a staff user notifies alice, then her college: toasts, the bell, read state', { timeout: 100_000 }, async () => {
  const pages = { 'alice-notifications': null, 'bob-notifications': null };
  await withBrowser(pages, async (browser, problems) => {
    const { page: a } = await openAs(browser, 'alice', ALICE, problems);
    pages['alice-notifications'] = a;
    const bell = a.locator(tid('notifications-button'));
    const badge = a.locator(tid('notifications-badge'));
    await bell.waitFor();
    const start = await api(ALICE, 'GET', 'notifications/');
    assert.equal(start.status, 200, JSON.stringify(start.body));
    assert.equal(start.body.unread_count, 0, 'alice starts with nothing unread');
    await badge.waitFor({ state: 'hidden' });

    // Members may not notify; the staff user may.
    const refused = await api(BOB, 'POST', 'notifications/', { user_id: ALICE.id, title: 'nope', message: '' });
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    const title = 'Library notice';
    const text = 'Your book is due <b>Friday</b>';
    const created = await api(STAFF, 'POST', 'notifications/', { user_id: ALICE.id, title, message: text });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const personalId = created.body.id;
    assert.ok(Number.isSafeInteger(personalId), `id ${personalId}`);

    // Live: a toast (as text) and an unread badge on the bell.
    const toast = a.locator(`${tid('toast')}[data-kind="notification"]`).filter({ hasText: title });
    await toast.waitFor();
    assert.match(await toast.textContent(), /Your book is due <b>Friday<\/b>/);
    assert.equal(await toast.locator('b').count(), 0, 'notification text is never parsed as HTML');
    await badge.filter({ hasText: /^1$/ }).waitFor();

    // The panel lists it, unread; marking it read clears the badge, and the server agrees.
    await bell.click();
    await a.locator(tid('notifications-panel')).waitFor();
    const personal = a.locator(`${tid('notification')}[data-notification-id="${personalId}"]`);
    await personal.filter({ hasText: title }).waitFor();
    assert.equal(await personal.getAttribute('data-read'), 'false');
    await a.locator(tid('notifications-read-all')).waitFor();
    await personal.locator(tid('notification-mark-read')).click();
    await a.locator(`${tid('notification')}[data-notification-id="${personalId}"][data-read="true"]`).waitFor();
    await badge.waitFor({ state: 'hidden' });
    await a.locator(tid('notifications-read-all')).waitFor({ state: 'hidden' });
    const afterRead = await api(ALICE, 'GET', 'notifications/');
    assert.equal(afterRead.status, 200);
    assert.equal(afterRead.body.unread_count, 0, 'the server counts it read');
    const stored = afterRead.body.results.find((n) => n.id === personalId);
    assert.ok(stored, 'listed by the server');
    assert.equal(stored.is_read, true);
    assert.ok(stored.read_at);

    // A college notification reaches both open pages: Alice's (panel open) and Bob's.
    const { page: b } = await openAs(browser, 'bob', BOB, problems);
    pages['bob-notifications'] = b;
    await b.locator(tid('notifications-button')).waitFor();
    const collegeTitle = 'Campus closed tomorrow';
    const broadcast = await api(STAFF, 'POST', 'notifications/', {
      college_id: COLLEGE_ID,
      title: collegeTitle,
      message: 'Snow day: lectures move online.',
    });
    assert.equal(broadcast.status, 201, JSON.stringify(broadcast.body));
    assert.equal(broadcast.body.recipients, 2, 'alice and bob are the college');
    const collegeId = broadcast.body.id;
    for (const page of [a, b]) {
      await page.locator(`${tid('toast')}[data-kind="notification"]`).filter({ hasText: collegeTitle }).waitFor();
      await page.locator(tid('notifications-badge')).filter({ hasText: /^1$/ }).waitFor();
    }
    const collegeItem = a.locator(`${tid('notification')}[data-notification-id="${collegeId}"][data-read="false"]`);
    await collegeItem.filter({ hasText: collegeTitle }).waitFor();
    await personal.filter({ hasText: title }).waitFor();
    await b.locator(tid('notifications-button')).click();
    await b.locator(`${tid('notification')}[data-notification-id="${collegeId}"][data-read="false"]`).waitFor();
    await screenshots(pages);

    // Alice marks all read: her badge goes, Bob's read state is his own.
    await a.locator(tid('notifications-read-all')).click();
    await a.locator(`${tid('notification')}[data-notification-id="${collegeId}"][data-read="true"]`).waitFor();
    await badge.waitFor({ state: 'hidden' });
    assert.equal((await api(ALICE, 'GET', 'notifications/')).body.unread_count, 0);
    assert.equal((await api(BOB, 'GET', 'notifications/')).body.unread_count, 1, 'read state is per user');
    assert.equal(await b.locator(tid('notifications-badge')).textContent(), '1');
  });
});

test("a read receipt that overtakes the sender's own copy of the message still shows ✓✓", { timeout: 60_000 }, async () => {
  const pages = { 'alice-early': null, 'bob-early': null };
  await withBrowser(pages, async (browser, problems) => {
    const { page: a } = await openAs(browser, 'alice', ALICE, problems);
    pages['alice-early'] = a;
    const { page: b } = await openAs(browser, 'bob', BOB, problems);
    pages['bob-early'] = b;

    // Both have the chat open: Alice reads Bob's next message the moment it arrives.
    await a.locator(tid('new-chat-input')).fill(String(BOB.id));
    await a.locator(tid('new-chat-button')).click();
    await a.locator(`${tid('chat-title')}[data-user-id="${BOB.id}"]`).waitFor();
    await b.locator(tid('new-chat-input')).fill(String(ALICE.id));
    await b.locator(tid('new-chat-button')).click();
    await b.locator(`${tid('chat-title')}[data-user-id="${ALICE.id}"]`).waitFor();

    // Bob's page loses the race on purpose (under load it can by itself): his postbox's copy of the
    // message never reaches the page, and the send's answer is held until Alice's receipt has.
    const text = 'Read before I knew it';
    let receiptPassed;
    const receipt = new Promise((resolve) => {
      receiptPassed = resolve;
    });
    let pollRouted;
    const routed = new Promise((resolve) => {
      pollRouted = resolve;
    });
    await b.route(
      (url) => url.pathname.endsWith('/poll/events/'),
      async (route) => {
        pollRouted();
        const response = await route.fetch();
        const body = await response.json();
        const events = body.events.filter((e) => !(e.event === 'message' && e.data && e.data.message === text));
        await route.fulfill({ response, json: { ...body, events } });
        if (events.some((e) => e.event === 'read_receipt')) receiptPassed();
      },
    );
    await b.route(
      (url) => url.pathname.endsWith('/communication/chats/'),
      async (route) => {
        if (route.request().method() !== 'POST') return route.fallback();
        const response = await route.fetch();
        await Promise.race([receipt, sleep(STEP_MS)]);
        await sleep(300); // the page handles the receipt first
        return route.fulfill({ response });
      },
    );

    // The poll Bob's page had under way began before the route: Alice's typing ends it, and the next is
    // routed.
    await a.locator(tid('message-input')).pressSequentially('Hm', { delay: 30 });
    await b.locator(tid('typing-indicator')).filter({ hasText: 'is typing' }).waitFor();
    assert.equal(await Promise.race([routed.then(() => true), sleep(STEP_MS).then(() => false)]), true, 'a poll was routed');
    await a.locator(tid('message-input')).fill('');

    await b.locator(tid('message-input')).fill(text);
    await b.locator(tid('send-button')).click();
    await a.locator(`${tid('message')}[data-mine="false"]`).filter({ hasText: text }).waitFor();
    await b.locator(`${tid('message')}[data-mine="true"]`).filter({ hasText: text }).waitFor();
    assert.equal(await Promise.race([receipt.then(() => true), sleep(1).then(() => false)]), true, 'the receipt came first');
    await b.locator(`${tid('message')}[data-mine="true"][data-status="read"]`).filter({ hasText: text }).waitFor();
  });
});
