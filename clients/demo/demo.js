/**
 * Postbox demo chat: the reference integration of the JavaScript client with the REST API.
 *
 * - Real time comes from `PostboxClient` (/static/postbox.js): `message`, `typing`, `read_receipt`,
 *   `delivered`, `presence`, `notification` and `resync` events.
 * - State comes from the REST API under /api/v1/communication/: conversations, history pages (`before`
 *   cursor when scrolling up), online users, mark-read, typing, sending (JSON or multipart).
 * - User text only ever reaches the page through `textContent` and attributes, never parsed as HTML.
 */

import { PostboxClient, PostboxError } from '/static/postbox.js';

const API = '/api/v1/communication';
const TOKEN_KEY = 'postbox-demo-token';
const PAGE_SIZE = 30;
const REQUEST_TIMEOUT_MS = 15000;
/** Send "typing" at most this often while the user types, and "stopped" after this long idle. */
const TYPING_EVERY_MS = 2500;
const TYPING_IDLE_MS = 3000;
/** A peer's typing indicator disappears when no new `typing` event came for this long. */
const TYPING_SHOW_MS = 6000;
const TOAST_MS = 6000;
const ONLINE_REFRESH_MS = 30000;

// ---------------------------------------------------------------------------------------------------
// DOM helpers: every element is built with createElement and textContent.
// ---------------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** `el('span', { class: 'x', 'data-testid': 'y' }, 'text', child)`: attributes are set as attributes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';
const ICONS = {
  clip: ['M21.44 11.05l-9.19 9.19a6 6 0 0 1-8.49-8.49l9.19-9.19a4 4 0 0 1 5.66 5.66l-9.2 9.19a2 2 0 0 1-2.83-2.83l8.49-8.48'],
};

/** An inline SVG icon (fixed path data, never user text). */
function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  for (const d of ICONS[name]) {
    const p = document.createElementNS(SVG, 'path');
    p.setAttribute('d', d);
    svg.append(p);
  }
  return svg;
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] || '?')[0];
  return letters.toUpperCase();
}

/** A stable colour per user id. */
function avatarColor(id) {
  const hues = [243, 199, 152, 24, 330, 270, 180, 5];
  return `hsl(${hues[Math.abs(Number(id)) % hues.length]} 62% 52%)`;
}

function avatar(user, withDot) {
  const node = el('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(user.name));
  node.style.background = avatarColor(user.id);
  if (withDot) {
    node.append(el('span', { class: 'presence-dot', 'data-testid': 'presence-dot', 'data-online': String(isOnline(user.id)) }));
  }
  return node;
}

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function shortTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeOf(iso) : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function dayOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleDateString([], { weekday: 'short', month: 'short', day: 'numeric' });
}

// ---------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------

const state = {
  token: null,
  me: null, // { id, name }
  client: null,
  /** userId -> { id, name, username, conversationId, lastMessage, lastMessageAt, unread } */
  contacts: new Map(),
  online: new Set(),
  /** userId -> { name, username } of users seen in the online list (names for chats started by id) */
  known: new Map(),
  onlineTimer: null,
  /** userId -> timer of a peer's typing indicator */
  typing: new Map(),
  /** The open chat: { userId, messages: Map<id, MessageView>, loaded, nextBefore, hasMore, loadingOlder, ticket } */
  active: null,
  typingSentAt: 0,
  typingIdleTimer: null,
  markingRead: false,
  markAgain: false,
  notifications: { available: false, unread: 0, items: [] },
  notificationsSeq: 0, // bumped by every load and mark: only the newest answer is applied
  attachmentUrls: [], // blob: URLs of the open chat's attachments, revoked when it closes
  previews: new Map(), // message id -> Promise of an image's blob: URL
  /**
   * message id -> { read_at, delivered_at } of our own messages whose receipt came before the message
   * itself: the reader's receipt and our own copy of the message reach us by different paths (the
   * send's answer, our postbox), so under load the receipt can win. Applied when the message arrives.
   */
  early: new Map(),
  generation: 0, // bumped on logout: answers of an old session are dropped
};

class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

