// Types for postbox.js, the browser client of Postbox's real-time API.

/** One event as the server sends it (the long poll's envelope). */
export interface PostboxEvent<T = any> {
  /** Unique, time-ordered id (a UUID string); the client dedupes by it. */
  id: string | null;
  /** `message`, `typing`, `read_receipt`, `notification`, `presence`, `delivered`, `resync`, ... */
  event: string;
  /** The payload; its shape depends on `event`. */
  data: T;
  /** Seconds since the Unix epoch when the event was created; `null` in SSE mode. */
  timestamp: number | null;
  /**
   * The event's number in the user's sequence (stored events: `message`, `read_receipt`,
   * `notification`, `support_*`); absent on ephemeral events and in SSE mode.
   */
  seq?: number;
}

/** Payload of a `resync` event: the server lost events for this client; reload state from REST. */
export interface ResyncInfo {
  /**
   * Why, one or more comma-separated: `maxlen` (the postbox overflowed), `expired` (events outlived their
   * TTL), `queue_deleted` (the postbox vanished), ...
   */
  reason: string;
  /** How many events were lost, when known (a lower bound when `lost_unknown`). */
  lost: number | null;
  /** True when some losses could not be counted. */
  lost_unknown?: boolean;
  /** Seconds since the Unix epoch from which events may be missing, when known. */
  since: number | null;
  /** The lowest and highest sequence numbers lost, when the lost events carried them. */
  seq_from?: number;
  seq_to?: number;
  /** How many lost events had no number (host events): those only a reload brings back. */
  lost_unnumbered?: number;
  [key: string]: unknown;
}

/** A chat message (`message` event). */
export interface MessageData {
  id: number;
  sender_id: number;
  sender_name: string;
  receiver_id: number;
  message: string;
  attachment: string | null;
  attachment_type: string | null;
  timestamp: string;
  is_read: boolean;
  conversation_id: number;
  delivered_at?: string | null;
  read_at?: string | null;
  [key: string]: unknown;
}

export interface TypingData {
  sender_id: number;
  sender_name: string;
  receiver_id: number;
  is_typing: boolean;
  [key: string]: unknown;
}

export interface ReadReceiptData {
  conversation_id: number;
  message_ids: number[];
  message_id: number | null;
  reader_id: number;
  reader_name: string;
  read_at: string;
  [key: string]: unknown;
}

export interface DeliveredData {
  conversation_id: number;
  message_ids: number[];
  receiver_id: number;
  delivered_at: string;
  [key: string]: unknown;
}

export interface PresenceData {
  user_id: number;
  username: string;
  name: string;
  online: boolean;
  last_seen_at: string | null;
  [key: string]: unknown;
}

/** A notification (`notification` event, and the items of `notifications()`). */
export interface NotificationData {
  id: number;
  title: string;
  message: string;
  notification_type: string;
  data: Record<string, unknown> | null;
  user_id: number | null;
  college_id: number | null;
  created_at: string;
  timestamp: string;
  is_read: boolean;
  read_at: string | null;
  [key: string]: unknown;
}

/** A support desk message (`support_message` event). */
export interface SupportMessageData {
  id: string;
  chat_id: number;
  sender_id: number;
  message: string;
  is_from_admin: boolean;
  created_at: string;
  user_email: string;
  sender_name: string;
  [key: string]: unknown;
}

/** A support chat that was closed or reopened (`support_chat` event). */
export interface SupportChatData {
  id: number;
  user_id: number;
  status: string;
  last_message: string;
  created_at: string;
  last_updated: string;
  closed_at: string | null;
  [key: string]: unknown;
}

/** Payload types of the events the server sends today; any other type has `any` data. */
export interface PostboxEventMap {
  message: MessageData;
  typing: TypingData;
  read_receipt: ReadReceiptData;
  delivered: DeliveredData;
  presence: PresenceData;
  notification: NotificationData;
  support_message: SupportMessageData;
  support_chat: SupportChatData;
  resync: ResyncInfo;
}

/** A page of history (`history()`). */
export interface HistoryPage {
  /** Oldest first within the page. */
  messages: MessageData[];
  /** More lie beyond this page: older ones when paging back, newer ones when catching up. */
  has_more: boolean;
  conversation_id: number | null;
  [key: string]: unknown;
}

/** `missed()`: the stored events after a sequence number. */
export interface MissedPage {
  events: PostboxEvent[];
  last_seq: number;
  /** `false`: the numbers right after `after` are no longer kept; reload from REST. */
  kept: boolean;
  /** `true`: the page was cut by `limit`; ask again after the last `seq`. */
  more: boolean;
}

export type EventHandler<T = any> = (data: T, event: PostboxEvent<T>) => void;
export type ErrorHandler = (error: PostboxError) => void;

/** The subset of `fetch` the client uses. */
export type FetchLike = (url: string, init?: RequestInit) => Promise<Response>;

/** Sleeps `ms` milliseconds; should resolve early when `signal` aborts. */
export type SleepLike = (ms: number, signal?: AbortSignal) => Promise<void>;

