/**
 * postbox.js: the browser client of Postbox's real-time API. One ES module, no dependencies, no build.
 *
 *   import { PostboxClient } from './postbox.js';
 *   const client = new PostboxClient({ token, onResync: () => reloadFromRestApi() });
 *   client.on('message', (message, event) => showMessage(message));
 *   client.start();
 *   // on logout: await client.disconnect();
 *
 * What it does for you:
 * - Long poll `GET /api/v1/communication/poll/events/?client_id=...&last_event_id=...`, again right after
 *   every answer (the server holds the request up to ~5.5 s when there is nothing to say), or an
 *   EventSource on `/api/v1/communication/sse/events/` with `transport: 'sse'`.
 * - Cursor: every poll carries `last_event_id`, the id of the last event handed to your handlers, which
 *   acknowledges it and everything before it. The cursor is kept in sessionStorage, so a reload resumes.
 * - Dedupe: an event may be delivered again (same id); the client remembers the last 1000 ids and calls
 *   your handlers once per id.
 * - Gaps: every stored event carries `seq`, the next number of the user's sequence. A jump (41, then 44),
 *   or a `resync` naming the lost range (`seq_from`..`seq_to`), is filled from
 *   `GET poll/missed/?after=41` after a short grace (`gapGraceMs`, 1 s: events of concurrent senders may
 *   arrive out of order), and the missing events reach your handlers like any other (once per id). Only
 *   when the range is no longer kept (or a loss has no range) does a `resync` reach `onResync(info)` and
 *   the `resync` handlers: reload state from REST then.
 * - Errors: 401/403 stop the client (`unauthorized` / `error` events). Network errors and 5xx are retried
 *   with exponential backoff and full jitter (500 ms doubling to 30 s, reset after a success); 429 and 503
 *   wait at least `Retry-After`.
 * - Tabs: with `shareAcrossTabs` (default when BroadcastChannel exists) the tabs of one origin and user
 *   elect a leader (Web Locks, else a heartbeat over BroadcastChannel); only the leader talks to the
 *   server and it forwards every event to the other tabs. When it closes, another tab takes over with the
 *   same client id and cursor, so nothing is lost in between.
 * - Unload: on `pagehide` the last tab tells the server the user went offline (`navigator.sendBeacon`).
 *
 * Everything that touches the outside world (fetch, timers, randomness, storage, EventSource,
 * BroadcastChannel, Web Locks, sendBeacon, window) can be passed in the options; the unit tests in
 * ./test run under plain `node --test` that way.
 */

const API = '/api/v1/communication';
const EVENTS_PATH = `${API}/poll/events/`;
const DISCONNECT_PATH = `${API}/poll/disconnect/`;
const SSE_PATH = `${API}/sse/events/`;

/** What the server accepts as a client id. */
const CLIENT_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** Event types the server sends today; SSE listens to these plus every type you subscribe to. */
const KNOWN_TYPES = ['message', 'typing', 'read_receipt', 'notification', 'presence', 'delivered', 'resync'];

/** SSE bookkeeping records that are not events for your handlers. */
// `reconnect`: the server ends the stream so that the browser reconnects with Last-Event-ID, which
// confirms what the stream delivered (events stay in flight until then).
const SSE_CONTROL_TYPES = new Set(['connected', 'heartbeat', 'reconnect']);

/** Types the client itself emits (not server events). */
const CLIENT_TYPES = new Set(['error', 'unauthorized', 'state', '*']);

const EVENTSOURCE_CLOSED = 2;

const defaultTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id),
};

// ---------------------------------------------------------------------------------------------------
// Small pure helpers (exported for tests and for reuse)
// ---------------------------------------------------------------------------------------------------

/**
 * Delay before retry number `attempt` (0 for the first retry): exponential backoff with full jitter,
 * a uniformly random value in [0, min(cap, base * factor^attempt)).
 */
export function backoffDelay(attempt, random = Math.random, { base = 500, factor = 2, cap = 30000 } = {}) {
  const ceiling = Math.min(cap, base * factor ** Math.max(0, attempt));
  return Math.floor(random() * ceiling);
}

/** `Retry-After` (seconds or an HTTP date) in milliseconds, or null when absent or unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === '') return null;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.ceil(Number(text) * 1000);
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/** A new client id: `crypto.randomUUID()` when available, else 22 random letters and digits. */
export function generateClientId(random = Math.random) {
  const cryptoApi = globalThis.crypto;
  if (cryptoApi && typeof cryptoApi.randomUUID === 'function') return cryptoApi.randomUUID();
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  let id = '';
  for (let i = 0; i < 22; i += 1) id += alphabet[Math.floor(random() * alphabet.length)];
  return id;
}

/**
 * A bounded set of recently seen event ids: `add` answers false for an id already in it; beyond `limit`
 * ids the oldest one is forgotten.
 */
export class RecentIds {
  constructor(limit = 1000) {
    this.limit = Math.max(1, limit);
    this._ids = new Set();
  }

  has(id) {
    return this._ids.has(id);
  }

  /** Remembers `id`; false when it was already known (a duplicate). */
  add(id) {
    if (this._ids.has(id)) return false;
    this._ids.add(id);
    if (this._ids.size > this.limit) this._ids.delete(this._ids.values().next().value);
    return true;
  }

  get size() {
    return this._ids.size;
  }
}

/** Every failure the client reports: `code` is the server's `error` field or a client-side code. */
export class PostboxError extends Error {
  constructor(code, message, { status = 0, detail = message, retryAfter = null, fatal = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PostboxError';
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
    this.fatal = fatal;
  }
}

/** A PostboxError from a non-2xx fetch Response (body `{"error","detail","status"}` when JSON). */
async function errorFromResponse(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON (a proxy's HTML page, for example)
  }
  const code = (body && typeof body.error === 'string' && body.error) || `http_${res.status}`;
  const detail = (body && typeof body.detail === 'string' && body.detail) || res.statusText || `HTTP ${res.status}`;
  const header = res.headers && typeof res.headers.get === 'function' ? res.headers.get('Retry-After') : null;
  return new PostboxError(code, `Postbox answered ${res.status}: ${detail}`, {
    status: res.status,
    detail,
    retryAfter: parseRetryAfter(header),
    fatal: res.status === 401 || res.status === 403,
  });
}

/** JSON.parse, or null when the text is not JSON. */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** FNV-1a, to name the tab channel and lock after the user without putting the token in the name. */
function shortHash(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(36);
}

/** sessionStorage, or null where it does not exist or throws (sandboxed iframes, some private modes). */
function safeSessionStorage() {
  try {
    const storage = globalThis.sessionStorage;
    return storage && typeof storage.getItem === 'function' ? storage : null;
  } catch {
    return null;
  }
}

/** Sleeps `ms`; resolves early when `signal` aborts (so stop() is immediate). */
function defaultSleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (signal) signal.addEventListener('abort', done, { once: true });
  });
}