/** One REST call with the token in a header and a deadline. JSON in (`json`) or a form (`form`). */
async function api(path, { method = 'GET', json, form, raw = false } = {}) {
  const headers = { Authorization: `Token ${state.token}` };
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form; // the browser sets the multipart boundary
  }
  if (!raw) headers.Accept = 'application/json';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  let res;
  try {
    res = await fetch(path.startsWith('/') ? path : `${API}/${path}`, { method, headers, body, signal: abort.signal, cache: 'no-store' });
  } catch (err) {
    clearTimeout(timer);
    throw new ApiError(0, abort.signal.aborted ? 'the server did not answer in time' : 'the server is unreachable');
  }
  try {
    if (!res.ok) {
      let data = null;
      try {
        data = await res.json();
      } catch {
        // not JSON
      }
      if (res.status === 401 && path !== 'poll/register/') sessionExpired();
      throw new ApiError(res.status, (data && data.detail) || res.statusText || `HTTP ${res.status}`, data);
    }
    if (raw) return res;
    return res.status === 204 ? null : await res.json();
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A call of the SDK (`clients/js`, the same client that receives), with this page's error handling: a
 * 401 ends the session, and errors carry the server's detail.
 */
async function sdk(call, client = state.client) {
  try {
    return await call(client);
  } catch (err) {
    if (!(err instanceof PostboxError)) throw err;
    if (err.status === 401) sessionExpired();
    const detail = err.status === 0 ? (err.code === 'timeout' ? 'the server did not answer in time' : 'the server is unreachable') : err.detail;
    throw new ApiError(err.status, detail, null);
  }
}

function contact(userId, name) {
  let c = state.contacts.get(userId);
  if (!c) {
    c = { id: userId, name: name || `User #${userId}`, username: null, conversationId: null, lastMessage: null, lastMessageAt: null, unread: 0 };
    state.contacts.set(userId, c);
  } else if (name && c.name.startsWith('User #')) {
    c.name = name;
  }
  const seen = state.known.get(userId);
  if (seen) {
    if (c.name.startsWith('User #')) c.name = seen.name;
    c.username = c.username || seen.username;
  }
  return c;
}

function isOnline(userId) {
  return state.online.has(userId);
}

// ---------------------------------------------------------------------------------------------------
// Log in and out
// ---------------------------------------------------------------------------------------------------

function showLogin(message) {
  $('app-view').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = message || '';
  $('token-input').value = '';
  $('token-input').focus();
}

async function login(token) {
  const generation = ++state.generation;
  state.token = token;
  const client = new PostboxClient({
    token,
    onResync: () => reloadAll({ resync: true }),
    typingThrottleMs: 0, // the composer throttles typing signals itself
  });
  // The client's connection state, as every tab of this page hears it.
  client.on('state', ({ state: s, reason }) => {
    if (generation !== state.generation) return;
    if (s === 'connected' || s === 'resyncing') setConnection('online');
    else if (s === 'disconnected' && reason === 'offline') setConnection('offline');
    else if (s === 'disconnected' && reason !== 'stopped') setConnection('reconnecting');
  });
  // Register this tab's client id before the first poll, so its postbox keeps every event from now on
  // (the answer also tells who we are).
  let registered;
  try {
    registered = await client.register();
  } catch (err) {
    state.token = null;
    if (err.status === 401) {
      localStorage.removeItem(TOKEN_KEY);
      showLogin('This token was refused.');
    } else {
      showLogin(`Cannot log in: ${err.status ? err.detail : 'the server is unreachable'}`);
    }
    return;
  }
  if (generation !== state.generation) return;
  localStorage.setItem(TOKEN_KEY, token);
  state.me = { id: registered.user_id, name: null };
  api('me/')
    .then((me) => {
      if (generation === state.generation && state.me) {
        state.me.name = me.display_name;
        renderMe();
      }
    })
    .catch(() => {}); // the header keeps showing the id
  state.client = client;
  subscribe(client);
  client.start();
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  renderMe();
  setConnection('online');
  // Presence events cover contacts; a slow refresh covers users one has not talked to yet.
  state.onlineTimer = setInterval(() => {
    if (pageVisible()) loadOnline();
  }, ONLINE_REFRESH_MS);
  await reloadAll();
}

async function logout(message) {
  state.generation += 1;
  const client = state.client;
  state.client = null;
  localStorage.removeItem(TOKEN_KEY);
  if (client) await client.disconnect();
  closeChat();
  state.token = null;
  state.me = null;
  state.contacts.clear();
  state.online.clear();
  state.known.clear();
  clearInterval(state.onlineTimer);
  state.onlineTimer = null;
  for (const timer of state.typing.values()) clearTimeout(timer);
  state.typing.clear();
  state.notifications = { available: false, unread: 0, items: [] };
  state.early.clear();
  renderConversations();
  renderNotifications();
  $('notifications-panel').hidden = true;
  showLogin(message);
}

function sessionExpired() {
  if (state.token) logout('Your token was refused; log in again.');
}

function renderMe() {
  const me = $('me');
  me.textContent = state.me.name ? `${state.me.name} · #${state.me.id}` : `User #${state.me.id}`;
  me.setAttribute('data-user-id', String(state.me.id));
}

function setConnection(kind) {
  const node = $('connection-status');
  if (node.getAttribute('data-state') === kind) return;
  node.setAttribute('data-state', kind);
  node.textContent = { online: 'connected', reconnecting: 'reconnecting…', offline: 'offline', connecting: 'connecting…' }[kind];
}

// ---------------------------------------------------------------------------------------------------
// Real-time events
// ---------------------------------------------------------------------------------------------------

function subscribe(client) {
  client.on('message', onMessage);
  client.on('typing', onTyping);
  client.on('read_receipt', onReadReceipt);
  client.on('delivered', onDelivered);
  client.on('presence', onPresence);
  client.on('notification', onNotification);
  client.on('unauthorized', () => sessionExpired());
  client.on('error', (err) => {
    if (!err.fatal && err.code !== 'handler_error') setConnection('reconnecting');
    if (err.code === 'handler_error') console.error(err);
  });
}

function peerOf(message) {
  return message.sender_id === state.me.id ? message.receiver_id : message.sender_id;
}

function onMessage(message) {
  const mine = message.sender_id === state.me.id;
  const peer = peerOf(message);
  if (mine) learnMyName(message.sender_name);
  const c = contact(peer, mine ? null : message.sender_name);
  const open = state.active && state.active.userId === peer;
  const isNew = !(open && state.active.messages.has(message.id));
  c.conversationId = message.conversation_id;
  if (!c.lastMessageAt || message.timestamp >= c.lastMessageAt) {
    c.lastMessage = preview(message);
    c.lastMessageAt = message.timestamp;
  }
  if (!mine) {
    stopTyping(peer);
    if (!(open && pageVisible()) && isNew && !message.is_read) c.unread += 1;
    if (!open) toast(message.sender_name, preview(message), 'message');
  }
  if (open) {
    addMessages([message], 'append');
    markReadIfVisible();
  }
  renderConversations();
}

function onTyping(data) {
  if (data.sender_id === state.me.id) return;
  if (!data.is_typing) {
    stopTyping(data.sender_id);
    return;
  }
  contact(data.sender_id, data.sender_name);
  clearTimeout(state.typing.get(data.sender_id));
  state.typing.set(data.sender_id, setTimeout(() => stopTyping(data.sender_id), TYPING_SHOW_MS));
  renderTyping();
  renderConversations();
}

function stopTyping(userId) {
  if (!state.typing.has(userId)) return;
  clearTimeout(state.typing.get(userId));
  state.typing.delete(userId);
  renderTyping();
  renderConversations();
}

function onReadReceipt(data) {
  const ids = new Set(data.message_ids || []);
  if (data.message_id != null) ids.add(data.message_id);
  if (data.reader_id === state.me.id) {
    // Read on another device of ours: clear the badge.
    for (const c of state.contacts.values()) if (c.conversationId === data.conversation_id) c.unread = 0;
    renderConversations();
  }
  if (data.reader_id !== state.me.id) {
    const at = data.read_at || new Date().toISOString();
    for (const id of ids) rememberEarly(id, { read_at: at });
  }
  const active = state.active;
  if (!active) return;
  const changed = [];
  for (const m of active.messages.values()) {
    if (m.conversation_id !== data.conversation_id || m.is_read) continue;
    if (m.receiver_id !== data.reader_id) continue;
    if (ids.size === 0 || ids.has(m.id)) {
      m.is_read = true;
      m.read_at = data.read_at;
      changed.push(m);
    }
  }
  changed.forEach(updateMessageNode);
}

/**
 * Remembers a receipt for one of our messages, in case the message itself is not here yet (see
 * `state.early`). Bounded: the oldest go first.
 */
function rememberEarly(id, status) {
  const known = state.early.get(id) || {};
  state.early.delete(id);
  state.early.set(id, { ...known, ...status });
  while (state.early.size > 500) state.early.delete(state.early.keys().next().value);
}

function onDelivered(data) {
  const active = state.active;
  const ids = new Set(data.message_ids || []);
  const at = data.delivered_at || new Date().toISOString();
  for (const id of ids) rememberEarly(id, { delivered_at: at });
  if (!active) return;
  for (const m of active.messages.values()) {
    if (ids.has(m.id) && !m.delivered_at) {
      m.delivered_at = data.delivered_at;
      updateMessageNode(m);
    }
  }
}

function onPresence(data) {
  if (data.user_id === state.me.id) return;
  if (data.online) state.online.add(data.user_id);
  else state.online.delete(data.user_id);
  if (state.contacts.has(data.user_id)) contact(data.user_id, data.name);
  renderConversations();
  renderChatHeader();
}

function onNotification(data) {
  const d = data && typeof data === 'object' ? data : { message: String(data) };
  const title = d.title || d.notification_type || 'Notification';
  toast(String(title), d.message != null ? String(d.message) : '', 'notification');
  if (state.notifications.available) loadNotifications();
}

function learnMyName(name) {
  if (name && state.me && state.me.name !== name) {
    state.me.name = name;
    renderMe();
  }
}

function preview(message) {
  if (message.message && message.message.trim()) return message.message;
  return message.attachment ? `Attachment (${message.attachment_type || 'file'})` : '';
}

// ---------------------------------------------------------------------------------------------------
// Loading from the REST API
// ---------------------------------------------------------------------------------------------------

/** Loads everything from the REST API: at login, and again when the server lost events (resync). */
async function reloadAll({ resync = false } = {}) {
  const generation = state.generation;
  await Promise.all([loadConversations(), loadOnline(), probeNotifications()]);
  if (generation !== state.generation) return;
  if (resync && state.active) await openChat(state.active.userId); // the open history may miss messages
}

async function loadConversations() {
  const generation = state.generation;
  try {
    const list = await sdk((c) => c.conversations());
    if (generation !== state.generation) return;
    for (const conv of list) {
      const other = conv.other_user;
      const c = contact(other.id, other.name);
      c.name = other.name;
      c.username = other.username;
      c.conversationId = conv.id;
      c.lastMessage = conv.last_message || (conv.last_message_id ? 'Attachment' : '');
      c.lastMessageAt = conv.last_message_at || conv.created_at;
      c.unread = conv.unread_count;
      if (other.online) state.online.add(other.id);
    }
    renderConversations();
  } catch (err) {
    if (err.status !== 401) toast('Could not load conversations', err.detail, 'error');
  }
}

async function loadOnline() {
  const generation = state.generation;
  try {
    const online = await sdk((c) => c.onlineUsers());
    if (generation !== state.generation) return;
    state.online = new Set(online.online_user_ids);
    for (const u of online.users) state.known.set(u.id, { name: u.name, username: u.username });
    for (const c of state.contacts.values()) contact(c.id); // picks up names learnt just now
    renderConversations();
    renderChatHeader();
  } catch {
    // presence is a nicety; the events keep it current
  }
}

// ---------------------------------------------------------------------------------------------------
// Conversation list
// ---------------------------------------------------------------------------------------------------

function renderConversations() {
  const list = $('conversation-list');
  const contacts = [...state.contacts.values()].sort((a, b) => {
    const ta = a.lastMessageAt || '';
    const tb = b.lastMessageAt || '';
    return ta === tb ? a.id - b.id : tb.localeCompare(ta);
  });
  list.replaceChildren(
    ...contacts.map((c) => {
      const active = state.active && state.active.userId === c.id;
      const typing = state.typing.has(c.id);
      const item = el(
        'li',
        {
          class: 'conversation',
          'data-testid': 'conversation',
          'data-user-id': c.id,
          'data-unread': String(c.unread > 0),
          'aria-current': active ? 'true' : null,
          tabindex: '0',
          role: 'button',
        },
        avatar(c, true),
        el(
          'div',
          { class: 'conversation-body' },
          el(
            'div',
            { class: 'conversation-top' },
            el('span', { class: 'conversation-name', 'data-testid': 'conversation-name' }, c.name),
            c.lastMessageAt ? el('span', { class: 'conversation-time' }, shortTime(c.lastMessageAt)) : null,
          ),
          el(
            'div',
            { class: 'conversation-bottom' },
            typing
              ? el('span', { class: 'conversation-typing', 'data-testid': 'conversation-typing' }, 'typing…')
              : el('span', { class: 'conversation-preview', 'data-testid': 'conversation-preview' }, c.lastMessage ?? 'New conversation'),
            c.unread > 0 ? el('span', { class: 'badge', 'data-testid': 'unread-badge' }, c.unread > 99 ? '99+' : c.unread) : null,
          ),
        ),
      );
      item.addEventListener('click', () => openChat(c.id));
      item.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          openChat(c.id);
        }
      });
      return item;
    }),
  );
  $('conversations-empty').hidden = contacts.length > 0;
  renderChatHeader(); // a name or presence learnt for the open chat
}