export interface TimersLike {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

/** What the client needs of a BroadcastChannel. */
export interface BroadcastChannelLike {
  onmessage: ((ev: any) => any) | null;
  postMessage(message: any): void;
  close(): void;
}
export type BroadcastChannelConstructor = new (name: string) => BroadcastChannelLike;

/** What the client needs of `navigator.locks`. */
export interface LocksLike {
  request(name: string, options: { signal?: AbortSignal }, callback: (lock: unknown) => any): Promise<any>;
}

/** What the client needs of an EventSource. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  addEventListener(type: string, listener: (ev: { type: string; data: string; lastEventId: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface PostboxClientOptions {
  /** The user's API token (sent as `Authorization: Token <token>`). Required. */
  token: string;
  /** Prefix of every path, e.g. `https://chat.example.com`. Default `''` (same origin). */
  baseUrl?: string;
  /** `'poll'` (default) or `'sse'` (falls back to `'poll'` without EventSource). */
  transport?: 'poll' | 'sse';
  /** This tab's client id (`/^[A-Za-z0-9_-]{1,64}$/`). Default: kept in sessionStorage, else generated. */
  clientId?: string;
  /** One connection for all tabs of this origin and user. Default: true when BroadcastChannel exists. */
  shareAcrossTabs?: boolean;
  /** Called with the `resync` event's data when the server lost events: reload state from REST. */
  onResync?: (info: ResyncInfo, event: PostboxEvent<ResyncInfo>) => void;
  /** Called for every error, retried (`fatal: false`) or not (`fatal: true`). */
  onError?: ErrorHandler;
  /**
   * Called on 401 for a fresh token (your app's session refresh); the client goes on with the same
   * client id and cursor. Without it, or when it returns nothing new, 401 stops the client.
   */
  getToken?: () => string | Promise<string>;
  /** How many recent event ids to remember for dedupe. Default 1000. */
  dedupeLimit?: number;
  /** `typing()` sends at most once per this many ms per receiver. Default 2000. */
  typingThrottleMs?: number;
  /** The clock of the typing throttle. Default Date.now. */
  now?: () => number;
  /** How long a jump in the sequence may wait for late events before it is filled, ms. Default 1000. */
  gapGraceMs?: number;
  /** Retry delays: full jitter in [0, min(cap, base * factor^attempt)). Default 500 ms, 2, 30 000 ms. */
  backoff?: { base?: number; factor?: number; cap?: number };
  /** Abort a poll that got no answer after this many ms (the server answers within ~5.5 s). Default 30 000. */
  requestTimeout?: number;
  /** Names the tabs' channel, lock and storage entry. Default: a hash of baseUrl and token. */
  userKey?: string;
  /** Election timings in ms (heartbeat fallback only). Defaults 1000, 3000, 200. */
  coordinator?: { heartbeatMs?: number; leaderTimeoutMs?: number; electionMs?: number };

  // Injectable environment (tests, workers, non-browser runtimes). Pass null to disable a feature.
  fetch?: FetchLike;
  /** Random numbers in [0, 1) for the jitter. Default Math.random. */
  random?: () => number;
  sleep?: SleepLike;
  /** Timers for the request timeout and the heartbeat election. Default the global ones. */
  timers?: TimersLike;
  EventSource?: EventSourceConstructor | null;
  BroadcastChannel?: BroadcastChannelConstructor | null;
  /** Default `navigator.locks`; null elects with heartbeats over the BroadcastChannel. */
  locks?: LocksLike | null;
  /** Where the client id and cursor survive a reload. Default sessionStorage. */
  storage?: StorageLike | null;
  /** Default `navigator.sendBeacon`; without it a `keepalive` fetch is used on unload. */
  sendBeacon?: ((url: string) => boolean) | null;
  /** Where `pagehide`/`pageshow` are listened to. Default `window`; null disables unload handling. */
  window?: Pick<EventTarget, 'addEventListener' | 'removeEventListener'> | null;
}

/**
 * `connecting` (started, or back online), `connected` (an answer arrived, or the stream is open),
 * `disconnected` (reason `stopped`, `offline`, `unauthorized`, or the last error's code while retrying),
 * `resyncing` (missing events are being fetched from `poll/missed/`).
 */
export interface ConnectionState {
  state: 'connecting' | 'connected' | 'disconnected' | 'resyncing';
  reason: string | null;
}

export class PostboxClient {
  constructor(options: PostboxClientOptions);

  /** Uses this token for every later request; the client id, cursor and sequence stay. */
  setToken(token: string): void;
  /** The id this tab polls with (in shared mode the leader's, adopted by every tab). */
  readonly clientId: string;
  /** The id of the last event handed to handlers, sent as `last_event_id`; null before the first. */
  readonly lastEventId: string | null;
  /** The highest sequence number up to which every event was handed to handlers; null before one. */
  readonly lastSeq: number | null;
  /** The connection as every tab sees it. */
  readonly state: ConnectionState;
  /** Between start() and stop() (or a fatal error). */
  readonly running: boolean;
  /** Whether this tab holds the server connection (the leader, or any running unshared client). */
  readonly isLeader: boolean;

