// Test doubles for the browser APIs postbox.js uses: fetch, timers, BroadcastChannel, Web Locks,
// EventSource, sessionStorage. Kept outside test/ so `node --test test/` does not count it as a test file.

/** Lets pending promise callbacks and immediates run. */
export async function flush(rounds = 5) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** Waits until `predicate()` is true, flushing in between; fails after `rounds`. */
export async function until(predicate, rounds = 200, what = 'condition') {
  for (let i = 0; i < rounds; i += 1) {
    if (predicate()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A promise with its resolve function outside: `const d = deferred(); ...; d.resolve(value)`. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  promise.resolve = resolve;
  return promise;
}

/** A JSON Response. */
export function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  });
}

/** A poll answer carrying `events`. */
export function events(...list) {
  return json(200, { events: list, timestamp: 1700000000.5 });
}

/** An event envelope. */
export function ev(id, event = 'message', data = { id }) {
  return { id, event, data, timestamp: 1700000000.25 };
}

function abortError() {
  return new DOMException('The operation was aborted.', 'AbortError');
}

/**
 * A scripted fetch. Each call takes the next step of `steps`:
 * a Response (or a promise of one, or a function (url, init) => Response), the string 'network' (rejects with a TypeError,
 * as fetch does offline), or 'hang' (a long poll that waits until aborted). When the script is used up,
 * calls hang. Calls are recorded in `fetch.calls` as { url, init, aborted }.
 */
export function scriptedFetch(steps = []) {
  const queue = [...steps];
  const calls = [];
  const waiters = [];
  const fetch = (url, init = {}) => {
    const call = { url: String(url), init, aborted: false };
    calls.push(call);
    for (const w of [...waiters]) {
      if (calls.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(call);
      }
    }
    let step = queue.length ? queue.shift() : 'hang';
    if (typeof step === 'function') step = step(url, init);
    if (step === 'network') return Promise.reject(new TypeError('Failed to fetch'));
    if (step === 'hang') {
      return new Promise((resolve, reject) => {
        const signal = init.signal;
        if (!signal) return;
        const onAbort = () => {
          call.aborted = true;
          reject(abortError());
        };
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      });
    }
    return Promise.resolve(step);
  };
  fetch.calls = calls;
  fetch.push = (...more) => queue.push(...more);
  /** Resolves when the n-th call (1-based) happened. */
  fetch.waitForCall = (n) =>
    calls.length >= n ? Promise.resolve(calls[n - 1]) : new Promise((resolve) => waiters.push({ n, resolve }));
  /** The URLs of the poll calls. */
  fetch.polls = () => calls.filter((c) => c.url.includes('/poll/events/')).map((c) => new URL(c.url, 'http://x'));
  return fetch;
}

/** A sleep that records the delays and returns at once. */
export function recordingSleep() {
  const delays = [];
  const sleep = async (ms) => {
    delays.push(ms);
  };
  sleep.delays = delays;
  return sleep;
}

/** Manual timers: nothing fires until advance(ms). */
export class FakeClock {
  constructor() {
    this.now = 0;
    this._timers = new Map();
    this._next = 1;
    this.setTimeout = (fn, ms) => {
      const id = this._next++;
      this._timers.set(id, { at: this.now + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this._timers.delete(id);
    };
  }

  /** Runs every timer due within `ms`, in time order, flushing promises after each. */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let dueId = null;
      let due = null;
      for (const [id, t] of this._timers) {
        if (t.at <= end && (due === null || t.at < due.at)) {
          dueId = id;
          due = t;
        }
      }
      if (due === null) break;
      this._timers.delete(dueId);
      this.now = due.at;
      due.fn();
      await flush();
    }
    this.now = end;
    await flush();
  }
}

/**
 * A BroadcastChannel class whose instances talk to the other instances of the same hub with the same
 * name (like tabs of one origin): asynchronous delivery, structured clone, not to the sender.
 */