// ---------------------------------------------------------------------------------------------------
// The open chat
// ---------------------------------------------------------------------------------------------------

async function openChat(userId) {
  const generation = state.generation;
  const c = contact(userId);
  const same = state.active && state.active.userId === userId;
  if (!same) {
    closeChat();
    state.active = { userId, messages: new Map(), loaded: false, nextBefore: null, hasMore: false, loadingOlder: false, ticket: null };
    $('chat-empty').hidden = true;
    $('chat-view').hidden = false;
    $('message-list').replaceChildren();
    $('message-input').value = '';
    renderChatHeader();
    renderTyping();
    renderConversations();
    $('message-input').focus();
  }
  if (!same) loadOnline(); // presence events only come for contacts: ask for a new one's
  const active = state.active;
  const ticket = (active.ticket = {}); // only the latest load of this chat applies
  try {
    const page = await sdk((c) => c.history(userId, { limit: PAGE_SIZE }));
    if (generation !== state.generation || state.active !== active || active.ticket !== ticket) return;
    if (page.conversation_id != null) c.conversationId = page.conversation_id;
    for (const m of page.messages) {
      if (m.sender_id === userId) contact(userId, m.sender_name);
      else if (m.sender_id === state.me.id) learnMyName(m.sender_name);
    }
    // The first page that arrives sets the paging cursor; a reload (resync) only merges what is new.
    const first = !active.loaded;
    if (first) {
      active.loaded = true;
      active.nextBefore = page.next_before;
      active.hasMore = page.has_more;
    }
    addMessages(page.messages, first ? 'initial' : 'merge');
    renderChatHeader();
    renderConversations();
    await fillUp(active);
    markReadIfVisible();
  } catch (err) {
    if (err.status === 404 && state.active === active) {
      toast('No such user', `There is no user #${userId}.`, 'error');
      if (!c.conversationId && !c.lastMessageAt) state.contacts.delete(userId);
      closeChat();
      renderConversations();
    } else if (err.status !== 401) {
      toast('Could not load the conversation', err.detail, 'error');
    }
  }
}