/** Calls console.error when it exists (the last resort for errors thrown by error handlers). */
function logError(...args) {
  if (typeof console !== 'undefined' && console.error) console.error(...args);
}

// ---------------------------------------------------------------------------------------------------
// Leader election between the tabs of one origin
// ---------------------------------------------------------------------------------------------------

/**
 * Elects one leader among the tabs that run a TabCoordinator with the same `name`, and carries messages
 * between them over a BroadcastChannel.
 *
 * - With Web Locks (`locks`, normally `navigator.locks`): the tab holding the lock `postbox-leader-<name>`
 *   leads; the others wait in the lock's queue, and the browser hands the lock to the next one when the
 *   leader stops or its tab closes (even when it crashes).
 * - Without: the leader posts a heartbeat every `heartbeatMs`; a tab that hears none for
 *   `leaderTimeoutMs` (or `electionMs` right after it starts, or at once when the leader resigns) claims
 *   the lead; when two leaders hear each other, the smaller tab id keeps it.
 *
 * `onRoleChange(isLeader)` is called whenever this tab gains or loses the lead (not on stop()).
 * `onMessage(body, fromTabId)` receives what other tabs `send()`.
 */
export class TabCoordinator {
  constructor({
    name,
    BroadcastChannel: Channel,
    locks = null,
    timers = defaultTimers,
    tabId = generateClientId(),
    onRoleChange = () => {},
    onMessage = () => {},
    heartbeatMs = 1000,
    leaderTimeoutMs = 3000,
    electionMs = 200,
  }) {
    if (typeof Channel !== 'function') throw new TypeError('TabCoordinator needs a BroadcastChannel');
    this.name = name;
    this.tabId = tabId;
    this._Channel = Channel;
    this._locks = locks && typeof locks.request === 'function' ? locks : null;
    this._timers = timers;
    this._onRoleChange = onRoleChange;
    this._onMessage = onMessage;
    this._heartbeatMs = heartbeatMs;
    this._leaderTimeoutMs = leaderTimeoutMs;
    this._electionMs = electionMs;
    this._started = false;
    this._leader = false;
    this._leaderId = null;
    this._peers = new Set();
    this._channel = null;
    this._timer = null;
    this._releaseLock = null;
    this._lockAbort = null;
  }

  /** Whether this tab leads. */
  get isLeader() {
    return this._leader;
  }

  /** Other live tabs this one knows of (a tab that crashed may still count). */
  get peerCount() {
    return this._peers.size;
  }

  start() {
    if (this._started) return;
    this._started = true;
    this._channel = new this._Channel(`postbox-${this.name}`);
    this._channel.onmessage = (ev) => this._receive(ev && ev.data);
    this._post('hello');
    if (this._locks) this._requestLock();
    else this._arm(this._electionMs);
  }

  /** Leaves the election; when this tab leads, another one takes over. */
  stop() {
    if (!this._started) return;
    this._clearTimer();
    if (this._leader) this._post('resign');
    this._post('bye');
    this._started = false;
    this._leader = false;
    this._leaderId = null;
    if (this._releaseLock) {
      this._releaseLock();
      this._releaseLock = null;
    }
    if (this._lockAbort) {
      this._lockAbort.abort();
      this._lockAbort = null;
    }
    try {
      this._channel.close();
    } catch {
      // already closed
    }
    this._channel = null;
    this._peers.clear();
  }

  /** Sends `body` (structured-cloneable) to every other tab. */
  send(body) {
    this._post('app', body);
  }

  _post(type, body) {
    if (!this._channel) return;
    try {
      this._channel.postMessage({ postbox: 1, from: this.tabId, type, body });
    } catch (err) {
      logError('postbox: cannot post to the other tabs', err);
    }
  }

  _receive(msg) {
    if (!this._started || !msg || msg.postbox !== 1 || msg.from === this.tabId) return;
    if (msg.type === 'bye') {
      this._peers.delete(msg.from);
      return;
    }
    this._peers.add(msg.from);
    switch (msg.type) {
      case 'hello':
        this._post('here');
        if (this._leader && !this._locks) this._post('heartbeat');
        break;
      case 'heartbeat':
        if (!this._locks) this._heard(msg.from);
        break;
      case 'resign':
        if (!this._locks && !this._leader) this._claim();
        break;
      case 'app':
        this._onMessage(msg.body, msg.from);
        break;
      default:
        break;
    }
  }

  // Web Locks election -------------------------------------------------------------------------------

  _requestLock() {
    const abort = new AbortController();
    this._lockAbort = abort;
    const granted = () => {
      if (!this._started || abort.signal.aborted) return undefined;
      this._lockAbort = null;
      // Holding this promise holds the lock; stop() resolves it.
      return new Promise((release) => {
        this._releaseLock = release;
        this._leader = true;
        this._leaderId = this.tabId;
        this._onRoleChange(true);
      });
    };
    let request;
    try {
      request = this._locks.request(`postbox-leader-${this.name}`, { signal: abort.signal }, granted);
    } catch (err) {
      // A LockManager that refuses (opaque origins throw SecurityError): elect with heartbeats instead.
      this._lockAbort = null;
      this._locks = null;
      this._arm(this._electionMs);
      return;
    }
    Promise.resolve(request).catch(() => {}); // AbortError when stopped while waiting
  }

  // Heartbeat election -------------------------------------------------------------------------------