export function channelHub() {
  const open = new Set();
  class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      this.closed = false;
      this.frozen = false; // a frozen tab neither sends nor receives (a hung or suspended page)
      open.add(this);
    }

    postMessage(message) {
      if (this.closed) throw new DOMException('closed', 'InvalidStateError');
      if (this.frozen) return;
      const data = structuredClone(message);
      for (const other of open) {
        if (other === this || other.name !== this.name) continue;
        setImmediate(() => {
          if (!other.closed && !other.frozen && other.onmessage) other.onmessage({ data });
        });
      }
    }

    close() {
      this.closed = true;
      open.delete(this);
    }
  }
  FakeBroadcastChannel.open = open;
  return FakeBroadcastChannel;
}

/** Web Locks for one origin: exclusive locks granted in request order, requests abortable by signal. */
export class FakeLocks {
  constructor() {
    this._held = new Set();
    this._queues = new Map();
  }

  request(name, options, callback) {
    if (typeof options === 'function') {
      callback = options;
      options = {};
    }
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject };
      const signal = options && options.signal;
      if (signal) {
        if (signal.aborted) {
          reject(abortError());
          return;
        }
        signal.addEventListener(
          'abort',
          () => {
            const q = this._queues.get(name) || [];
            const i = q.indexOf(entry);
            if (i >= 0) {
              q.splice(i, 1);
              reject(abortError());
            }
          },
          { once: true },
        );
      }
      if (!this._queues.has(name)) this._queues.set(name, []);
      this._queues.get(name).push(entry);
      this._grant(name);
    });
  }

  holds(name) {
    return this._held.has(name);
  }

  _grant(name) {
    const q = this._queues.get(name);
    if (this._held.has(name) || !q || q.length === 0) return;
    const entry = q.shift();
    this._held.add(name);
    setImmediate(async () => {
      try {
        entry.resolve(await entry.callback({ name, mode: 'exclusive' }));
      } catch (err) {
        entry.reject(err);
      } finally {
        this._held.delete(name);
        this._grant(name);
      }
    });
  }
}

/** An EventSource class recording its instances; tests drive them with open(), emit() and fail(). */
export function eventSourceClass() {
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.readyState = FakeEventSource.CONNECTING;
      this.onopen = null;
      this.onerror = null;
      this._listeners = new Map();
      this._lastEventId = '';
      FakeEventSource.instances.push(this);
    }

    addEventListener(type, fn) {
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(fn);
    }

    removeEventListener(type, fn) {
      const set = this._listeners.get(type);
      if (set) set.delete(fn);
    }

    close() {
      this.readyState = FakeEventSource.CLOSED;
    }

    open() {
      this.readyState = FakeEventSource.OPEN;
      if (this.onopen) this.onopen({ type: 'open' });
    }

    /** Delivers one SSE record (`id:` sticks, as in browsers). */
    emit(type, data, id) {
      if (this.readyState === FakeEventSource.CLOSED) return;
      if (id !== undefined) this._lastEventId = id;
      const record = { type, data: typeof data === 'string' ? data : JSON.stringify(data), lastEventId: this._lastEventId };
      for (const fn of this._listeners.get(type) || []) fn(record);
    }

    /** A connection failure; `closed` means the browser gave up (non-200, wrong content type). */
    fail(closed) {
      this.readyState = closed ? FakeEventSource.CLOSED : FakeEventSource.CONNECTING;
      if (this.onerror) this.onerror({ type: 'error' });
    }

    listens(type) {
      return (this._listeners.get(type) || new Set()).size > 0;
    }
  }
  FakeEventSource.CONNECTING = 0;
  FakeEventSource.OPEN = 1;
  FakeEventSource.CLOSED = 2;
  FakeEventSource.instances = [];
  return FakeEventSource;
}

/** sessionStorage in memory. */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }

  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  setItem(key, value) {
    this.map.set(key, String(value));
  }

  removeItem(key) {
    this.map.delete(key);
  }
}

/** Options that keep a client away from Node's globals (its BroadcastChannel, timers) in tests. */
export function isolated(extra = {}) {
  return {
    token: 'tok-alice',
    shareAcrossTabs: false,
    storage: null,
    window: null,
    sendBeacon: null,
    EventSource: null,
    random: () => 0.5,
    sleep: recordingSleep(),
    timers: new FakeClock(),
    ...extra,
  };
}