function closeChat() {
  state.active = null;
  stopOwnTyping();
  for (const url of state.attachmentUrls) URL.revokeObjectURL(url);
  state.attachmentUrls = [];
  state.previews = new Map();
  clearAttachment();
  $('chat-view').hidden = true;
  $('chat-empty').hidden = false;
  $('message-list').replaceChildren();
}

/** Loads older pages while the first ones do not fill the pane (no scrollbar, no scroll event). */
async function fillUp(active) {
  const scroller = $('message-scroller');
  for (let i = 0; i < 5 && state.active === active && active.hasMore && scroller.scrollHeight <= scroller.clientHeight; i += 1) {
    await loadOlder();
  }
}

async function loadOlder() {
  const active = state.active;
  if (!active || !active.hasMore || active.loadingOlder || active.nextBefore == null) return;
  active.loadingOlder = true;
  renderLoadOlder();
  try {
    const page = await sdk((c) => c.history(active.userId, { limit: PAGE_SIZE, before: active.nextBefore }));
    if (state.active !== active) return;
    active.nextBefore = page.next_before;
    active.hasMore = page.has_more;
    addMessages(page.messages, 'prepend');
  } catch (err) {
    if (err.status !== 401) toast('Could not load older messages', err.detail, 'error');
  } finally {
    active.loadingOlder = false;
    if (state.active === active) renderLoadOlder();
  }
}