  _heard(from) {
    if (this._leader) {
      if (from < this.tabId) this._stepDown(from); // two leaders: the smaller id keeps the lead
      else this._post('heartbeat'); // make the other one step down
      return;
    }
    this._leaderId = from;
    this._arm(this._leaderTimeoutMs);
  }

  _claim() {
    if (!this._started || this._leader) return;
    this._clearTimer();
    this._leader = true;
    this._leaderId = this.tabId;
    this._post('heartbeat');
    this._scheduleHeartbeat();
    this._onRoleChange(true);
  }

  _stepDown(leaderId) {
    this._leader = false;
    this._leaderId = leaderId;
    this._arm(this._leaderTimeoutMs);
    this._onRoleChange(false);
  }

  _scheduleHeartbeat() {
    this._timer = this._timers.setTimeout(() => {
      this._timer = null;
      if (!this._started || !this._leader) return;
      this._post('heartbeat');
      this._scheduleHeartbeat();
    }, this._heartbeatMs);
  }

  _arm(ms) {
    this._clearTimer();
    this._timer = this._timers.setTimeout(() => {
      this._timer = null;
      this._claim();
    }, ms);
  }

  _clearTimer() {
    if (this._timer !== null) this._timers.clearTimeout(this._timer);
    this._timer = null;
  }
}

/**
 * The numbers of the user's sequence seen so far: `last` is the highest number up to which every one
 * was seen; numbers seen beyond it wait in `ahead` until the ones between arrive (or are filled).
 */
export class SequenceTracker {
  constructor(last = null, { maxAhead = 10000 } = {}) {
    this.last = Number.isInteger(last) && last >= 0 ? last : null;
    this._ahead = new Set();
    this._maxAhead = maxAhead;
  }

  /** Records a number; returns whether numbers are missing now. */
  see(seq) {
    if (!Number.isInteger(seq) || seq < 1) return this.hasGap;
    if (this.last === null) {
      this.last = seq;
      return this.hasGap;
    }
    if (seq <= this.last) return this.hasGap;
    this._ahead.add(seq);
    while (this._ahead.has(this.last + 1)) {
      this._ahead.delete(this.last + 1);
      this.last += 1;
    }
    if (this._ahead.size > this._maxAhead) this.reset(Math.max(...this._ahead));
    return this.hasGap;
  }

  /** The highest number seen. */
  get highest() {
    return this._ahead.size ? Math.max(this.last, ...this._ahead) : this.last;
  }

  /** Whether a number between `last` and the highest seen is missing. */
  get hasGap() {
    return this._ahead.size > 0;
  }

  /** Starts again from `last` (after a reload from REST). */
  reset(last) {
    this.last = Number.isInteger(last) ? last : null;
    this._ahead.clear();
  }
}

// ---------------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------------

/**
 * The real-time client. See the top of this file and README.md; options and events are typed in
 * postbox.d.ts.
 */
export class PostboxClient {
  constructor(options = {}) {
    const o = options;
    if (!o.token || typeof o.token !== 'string') throw new TypeError('PostboxClient: `token` is required');
    if (o.clientId != null && !CLIENT_ID_PATTERN.test(o.clientId)) {
      throw new TypeError('PostboxClient: `clientId` must match /^[A-Za-z0-9_-]{1,64}$/');
    }
    this._token = o.token;
    this._baseUrl = String(o.baseUrl ?? '').replace(/\/+$/, '');
    this._onResync = typeof o.onResync === 'function' ? o.onResync : null;
    this._onError = typeof o.onError === 'function' ? o.onError : null;
    this._getToken = typeof o.getToken === 'function' ? o.getToken : null;
    this._now = o.now ?? Date.now;
    this._typingThrottleMs = o.typingThrottleMs ?? 2000;
    this._typingSent = new Map();
    this._refreshes = 0;
    this._random = o.random ?? Math.random;
    this._sleep = o.sleep ?? defaultSleep;
    this._timers = o.timers ?? defaultTimers;
    this._backoff = { base: 500, factor: 2, cap: 30000, ...(o.backoff || {}) };
    this._requestTimeout = o.requestTimeout ?? 30000;

    const fetchImpl = o.fetch ?? globalThis.fetch;
    if (typeof fetchImpl !== 'function') throw new TypeError('PostboxClient: no fetch available; pass `fetch`');
    this._fetch = (url, init) => fetchImpl.call(globalThis, url, init); // window.fetch needs its `this`

    const EventSourceImpl = 'EventSource' in o ? o.EventSource : globalThis.EventSource;
    this._EventSource = typeof EventSourceImpl === 'function' ? EventSourceImpl : null;
    // SSE without an EventSource (old browsers, workers): fall back to long polling.
    this._transport = o.transport === 'sse' && this._EventSource ? 'sse' : 'poll';

    const Channel = 'BroadcastChannel' in o ? o.BroadcastChannel : globalThis.BroadcastChannel;
    this._Channel = typeof Channel === 'function' ? Channel : null;
    this._shared = (o.shareAcrossTabs ?? true) && this._Channel !== null;
    const nav = globalThis.navigator;
    this._locks = 'locks' in o ? o.locks : (nav && nav.locks) || null;
    this._coordinatorOptions = o.coordinator || {};
    this._userKey = o.userKey ?? shortHash(`${this._baseUrl}|${this._token}`);

    if ('sendBeacon' in o) this._sendBeacon = o.sendBeacon;
    else if (nav && typeof nav.sendBeacon === 'function') this._sendBeacon = (url) => nav.sendBeacon(url);
    else this._sendBeacon = null;
    this._window = 'window' in o ? o.window : globalThis.window ?? null;

    this._storage = 'storage' in o ? o.storage : safeSessionStorage();
    this._storageKey = `postbox:${this._userKey}`;
    const saved = this._load();
    const savedId = typeof saved.clientId === 'string' && CLIENT_ID_PATTERN.test(saved.clientId) ? saved.clientId : null;
    this._clientId = o.clientId ?? savedId ?? generateClientId(this._random);
    // The cursor belongs to the client id it was saved with.
    this._lastEventId = savedId === this._clientId && typeof saved.lastEventId === 'string' ? saved.lastEventId : null;
    // The sequence is the user's, whichever client id reads it.
    this._seq = new SequenceTracker(saved.lastSeq);
    this._gapGraceMs = o.gapGraceMs ?? 1000;
    this._fillFrom = null;
    this._fillResyncs = [];
    this._filling = false;
    this._save();

    this._seen = new RecentIds(o.dedupeLimit ?? 1000);
    this._handlers = new Map();
    this._running = false;
    this._transportActive = false;
    this._generation = 0; // bumped whenever the transport stops, so stale loops and callbacks exit
    this._abort = null;
    this._attempt = 0;
    this._eventSource = null;
    this._sseListening = new Set();
    this._coordinator = null;
    this._resumeOnShow = false;
    this._lifecycleAttached = false;
    this._onPageHide = (ev) => this._pageHidden(ev);
    this._onPageShow = (ev) => this._pageShown(ev);
    this._onOffline = () => this._wentOffline();
    this._onOnline = () => this._cameOnline();
    this._offline = null; // while the browser is offline: a promise that resolves when it is back
    this._state = { state: 'disconnected', reason: 'stopped' };
  }