  on<K extends keyof PostboxEventMap>(type: K, handler: EventHandler<PostboxEventMap[K]>): () => void;
  on(type: 'error' | 'unauthorized', handler: ErrorHandler): () => void;
  /** Each change of the connection state, in every tab (the one holding the connection tells the others). */
  on(type: 'state', handler: (state: ConnectionState) => void): () => void;
  /** Every event, whatever its type. */
  on(type: '*', handler: EventHandler): () => void;
  on(type: string, handler: EventHandler): () => void;

  off(type: string, handler: (...args: any[]) => void): void;

  /** Starts receiving events. Idempotent. */
  start(): this;
  /** Stops receiving events and aborts the request in flight (another tab takes the lead). */
  stop(): void;
  /** stop(), then `POST poll/disconnect/` (the user shows offline). Resolves to whether it succeeded. */
  disconnect(): Promise<boolean>;

  // The REST API: each call rejects with a PostboxError (the server's status, code and detail).
  send(receiver: number, text: string, options?: { attachment?: Blob | null; filename?: string }): Promise<MessageData>;
  history(userId: number, options?: { before?: number; since?: number | string; limit?: number }): Promise<HistoryPage>;
  conversations(): Promise<any>;
  markRead(target: { conversationId?: number; userId?: number; messageIds?: number[]; upTo?: number }): Promise<any>;
  /** Resolves to `false` when the call was skipped by the throttle. */
  typing(receiver: number, isTyping?: boolean): Promise<boolean>;
  unreadCount(): Promise<any>;
  onlineUsers(): Promise<any>;
  notifications(options?: { unread?: boolean; before?: number; limit?: number }): Promise<any>;
  markNotificationRead(id: number): Promise<NotificationData>;
  markAllNotificationsRead(): Promise<any>;
  register(): Promise<{ queue: string; client_id: string; user_id: number }>;
  missed(after: number, options?: { limit?: number }): Promise<MissedPage>;
}

/** Every error the client reports. */
/** The numbers of the user's sequence seen so far, and whether some are missing. */
export class SequenceTracker {
  constructor(last?: number | null, options?: { maxAhead?: number });
  /** Every number up to this one was seen; null before the first. */
  readonly last: number | null;
  /** The highest number seen. */
  readonly highest: number | null;
  readonly hasGap: boolean;
  /** Records a number; returns whether numbers are missing now. */
  see(seq: number | undefined): boolean;
  reset(last: number | null): void;
}

export class PostboxError extends Error {
  constructor(
    code: string,
    message: string,
    options?: { status?: number; detail?: string; retryAfter?: number | null; fatal?: boolean; cause?: unknown },
  );
  /**
   * The server's `error` code (`unauthorized`, `rate_limited`, `broker_unavailable`, ...), `http_<status>`
   * for a non-JSON error, or a client code: `network_error`, `timeout`, `bad_response`, `stream_closed`,
   * `handler_error`, `internal_error`.
   */
  code: string;
  /** The HTTP status, 0 when there was no answer. */
  status: number;
  /** The server's `detail`, for humans. */
  detail: string;
  /** `Retry-After` in milliseconds, when the server sent it. */
  retryAfter: number | null;
  /** True when the client stopped because of it (401, 403). */
  fatal: boolean;
}

/** Exponential backoff with full jitter: a value in [0, min(cap, base * factor^attempt)). */
export function backoffDelay(
  attempt: number,
  random?: () => number,
  options?: { base?: number; factor?: number; cap?: number },
): number;

/** `Retry-After` (seconds or HTTP date) in milliseconds; null when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now?: number): number | null;

/** A new client id (`crypto.randomUUID()`, else 22 random letters and digits). */
export function generateClientId(random?: () => number): string;

/** A bounded set of recently seen ids; the oldest is forgotten beyond `limit`. */
export class RecentIds {
  constructor(limit?: number);
  readonly limit: number;
  readonly size: number;
  has(id: string): boolean;
  /** False when `id` was already there. */
  add(id: string): boolean;
}

export interface TabCoordinatorOptions {
  /** Channel `postbox-<name>`, lock `postbox-leader-<name>`. */
  name: string;
  BroadcastChannel: BroadcastChannelConstructor;
  /** Web Locks; null or absent elects with heartbeats. */
  locks?: LocksLike | null;
  timers?: TimersLike;
  tabId?: string;
  onRoleChange?: (isLeader: boolean) => void;
  onMessage?: (body: any, fromTabId: string) => void;
  heartbeatMs?: number;
  leaderTimeoutMs?: number;
  electionMs?: number;
}

/** Leader election between tabs, and a channel between them. */
export class TabCoordinator {
  constructor(options: TabCoordinatorOptions);
  readonly name: string;
  readonly tabId: string;
  readonly isLeader: boolean;
  /** Other live tabs this one knows of. */
  readonly peerCount: number;
  start(): void;
  /** Leaves the election; when leading, another tab takes over. */
  stop(): void;
  /** Sends a structured-cloneable value to every other tab. */
  send(body: unknown): void;
}