function renderLoadOlder() {
  const active = state.active;
  const button = $('load-older');
  button.hidden = !active || !active.hasMore;
  button.disabled = Boolean(active && active.loadingOlder);
  button.textContent = active && active.loadingOlder ? 'Loading…' : 'Load older messages';
}

function renderChatHeader() {
  const active = state.active;
  if (!active) return;
  const c = contact(active.userId);
  $('chat-title').textContent = c.name;
  $('chat-title').setAttribute('data-user-id', String(c.id));
  const av = $('chat-avatar');
  av.textContent = initials(c.name);
  av.style.background = avatarColor(c.id);
  const presence = $('chat-presence');
  const online = isOnline(c.id);
  presence.setAttribute('data-online', String(online));
  presence.textContent = `${online ? 'online' : 'offline'} · #${c.id}${c.username ? ` · @${c.username}` : ''}`;
}

/**
 * Adds messages to the open chat (deduped by id, kept in id order) and re-renders the list. `initial`
 * and `append` scroll to the bottom (append only when the reader was near it or sent it), `prepend`
 * keeps what the reader looks at in place.
 */
function addMessages(messages, mode) {
  const active = state.active;
  if (!active) return;
  let mineAdded = false;
  for (const m of messages) {
    const known = active.messages.get(m.id);
    if (known) {
      // Keep the furthest state: an old copy must not undo a read receipt.
      known.is_read = known.is_read || m.is_read;
      known.read_at = known.read_at || m.read_at;
      known.delivered_at = known.delivered_at || m.delivered_at;
    } else {
      const added = { ...m };
      const early = m.sender_id === state.me.id ? state.early.get(m.id) : undefined;
      if (early) {
        // Its receipt came first.
        if (early.read_at) Object.assign(added, { is_read: true, read_at: added.read_at || early.read_at });
        if (early.delivered_at) added.delivered_at = added.delivered_at || early.delivered_at;
      }
      active.messages.set(m.id, added);
      if (m.sender_id === state.me.id) mineAdded = true;
    }
  }
  const scroller = $('message-scroller');
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const oldHeight = scroller.scrollHeight;
  const oldTop = scroller.scrollTop;
  renderMessages();
  renderLoadOlder();
  if (mode === 'prepend') {
    scroller.scrollTop = oldTop + (scroller.scrollHeight - oldHeight);
  } else if (mode === 'initial' || fromBottom < 120 || mineAdded) {
    scroller.scrollTop = scroller.scrollHeight;
  }
}