  /** The id this tab polls with (in shared mode, the leader's, adopted by every tab). */
  get clientId() {
    return this._clientId;
  }

  /** The id of the last event handed to handlers (sent as `last_event_id`), or null. */
  get lastEventId() {
    return this._lastEventId;
  }

  /**
   * The connection as every tab sees it: `{ state, reason }`, state one of `connecting`, `connected`,
   * `disconnected` (reason: `stopped`, `offline`, `unauthorized`, or the last error's code) and
   * `resyncing` (missing events are being fetched). `on('state', info => ...)` reports each change.
   */
  get state() {
    return { ...this._state };
  }

  /** The highest number of the user's sequence up to which every event was handed over, or null. */
  get lastSeq() {
    return this._seq.last;
  }

  /** Whether start() was called and neither stop() nor a fatal error happened since. */
  get running() {
    return this._running;
  }

  /** Whether this tab holds the connection (always true while running when tabs are not shared). */
  get isLeader() {
    return this._transportActive;
  }

  /**
   * Calls `handler(data, event)` for each event of `type` ('message', 'typing', ..., '*' for all), or
   * `handler(error)` for 'error' and 'unauthorized'. Returns a function that unsubscribes.
   */
  on(type, handler) {
    if (typeof handler !== 'function') throw new TypeError('PostboxClient.on: handler must be a function');
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    this._listenSse(type);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) set.delete(handler);
  }

  /** Starts receiving events (idempotent). Returns the client. */
  start() {
    if (this._running) return this;
    this._running = true;
    this._setState('connecting');
    this._attachLifecycle();
    if (this._shared) this._startCoordinator();
    else this._startTransport();
    return this;
  }

  /** Stops receiving events: aborts the request in flight; another tab takes the lead. Idempotent. */
  stop() {
    this._halt();
    this._detachLifecycle();
    this._resumeOnShow = false;
    if (!this._failing) this._setState('disconnected', 'stopped');
  }

  /**
   * stop(), then tells the server the user went offline (`POST poll/disconnect/`). Resolves to whether
   * the server confirmed; never rejects.
   */
  async disconnect() {
    this.stop();
    try {
      const res = await this._fetch(this._url(DISCONNECT_PATH), {
        method: 'POST',
        headers: this._headers(),
        keepalive: true,
      });
      return res.ok;
    } catch {
      return false;
    }
  }

  // --- lifecycle -----------------------------------------------------------------------------------

  _halt() {
    const wasRunning = this._running;
    this._running = false;
    this._stopTransport();
    if (this._coordinator) {
      this._coordinator.stop();
      this._coordinator = null;
    }
    return wasRunning;
  }

  _attachLifecycle() {
    const w = this._window;
    if (this._lifecycleAttached || !w || typeof w.addEventListener !== 'function') return;
    // pagehide keeps the page eligible for the back/forward cache; beforeunload only where it is missing.
    this._hideEvent = 'onpagehide' in w ? 'pagehide' : 'beforeunload';
    w.addEventListener(this._hideEvent, this._onPageHide);
    w.addEventListener('pageshow', this._onPageShow);
    w.addEventListener('offline', this._onOffline);
    w.addEventListener('online', this._onOnline);
    this._lifecycleAttached = true;
  }

  _detachLifecycle() {
    if (!this._lifecycleAttached) return;
    this._window.removeEventListener(this._hideEvent, this._onPageHide);
    this._window.removeEventListener('pageshow', this._onPageShow);
    this._window.removeEventListener('offline', this._onOffline);
    this._window.removeEventListener('online', this._onOnline);
    this._lifecycleAttached = false;
  }

  _pageHidden(ev) {
    if (!this._running) return;
    // Only the last tab says "offline": the others keep the user online.
    const lastTab = !this._shared || !this._coordinator || this._coordinator.peerCount === 0;
    this._halt();
    this._resumeOnShow = Boolean(ev && ev.persisted); // the page may come back from the bfcache
    if (!this._resumeOnShow) this._detachLifecycle();
    if (lastTab) this._beaconDisconnect();
  }

  _pageShown(ev) {
    if (ev && ev.persisted && this._resumeOnShow) {
      this._resumeOnShow = false;
      this.start();
    }
  }

  _beaconDisconnect() {
    const url = `${this._url(DISCONNECT_PATH)}?token=${encodeURIComponent(this._token)}`;
    try {
      if (this._sendBeacon && this._sendBeacon(url)) return;
    } catch {
      // fall through to fetch
    }
    try {
      const sent = this._fetch(this._url(DISCONNECT_PATH), { method: 'POST', headers: this._headers(), keepalive: true });
      Promise.resolve(sent).catch(() => {});
    } catch {
      // the page is going away; nothing else to do
    }
  }

  // --- shared connection ---------------------------------------------------------------------------

  _startCoordinator() {
    this._coordinator = new TabCoordinator({
      heartbeatMs: 1000,
      leaderTimeoutMs: 3000,
      electionMs: 200,
      ...this._coordinatorOptions,
      name: this._userKey,
      BroadcastChannel: this._Channel,
      locks: this._locks,
      timers: this._timers,
      onRoleChange: (leader) => {
        if (leader) {
          this._startTransport();
          this._sendState();
        } else {
          this._stopTransport();
        }
      },
      onMessage: (msg) => this._tabMessage(msg),
    });
    this._coordinator.start();
    if (!this._transportActive) this._coordinator.send({ type: 'sync' }); // ask the leader for its state
  }

  _sendState() {
    if (this._coordinator) {
      this._coordinator.send({ type: 'state', clientId: this._clientId, lastEventId: this._lastEventId, conn: this._state });
    }
  }

  _tabMessage(msg) {
    if (!msg || typeof msg !== 'object' || !this._running) return;
    if (msg.type === 'sync') {
      if (this._transportActive) this._sendState();
      return;
    }
    if (this._transportActive) return; // this tab leads: it has its own connection
    switch (msg.type) {
      case 'state':
        this._adopt(msg.clientId, msg.lastEventId);
        if (msg.conn) this._setState(msg.conn.state, msg.conn.reason, true);
        break;
      case 'conn':
        this._setState(msg.state, msg.reason, true);
        break;
      case 'event':
        this._adopt(msg.clientId, msg.lastEventId);
        this._receive(msg.event, false);
        break;
      case 'fatal':
        this._fail(new PostboxError(msg.code, msg.message, { status: msg.status, detail: msg.detail, fatal: true }), false);
        break;
      default:
        break;
    }
  }

  /** A follower takes the leader's client id and cursor, to continue from them when it takes over. */
  _adopt(clientId, lastEventId) {
    if (typeof clientId === 'string' && CLIENT_ID_PATTERN.test(clientId)) this._clientId = clientId;
    if (lastEventId !== undefined) this._lastEventId = lastEventId;
    this._save();
  }

  // --- transports ----------------------------------------------------------------------------------

  _startTransport() {
    if (this._transportActive || !this._running) return;
    this._transportActive = true;
    this._generation += 1;
    this._attempt = 0;
    const generation = this._generation;
    this._setState(this._offline ? 'disconnected' : 'connecting', this._offline ? 'offline' : null);
    if (this._transport === 'sse') this._openEventSource(generation, false);
    else this._pollLoop(generation).catch((err) => this._report(new PostboxError('internal_error', String(err), { cause: err })));
  }

  _stopTransport() {
    this._transportActive = false;
    this._generation += 1;
    if (this._abort) {
      this._abort.abort();
      this._abort = null;
    }
    if (this._eventSource) {
      this._eventSource.close();
      this._eventSource = null;
    }
  }

  async _pollLoop(generation) {
    const live = () => this._generation === generation;
    while (live()) {
      if (this._offline) {
        await this._offline; // the browser is offline: no request until it is back
        continue;
      }
      const abort = new AbortController();
      this._abort = abort;
      let delay;
      try {
        const batch = await this._pollOnce(abort);
        if (!live()) return; // stopped while the answer arrived: its events come again next time
        this._attempt = 0;
        this._refreshes = 0;
        if (this._state.state !== 'resyncing') this._setState('connected');
        for (const event of batch) {
          if (!live()) break; // a handler stopped the client: the rest comes again next time
          this._receive(event, true);
        }
        this._save();
        continue; // poll again at once
      } catch (err) {
        if (!live()) return;
        if (err.status === 401 && (await this._refreshToken())) {
          if (!live()) return;
          continue; // the same client id and cursor, with the new token
        }
        if (err.fatal) {
          this._fail(err, true);
          return;
        }
        if (err.code === 'superseded') {
          // Another tab or device polls with this client id (a duplicated tab copies sessionStorage):
          // take a postbox of our own rather than take turns with it.
          this._renewClientId();
          continue;
        }
        if (this._offline) continue; // aborted because the browser went offline
        this._setState('disconnected', err.code);
        this._report(err);
        delay = Math.max(err.retryAfter ?? 0, this._nextBackoff());
      }
      await this._sleep(delay, abort.signal);
    }
  }

  /** One long poll: resolves to its events, or rejects with a PostboxError. */
  async _pollOnce(abort) {
    let url = `${this._url(EVENTS_PATH)}?client_id=${encodeURIComponent(this._clientId)}`;
    if (this._lastEventId) url += `&last_event_id=${encodeURIComponent(this._lastEventId)}`;
    // A safety net for proxies that hold a request forever: the server answers within ~5.5 s.
    let timedOut = false;
    const timer = this._timers.setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this._requestTimeout);
    try {
      let res;
      try {
        res = await this._fetch(url, {
          method: 'GET',
          headers: this._headers(),
          signal: abort.signal,
          cache: 'no-store',
        });
      } catch (err) {
        const code = timedOut ? 'timeout' : 'network_error';
        throw new PostboxError(code, `Postbox poll failed: ${err && err.message ? err.message : err}`, { cause: err });
      }
      if (!res.ok) throw await errorFromResponse(res);
      let body;
      try {
        body = await res.json();
      } catch (err) {
        throw new PostboxError('bad_response', 'Postbox answered 200 with a body that is not JSON', { status: res.status, cause: err });
      }
      if (!body || !Array.isArray(body.events)) {
        throw new PostboxError('bad_response', 'Postbox answered without an `events` array', { status: res.status });
      }
      return body.events;
    } finally {
      this._timers.clearTimeout(timer);
    }
  }

  _openEventSource(generation, manual) {
    let url = `${this._url(SSE_PATH)}?token=${encodeURIComponent(this._token)}&client_id=${encodeURIComponent(this._clientId)}`;
    // The browser resends Last-Event-ID by itself on its own reconnects; a new EventSource needs it here.
    if (manual && this._lastEventId) url += `&last_event_id=${encodeURIComponent(this._lastEventId)}`;
    const es = new this._EventSource(url);
    this._eventSource = es;
    this._sseListening = new Set();
    this._sseListener = (ev) => {
      if (this._generation === generation) this._sseRecord(ev);
    };
    for (const type of [...KNOWN_TYPES, ...SSE_CONTROL_TYPES, ...this._handlers.keys()]) this._listenSse(type);
    es.onopen = () => {
      if (this._generation !== generation) return;
      this._attempt = 0;
      this._setState('connected');
    };
    es.onerror = () => {
      if (this._generation !== generation) return;
      if (es.readyState === EVENTSOURCE_CLOSED) {
        // The browser gave up (an error status, or a wrong content type): reconnect ourselves.
        es.close();
        this._eventSource = null;
        this._reconnectEventSource(generation, url).catch((err) => this._report(new PostboxError('internal_error', String(err), { cause: err })));
      } else if (this._sseReconnecting) {
        // The server ended the stream on purpose; the browser resumes it with Last-Event-ID.
        this._sseReconnecting = false;
      } else {
        this._setState('disconnected', 'network_error');
        this._report(new PostboxError('network_error', 'Postbox event stream interrupted; the browser reconnects'));
      }
    };
  }

  _listenSse(type) {
    const es = this._eventSource;
    if (!es || CLIENT_TYPES.has(type) || this._sseListening.has(type)) return;
    this._sseListening.add(type);
    es.addEventListener(type, this._sseListener);
  }

  _sseRecord(ev) {
    if (SSE_CONTROL_TYPES.has(ev.type)) {
      this._attempt = 0;
      this._sseReconnecting = ev.type === 'reconnect';
      if (ev.type === 'reconnect' && parseJson(ev.data)?.reason === 'superseded') {
        // Another tab or device streams with this client id: take one of our own and reopen.
        this._renewClientId();
        const generation = this._generation;
        if (this._eventSource) this._eventSource.close();
        this._eventSource = null;
        this._openEventSource(generation, false);
      }
      return;
    }
    const data = ev.data === undefined || ev.data === '' ? null : (parseJson(ev.data) ?? ev.data);
    // SSE records carry no creation time: `timestamp` is null in this mode.
    this._receive({ id: ev.lastEventId || null, event: ev.type, data, timestamp: null }, true);
    this._save();
  }

  /** EventSource shows no status code: a plain request tells 401 and Retry-After from network errors. */
  async _reconnectEventSource(generation, url) {
    const abort = new AbortController();
    this._abort = abort;
    let error;
    try {
      const res = await this._fetch(url.replace(/([?&])token=[^&]*&?/, '$1'), {
        method: 'GET',
        headers: { ...this._headers(), Accept: 'text/event-stream' },
        signal: abort.signal,
        cache: 'no-store',
      });
      error = res.ok
        ? new PostboxError('stream_closed', 'Postbox closed the event stream')
        : await errorFromResponse(res);
      abort.abort(); // an open stream stays open otherwise
    } catch (err) {
      error = new PostboxError('network_error', `Postbox event stream failed: ${err && err.message ? err.message : err}`, { cause: err });
    }
    if (this._generation !== generation) return;
    if (error.status === 401 && (await this._refreshToken())) {
      if (this._generation === generation) this._openEventSource(generation, true);
      return;
    }
    if (error.fatal) {
      this._fail(error, true);
      return;
    }
    this._report(error);
    const retry = new AbortController();
    this._abort = retry;
    await this._sleep(Math.max(error.retryAfter ?? 0, this._nextBackoff()), retry.signal);
    if (this._generation === generation) this._openEventSource(generation, true);
  }

  /**
   * On 401: asks the application for a fresh token (`getToken`), at most three times in a row without
   * a success in between. Whether a new one came.
   */
  async _refreshToken() {
    if (!this._getToken || this._refreshes >= 3) return false;
    this._refreshes += 1;
    try {
      const token = await this._getToken();
      if (typeof token !== 'string' || token === '' || token === this._token) return false;
      this._token = token;
      return true;
    } catch (err) {
      this._report(new PostboxError('token_refresh_failed', `getToken failed: ${err && err.message ? err.message : err}`, { cause: err }));
      return false;
    }
  }

  /**
   * A new connection state: kept, reported to the `state` handlers, and (by the tab that holds the
   * connection) told to the other tabs, which report it too.
   */
  _setState(state, reason = null, fromLeader = false) {
    if (this._state.state === state && this._state.reason === reason) return;
    this._state = { state, reason };
    const set = this._handlers.get('state');
    if (set) {
      for (const handler of [...set]) {
        try {
          handler({ ...this._state });
        } catch (err) {
          logError("postbox: a 'state' handler threw", err);
        }
      }
    }
    if (!fromLeader && this._transportActive && this._shared && this._coordinator) {
      this._coordinator.send({ type: 'conn', state, reason });
    }
  }

  /** The browser went offline: stop trying (the request in flight is aborted) until it is back. */
  _wentOffline() {
    if (this._offline || !this._running) return;
    this._offline = new Promise((resolve) => {
      this._offlineResolve = resolve;
    });
    if (this._transportActive) {
      if (this._abort) this._abort.abort();
      this._setState('disconnected', 'offline');
    }
  }

  /** Back online: go on at once, without waiting out a backoff. */
  _cameOnline() {
    if (!this._offline) return;
    const resolve = this._offlineResolve;
    this._offline = null;
    this._offlineResolve = null;
    this._attempt = 0;
    if (this._transportActive) {
      this._setState('connecting');
      if (this._abort) this._abort.abort(); // ends a backoff sleep
    }
    resolve();
  }

  /** Replaces the token for every later request (the client id, cursor and storage stay). */
  setToken(token) {
    if (!token || typeof token !== 'string') throw new TypeError('PostboxClient.setToken: a token string is required');
    this._token = token;
  }

  /** A new client id (a postbox of this tab's own), starting without a cursor. */
  _renewClientId() {
    this._clientId = generateClientId(this._random);
    this._lastEventId = null;
    this._save();
  }

  _nextBackoff() {
    const delay = backoffDelay(this._attempt, this._random, this._backoff);
    this._attempt += 1;
    return delay;
  }

  // --- the REST API ----------------------------------------------------------------------------------
  // Each call resolves to the server's JSON answer, or rejects with a PostboxError (its `status`,
  // `code` and `detail` are the server's). A 401 asks `getToken` for a fresh token and tries once more.

  /**
   * `POST chats/`: sends `text` to a user, with an optional attachment (a Blob or File, sent as a
   * form). Resolves to the stored message.
   */
  send(receiver, text, { attachment = null, filename } = {}) {
    if (attachment) {
      const form = new FormData();
      form.append('receiver', String(receiver));
      if (text) form.append('message', text);
      form.append('attachment', attachment, filename ?? attachment.name ?? 'attachment');
      return this._api('POST', '/chats/', { form });
    }
    return this._api('POST', '/chats/', { json: { receiver, message: text } });
  }

  /**
   * `GET chats/conversation/{userId}/`: a page of the history with a user. No cursor: the newest page;
   * `before`: the page before that message id (scrolling up); `since` (a message id or an RFC 3339
   * time): what came after it (catching up).
   */
  history(userId, { before, since, limit } = {}) {
    return this._api('GET', `/chats/conversation/${encodeURIComponent(userId)}/`, { query: { before, since, limit } });
  }

  /** `GET chats/conversations/`: the caller's conversations with their last message and unread counts. */
  conversations() {
    return this._api('GET', '/chats/conversations/');
  }

  /**
   * `POST chats/mark-read/`: marks a conversation read (`{ conversationId }` or `{ userId }`, optionally
   * `upTo` a message id) or some messages (`{ messageIds }`); the sender gets a `read_receipt`.
   */
  markRead({ conversationId, userId, messageIds, upTo } = {}) {
    const body = {};
    if (conversationId != null) body.conversation_id = conversationId;
    if (userId != null) body.user_id = userId;
    if (messageIds != null) body.message_ids = messageIds;
    if (upTo != null) body.up_to = upTo;
    return this._api('POST', '/chats/mark-read/', { json: body });
  }

  /**
   * `POST chats/typing/`: tells a user this one is typing, at most once per `typingThrottleMs` (2 s) per
   * receiver; resolves to `false` when a call was skipped for that. `typing(id, false)` always goes.
   */
  async typing(receiver, isTyping = true) {
    const now = this._now();
    const last = this._typingSent.get(receiver);
    if (isTyping && last !== undefined && now - last < this._typingThrottleMs) return false;
    if (isTyping) this._typingSent.set(receiver, now);
    else this._typingSent.delete(receiver);
    await this._api('POST', '/chats/typing/', { json: { receiver, is_typing: isTyping } });
    return true;
  }

  /** `GET chats/unread-count/`: unread messages, in total and per conversation. */
  unreadCount() {
    return this._api('GET', '/chats/unread-count/');
  }

  /** `GET chats/online-users/`: the caller's contacts who are online. */
  onlineUsers() {
    return this._api('GET', '/chats/online-users/');
  }

  /** `GET notifications/`: the caller's notifications, newest first (`unread`, `before`, `limit`). */
  notifications({ unread, before, limit } = {}) {
    return this._api('GET', '/notifications/', { query: { unread: unread ? 'true' : undefined, before, limit } });
  }

  /** `POST notifications/{id}/read/`. */
  markNotificationRead(id) {
    return this._api('POST', `/notifications/${encodeURIComponent(id)}/read/`);
  }

  /** `POST notifications/read-all/`. */
  markAllNotificationsRead() {
    return this._api('POST', '/notifications/read-all/');
  }

  /**
   * `POST poll/register/`: creates this client's own postbox now (polling registers it too, on first
   * use), so events from this moment on are kept for it.
   */
  register() {
    return this._api('POST', '/poll/register/', { json: { client_id: this._clientId } });
  }

  /** `GET poll/missed/?after=`: the stored events of the user's sequence after a number. */
  missed(after, { limit } = {}) {
    return this._api('GET', '/poll/missed/', { query: { after, limit } });
  }

  async _api(method, path, { json, form, query } = {}, retried = false) {
    let url = this._url(API + path);
    const params = Object.entries(query || {}).filter(([, v]) => v !== undefined && v !== null);
    if (params.length) url += `?${params.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&')}`;
    const headers = this._headers();
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form) {
      body = form; // the browser sets the multipart boundary
    }
    const abort = new AbortController();
    let timedOut = false;
    const timer = this._timers.setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this._requestTimeout);
    let res;
    try {
      res = await this._fetch(url, { method, headers, body, cache: 'no-store', signal: abort.signal });
    } catch (err) {
      const code = timedOut ? 'timeout' : 'network_error';
      throw new PostboxError(code, `Postbox ${method} ${path} failed: ${err && err.message ? err.message : err}`, { cause: err });
    } finally {
      this._timers.clearTimeout(timer);
    }
    if (res.status === 401 && !retried && (await this._refreshToken())) {
      return this._api(method, path, { json, form, query }, true);
    }
    if (!res.ok) throw await errorFromResponse(res);
    this._refreshes = 0;
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? parseJson(text) : null;
  }

  // --- events ----------------------------------------------------------------------------------------

  /**
   * One event from the server (`fromServer`) or from the leader tab: dispatched unless its id was seen,
   * and its id becomes the cursor (a duplicate too: it was processed before).
   */
  _receive(event, fromServer) {
    if (!event || typeof event !== 'object' || typeof event.event !== 'string') return;
    const id = event.id == null || event.id === '' ? null : String(event.id);
    const fresh = id === null || this._seen.add(id);
    if (fresh && fromServer && this._fillable(event)) {
      // A loss with a range: fetched instead of announced (announced only if it cannot be, or if
      // events without a number were lost with it: those only a reload brings back).
      if (id !== null) this._lastEventId = id;
      const unnumbered = Number.isInteger(event.data.lost_unnumbered) && event.data.lost_unnumbered > 0;
      this._requestFill(event.data.seq_from - 1, unnumbered ? null : event);
      if (unnumbered) this._announce(event);
      this._sendState();
      return;
    }
    if (fresh) this._dispatch(event);
    if (id !== null) this._lastEventId = id;
    if (fromServer) this._forward(event);
    if (this._seq.see(event.seq) && fromServer) this._requestFill();
  }

  /** A `resync` whose lost events carried numbers, which `poll/missed/` may still keep. */
  _fillable(event) {
    const data = event.data;
    return (
      event.event === 'resync' &&
      data !== null &&
      typeof data === 'object' &&
      Number.isInteger(data.seq_from) &&
      data.seq_from >= 1 &&
      !data.lost_unknown
    );
  }

  /**
   * Fills the missing numbers (after `after`, or after the tracker's `last`) from `poll/missed/`, after
   * the grace period; one fill at a time.
   */
  _requestFill(after, resync) {
    if (Number.isInteger(after)) this._fillFrom = this._fillFrom === null ? after : Math.min(this._fillFrom, after);
    if (resync) this._fillResyncs.push(resync);
    if (this._filling) return;
    this._filling = true;
    this._fillLoop()
      .catch((err) => this._report(new PostboxError('internal_error', String(err), { cause: err })))
      .finally(() => {
        this._filling = false;
      });
  }

  async _fillLoop() {
    await this._sleep(this._gapGraceMs);
    // Bounded: a jump the server cannot close (it should not happen) is announced, not fetched forever.
    for (let round = 0; this._running; round += 1) {
      if (round === 10) {
        this._announce({ id: null, event: 'resync', data: { reason: 'missed', lost: null, lost_unknown: true, since: null, seq_from: this._seq.last + 1 }, timestamp: null });
        this._seq.reset(this._seq.highest);
        break;
      }
      let after = this._fillFrom;
      this._fillFrom = null;
      if (after === null) {
        if (!this._seq.hasGap) break;
        after = this._seq.last;
      }
      const resyncs = this._fillResyncs.splice(0);
      const before = this._state;
      this._setState('resyncing');
      const outcome = await this._fetchMissed(after);
      if (this._state.state === 'resyncing') this._setState(before.state, before.reason);
      if (outcome === 'filled') continue;
      // Not kept any more, or not reachable now: announce, so the application reloads from REST.
      const announced = resyncs.length
        ? resyncs
        : [{ id: null, event: 'resync', data: { reason: 'missed', lost: null, lost_unknown: true, since: null, seq_from: after + 1 }, timestamp: null }];
      for (const event of announced) this._announce(event);
      if (outcome === 'error') {
        this._seq.reset(this._seq.highest);
        break;
      }
    }
  }

  /** Fetches and hands over the events after `after`: 'filled', 'gone' (not kept) or 'error'. */
  async _fetchMissed(after) {
    let cursor = after;
    for (let page = 0; page < 100; page += 1) {
      let body;
      try {
        body = await this.missed(cursor);
      } catch (err) {
        this._report(err);
        return 'error';
      }
      if (!body || !Array.isArray(body.events)) return 'error';
      if (body.kept === false) {
        this._seq.reset(Number.isInteger(body.last_seq) ? body.last_seq : null);
        return 'gone';
      }
      for (const event of body.events) {
        this._deliver(event);
        if (Number.isInteger(event.seq)) cursor = Math.max(cursor, event.seq);
      }
      this._save();
      if (!body.more) return 'filled';
    }
    return 'filled';
  }

  /** Tells the other tabs of an event this tab handed over (with the cursor they continue from). */
  _forward(event) {
    if (this._shared && this._coordinator) {
      this._coordinator.send({ type: 'event', event, clientId: this._clientId, lastEventId: this._lastEventId });
    }
  }

  /** A resync held back while its range was fetched: handed over now, to this tab and the others. */
  _announce(event) {
    this._dispatch(event);
    this._forward(event);
  }

  /** An event that did not come through the postbox: handed over once per id, the cursor untouched. */
  _deliver(event) {
    if (!event || typeof event !== 'object' || typeof event.event !== 'string') return;
    const id = event.id == null || event.id === '' ? null : String(event.id);
    if (id === null || this._seen.add(id)) this._dispatch(event);
    this._seq.see(event.seq);
    this._forward(event);
  }

  _dispatch(event) {
    if (event.event === 'resync' && this._onResync) this._call(this._onResync, event.data, event);
    for (const type of [event.event, '*']) {
      const set = this._handlers.get(type);
      if (!set) continue;
      for (const handler of [...set]) this._call(handler, event.data, event);
    }
  }

  _call(handler, data, event) {
    try {
      handler(data, event);
    } catch (err) {
      this._report(new PostboxError('handler_error', `A handler of '${event.event}' threw: ${err && err.message ? err.message : err}`, { cause: err }));
    }
  }

  /** A fatal error (401, 403): stop, tell the other tabs, report. */
  _fail(error, tellTabs) {
    error.fatal = true;
    this._setState('disconnected', error.status === 401 || error.code === 'unauthorized' ? 'unauthorized' : error.code);
    if (tellTabs && this._coordinator) {
      this._coordinator.send({ type: 'fatal', code: error.code, message: error.message, status: error.status, detail: error.detail });
    }
    this._failing = true;
    this.stop();
    this._failing = false;
    if (error.status === 401 || error.code === 'unauthorized') this._emit('unauthorized', error);
    this._report(error);
  }

  _report(error) {
    if (this._onError) {
      try {
        this._onError(error);
      } catch (err) {
        logError('postbox: onError threw', err);
      }
    }
    this._emit('error', error);
  }

  _emit(type, error) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(error);
      } catch (err) {
        logError(`postbox: a '${type}' handler threw`, err);
      }
    }
  }

  // --- plumbing --------------------------------------------------------------------------------------

  _url(path) {
    return this._baseUrl + path;
  }

  _headers() {
    return { Authorization: `Token ${this._token}`, Accept: 'application/json' };
  }

  _load() {
    if (!this._storage) return {};
    try {
      const saved = JSON.parse(this._storage.getItem(this._storageKey) || '{}');
      return saved && typeof saved === 'object' ? saved : {};
    } catch {
      return {};
    }
  }

  _save() {
    if (!this._storage) return;
    try {
      this._storage.setItem(
        this._storageKey,
        JSON.stringify({ clientId: this._clientId, lastEventId: this._lastEventId, lastSeq: this._seq.last }),
      );
    } catch {
      // quota or privacy mode: the cursor just does not survive a reload
    }
  }
}