function renderMessages() {
  const active = state.active;
  const sorted = [...active.messages.values()].sort((a, b) => a.id - b.id);
  const nodes = [];
  let lastDay = null;
  for (const m of sorted) {
    const day = dayOf(m.timestamp);
    if (day !== lastDay) {
      nodes.push(el('li', { class: 'day-divider', 'aria-hidden': 'true' }, day));
      lastDay = day;
    }
    nodes.push(messageNode(m));
  }
  $('message-list').replaceChildren(...nodes);
}

function statusOf(m) {
  if (m.is_read || m.read_at) return 'read';
  if (m.delivered_at) return 'delivered';
  return 'sent';
}

function messageNode(m) {
  const mine = m.sender_id === state.me.id;
  const status = mine ? statusOf(m) : null;
  const bubble = el('div', { class: 'bubble' });
  if (m.message) bubble.append(el('span', { class: 'message-text', 'data-testid': 'message-text' }, m.message));
  if (m.attachment) bubble.append(attachmentNode(m));
  const meta = el('div', { class: 'message-meta' }, el('time', { datetime: m.timestamp }, timeOf(m.timestamp)));
  if (mine) {
    meta.append(
      el(
        'span',
        { class: 'message-status', 'data-testid': 'message-status', title: { sent: 'Sent', delivered: 'Delivered', read: 'Read' }[status] },
        status === 'sent' ? '✓' : '✓✓',
      ),
    );
  }
  return el(
    'li',
    { class: 'message', 'data-testid': 'message', 'data-message-id': m.id, 'data-mine': String(mine), 'data-status': status },
    bubble,
    meta,
  );
}

function updateMessageNode(m) {
  const node = document.querySelector(`#message-list [data-message-id="${Number(m.id)}"]`);
  if (node) node.replaceWith(messageNode(m));
}

/** A link to the attachment; the file is fetched with the token in a header (never in the URL). */
function attachmentNode(m) {
  const kind = m.attachment_type || 'file';
  const link = el(
    'a',
    { class: 'attachment', href: m.attachment, 'data-testid': 'message-attachment', 'data-message-id': m.id },
    icon('clip'),
    `Attachment (${kind})`,
  );
  const wrap = el('div', {}, link);
  link.addEventListener('click', async (ev) => {
    ev.preventDefault();
    try {
      const res = await api(m.attachment, { raw: true });
      const url = URL.createObjectURL(await res.blob());
      state.attachmentUrls.push(url);
      const name = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') || '');
      const a = el('a', { href: url, download: name ? name[1] : `attachment-${m.id}` });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) {
      if (err.status !== 401) toast('Could not download the attachment', err.detail, 'error');
    }
  });
  if (kind === 'image') {
    const active = state.active;
    // Fetched once per message while the chat is open (the list is re-rendered often).
    if (!state.previews.has(m.id)) {
      state.previews.set(
        m.id,
        api(m.attachment, { raw: true })
          .then((res) => res.blob())
          .then((blob) => {
            const url = URL.createObjectURL(blob);
            state.attachmentUrls.push(url);
            return url;
          }),
      );
    }
    state.previews
      .get(m.id)
      .then((url) => {
        if (state.active !== active) return;
        const scroller = $('message-scroller');
        const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
        const img = el('img', { class: 'attachment-preview', src: url, alt: 'attached image', 'data-testid': 'attachment-preview' });
        // The image grows the list: a reader at the bottom stays there.
        img.addEventListener('load', () => {
          if (atBottom) scroller.scrollTop = scroller.scrollHeight;
        });
        wrap.append(img);
      })
      .catch(() => {});
  }
  return wrap;
}

function renderTyping() {
  const node = $('typing-indicator');
  const active = state.active;
  if (active && state.typing.has(active.userId)) {
    node.textContent = `${contact(active.userId).name} is typing`;
    node.hidden = false;
  } else {
    node.hidden = true;
    node.textContent = '';
  }
}

// ---------------------------------------------------------------------------------------------------
// Read receipts
// ---------------------------------------------------------------------------------------------------

function pageVisible() {
  return document.visibilityState === 'visible';
}

/** Marks the open conversation read while the page is visible and it has unread incoming messages. */
async function markReadIfVisible() {
  const active = state.active;
  if (!active || !pageVisible()) return;
  const unread = [...active.messages.values()].filter((m) => m.receiver_id === state.me.id && !m.is_read);
  const c = contact(active.userId);
  if (unread.length === 0 && c.unread === 0) return;
  if (state.markingRead) {
    state.markAgain = true;
    return;
  }
  state.markingRead = true;
  try {
    const result = await sdk((c) => c.markRead({ userId: active.userId }));
    for (const m of unread) {
      m.is_read = true;
      m.read_at = m.read_at || result.read_at;
    }
    c.unread = result.unread_count;
    renderConversations();
  } catch (err) {
    // 404: no conversation yet (nothing to mark)
    if (err.status !== 404 && err.status !== 401) toast('Could not mark as read', err.detail, 'error');
  } finally {
    state.markingRead = false;
    if (state.markAgain) {
      state.markAgain = false;
      markReadIfVisible();
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Composing: typing signals, sending, attachments
// ---------------------------------------------------------------------------------------------------

function sendTyping(isTyping) {
  const active = state.active;
  if (!active) return;
  sdk((c) => c.typing(active.userId, isTyping)).catch(() => {
    // rate-limited or offline: typing is best effort
  });
}

function onComposerInput() {
  const input = $('message-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 140)}px`;
  if (!state.active) return;
  if (!input.value.trim()) {
    stopOwnTyping();
    return;
  }
  const now = Date.now();
  if (now - state.typingSentAt > TYPING_EVERY_MS) {
    state.typingSentAt = now;
    sendTyping(true);
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(stopOwnTyping, TYPING_IDLE_MS);
}

function stopOwnTyping() {
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = null;
  if (state.typingSentAt) {
    state.typingSentAt = 0;
    sendTyping(false);
  }
}

async function send() {
  const active = state.active;
  if (!active) return;
  const input = $('message-input');
  const text = input.value;
  const file = $('attachment-input').files[0] || null;
  if (!text.trim() && !file) return;
  const button = $('send-button');
  button.disabled = true;
  clearTimeout(state.typingIdleTimer);
  state.typingSentAt = 0; // the message itself ends the peer's typing indicator
  try {
    let message;
    if (file) {
      message = await sdk((c) => c.send(active.userId, text.trim() ? text : '', { attachment: file, filename: file.name }));
    } else {
      message = await sdk((c) => c.send(active.userId, text));
    }
    input.value = '';
    onComposerInput();
    clearAttachment();
    onMessage(message); // the `message` event of our own postbox comes too; it is deduped by id
  } catch (err) {
    if (err.status !== 401) toast('Not sent', err.detail, 'error');
  } finally {
    button.disabled = false;
    input.focus();
  }
}

function clearAttachment() {
  $('attachment-input').value = '';
  $('attachment-chip').hidden = true;
  $('attachment-name').textContent = '';
}

// ---------------------------------------------------------------------------------------------------
// Notifications (shown only when the server has the notifications API) and toasts
// ---------------------------------------------------------------------------------------------------

async function probeNotifications() {
  const generation = state.generation;
  const seq = ++state.notificationsSeq;
  try {
    const data = await sdk((c) => c.notifications());
    if (generation !== state.generation || seq !== state.notificationsSeq) return;
    applyNotifications(data);
  } catch (err) {
    // 404: this server has no notifications API: no bell, no panel.
    state.notifications.available = false;
    renderNotifications();
  }
}

async function loadNotifications() {
  const generation = state.generation;
  const seq = ++state.notificationsSeq;
  try {
    const data = await sdk((c) => c.notifications());
    // An older answer (one that started before a later load or a mark) would undo what is shown.
    if (generation === state.generation && seq === state.notificationsSeq) applyNotifications(data);
  } catch {
    // keep what is shown
  }
}

/** The server says `is_read`; `read_at` alone is accepted too. */
const notificationRead = (item) => (typeof item.is_read === 'boolean' ? item.is_read : Boolean(item.read_at));

function applyNotifications(data) {
  state.notifications = {
    available: true,
    unread: Number(data.unread_count) || 0,
    items: Array.isArray(data.results) ? data.results : [],
  };
  renderNotifications();
}

function renderNotifications() {
  const n = state.notifications;
  const button = $('notifications-button');
  button.hidden = !n.available;
  if (!n.available) $('notifications-panel').hidden = true;
  const badge = $('notifications-badge');
  badge.hidden = n.unread === 0;
  badge.textContent = n.unread > 99 ? '99+' : String(n.unread);
  $('notifications-read-all').hidden = n.unread === 0;
  $('notifications-empty').hidden = n.items.length > 0;
  $('notification-list').replaceChildren(
    ...n.items.map((item) => {
      const read = notificationRead(item);
      const node = el(
        'li',
        { class: 'notification', 'data-testid': 'notification', 'data-notification-id': item.id, 'data-read': String(read) },
        el(
          'div',
          { class: 'notification-body' },
          el('div', { class: 'notification-title' }, item.title || item.notification_type || 'Notification'),
          item.message ? el('div', { class: 'notification-text' }, item.message) : null,
          el('div', { class: 'notification-time' }, item.created_at ? `${dayOf(item.created_at)} ${timeOf(item.created_at)}` : ''),
        ),
      );
      if (!read) {
        const mark = el('button', { type: 'button', 'data-testid': 'notification-mark-read' }, 'Mark read');
        mark.addEventListener('click', () => markNotificationRead(item));
        node.append(mark);
      }
      return node;
    }),
  );
}

async function markNotificationRead(item) {
  try {
    const view = await sdk((c) => c.markNotificationRead(item.id));
    state.notificationsSeq += 1; // a load that started before the mark answers with the old read state
    const wasRead = notificationRead(item);
    item.is_read = true;
    item.read_at = (view && view.read_at) || item.read_at || new Date().toISOString();
    if (!wasRead) state.notifications.unread = Math.max(0, state.notifications.unread - 1);
    renderNotifications();
    loadNotifications(); // then as the server has it (one may have arrived meanwhile)
  } catch (err) {
    if (err.status !== 401) toast('Could not mark the notification read', err.detail, 'error');
  }
}

async function markAllNotificationsRead() {
  try {
    const result = await sdk((c) => c.markAllNotificationsRead());
    state.notificationsSeq += 1;
    const now = new Date().toISOString();
    for (const item of state.notifications.items) {
      if (!notificationRead(item)) Object.assign(item, { is_read: true, read_at: now });
    }
    state.notifications.unread = Number(result && result.unread_count) || 0;
    renderNotifications();
    loadNotifications(); // then as the server has it (one created meanwhile stays unread)
  } catch (err) {
    if (err.status !== 401) toast('Could not mark the notifications read', err.detail, 'error');
  }
}

function toast(title, text, kind = 'info') {
  const node = el(
    'div',
    { class: 'toast', 'data-testid': 'toast', 'data-kind': kind, role: kind === 'error' ? 'alert' : 'status' },
    el('div', { class: 'toast-title' }, title),
    text ? el('div', { class: 'toast-text' }, text) : null,
  );
  const box = $('toasts');
  box.append(node);
  while (box.children.length > 4) box.firstElementChild.remove();
  const timer = setTimeout(() => node.remove(), TOAST_MS);
  node.addEventListener('click', () => {
    clearTimeout(timer);
    node.remove();
  });
}

// ---------------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token-input').value.trim();
    if (token) login(token);
  });
  $('logout-button').addEventListener('click', () => logout());
  $('new-chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = Number($('new-chat-input').value);
    if (!Number.isSafeInteger(id) || id < 1) return;
    if (state.me && id === state.me.id) {
      toast('That is you', 'Pick another user id.', 'error');
      return;
    }
    $('new-chat-input').value = '';
    openChat(id);
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    send();
  });
  const input = $('message-input');
  input.addEventListener('input', onComposerInput);
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  input.addEventListener('blur', () => {
    if (!input.value.trim()) stopOwnTyping();
  });
  $('attachment-input').addEventListener('change', () => {
    const file = $('attachment-input').files[0];
    $('attachment-chip').hidden = !file;
    $('attachment-name').textContent = file ? `${file.name} (${Math.ceil(file.size / 1024)} KB)` : '';
  });
  $('attachment-clear').addEventListener('click', clearAttachment);
  $('message-scroller').addEventListener('scroll', () => {
    if ($('message-scroller').scrollTop < 60) loadOlder();
  });
  $('load-older').addEventListener('click', () => loadOlder());
  $('notifications-button').addEventListener('click', () => {
    const panel = $('notifications-panel');
    panel.hidden = !panel.hidden;
    $('notifications-button').setAttribute('aria-expanded', String(!panel.hidden));
    if (!panel.hidden) loadNotifications();
  });
  $('notifications-read-all').addEventListener('click', () => markAllNotificationsRead());
  $('notifications-close').addEventListener('click', () => {
    $('notifications-panel').hidden = true;
    $('notifications-button').setAttribute('aria-expanded', 'false');
  });
  document.addEventListener('visibilitychange', () => {
    if (pageVisible()) markReadIfVisible();
  });
  // Leaving the page: stop polling and show the user offline now (the client's own beacon is the
  // fallback). A page restored from the back/forward cache starts again.
  window.addEventListener('pagehide', () => {
    if (state.client) state.client.disconnect();
  });
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted && state.client) state.client.start();
  });
}

wire();
const saved = localStorage.getItem(TOKEN_KEY);
if (saved) login(saved);
else showLogin();
