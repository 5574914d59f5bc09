//! The consumer hub: how a long poll waits for a postbox without a sleep loop and without losing events.
//!
//! - A poll asks the [`Hub`] for the postbox's [`Slot`]. The first poll of a postbox attaches one AMQP
//!   consumer to it (manual acks, prefetch = the postbox length); RabbitMQ then **pushes** every event
//!   into the slot's buffer and wakes the waiting poll at once.
//! - A poll takes what is buffered as a [`Lease`]. The events stay **unacknowledged** in RabbitMQ until
//!   the lease is acknowledged, which the HTTP layer does only after the response body was handed to the
//!   connection. A lease dropped unacknowledged (client gone mid-poll, handler cancelled) puts its events
//!   back at the front of the buffer for the next poll. If the process dies, RabbitMQ requeues every
//!   unacknowledged event itself when the connection drops.
//! - After its last poll a slot lingers for a short while (the next poll of a client comes right after
//!   the previous answer), then the consumer is cancelled and buffered events are requeued (`nack`).
//!
//! Consumers share a few channels (each hosts up to [`CONSUMERS_PER_CHANNEL`]); acks are per delivery
//! tag, never `multiple`, so consumers on a channel never acknowledge each other's events. Declares, which
//! the broker may answer by closing the channel, never run on these channels.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, future::BoxFuture, future::Shared};
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{FieldTable, ShortString},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, Postbox,
    message::{self, Received, event_id, expires_at},
    pool,
};

/// How long a poll waits for the events a postbox held when its consumer attached, to answer them in
/// one batch.
const BACKLOG_WAIT: Duration = Duration::from_millis(50);

/// An attach still under way after this long, while others succeed, is logged as stuck (10 000 first
/// polls at once attach within ~8 s here).
const STUCK_ATTACH: Duration = Duration::from_secs(30);

/// Consumers hosted by one AMQP channel before another channel is opened.
pub const CONSUMERS_PER_CHANNEL: usize = 256;

/// A cursor client's claim on its postbox: one per poll or stream ([`Hub::reader`]). The newest reader
/// of a postbox owns it; older ones are superseded.
#[derive(Debug)]
pub struct Reader(u64);

/// How the events of a wait are acknowledged.
#[derive(Debug, Clone, Copy)]
pub enum Acks<'a> {
    /// Seed clients: acknowledged once handed over.
    OnHandOver,
    /// A cursor client: parked in flight when handed over, acknowledged when a later cursor names
    /// them. `settle` is given on the first wait of a poll or stream: the reader then claims the
    /// postbox (superseding older readers), and the client's `last_event_id` acknowledges the events
    /// in flight up to and including it and hands the others out again; `Some(None)` acknowledges
    /// nothing. A stream's later waits pass `None`: what it wrote stays in flight until the client
    /// reconnects with `Last-Event-ID`.
    Cursor {
        reader: &'a Reader,
        settle: Option<Option<&'a str>>,
    },
}

/// The per-process registry of postbox consumers. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    connections: pool::ConnectionPool,
    prefetch: u16,
    linger: Duration,
    timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Slots being opened, by queue, with when each attach began: the polls of one postbox wait for
    /// one attach.
    opening: Mutex<HashMap<String, (Instant, Opening)>>,
    /// When a slot was last opened: RabbitMQ is answering attaches, however slowly.
    last_opened: Mutex<Option<Instant>>,
    channels: tokio::sync::Mutex<Vec<ConsumerChannel>>,
    broker: std::sync::OnceLock<std::sync::Weak<super::Inner>>,
    shutdown: CancellationToken,
    next_tag: AtomicU64,
    /// The next [`Reader`]'s id.
    next_reader: AtomicU64,
    /// Queues with a gap recorded by this process since their last poll (see `crate::delivery::gaps`).
    gap_flags: Mutex<std::collections::HashSet<String>>,
}

/// A slot being opened (declare, consume), awaited by every poll of its postbox that comes meanwhile.
type Opening = Shared<BoxFuture<'static, Result<Arc<Slot>, BrokerError>>>;

/// Removes a postbox's [`Opening`] when the attempt ends.
struct OpeningDone<'a> {
    hub: &'a Hub,
    queue: &'a str,
}

impl Drop for OpeningDone<'_> {
    fn drop(&mut self) {
        if let Ok(mut opening) = self.hub.inner.opening.lock() {
            opening.remove(self.queue);
        }
    }
}

struct ConsumerChannel {
    channel: Channel,
    consumers: Arc<AtomicU64>,
}

/// One postbox consumer and the events it holds unacknowledged.
pub struct Slot {
    queue: String,
    channel: Channel,
    tag: String,
    consumers_on_channel: Arc<AtomicU64>,
    state: Mutex<SlotState>,
    notify: Notify,
}

#[derive(Default)]
struct SlotState {
    /// Delivered by RabbitMQ, not yet leased to a poll, in postbox order.
    buffer: VecDeque<Delivery>,
    /// Handed to a cursor client and not yet acknowledged by its `last_event_id`, oldest first.
    in_flight: VecDeque<Delivery>,
    /// The cursor reader that owns the postbox now (0: none yet): the newest poll or stream of the
    /// client. An older reader still waiting (a dead connection's poll, a stream the client left) is
    /// superseded: it takes nothing more, and what it hands over later goes back to the buffer.
    owner: u64,
    /// Polls waiting on this slot plus leases not yet settled: the slot is not reaped while non-zero.
    users: usize,
    last_used: Option<Instant>,
    /// Events the postbox held when the consumer attached, and until when to wait for them to arrive.
    backlog: Option<(usize, tokio::time::Instant)>,
    /// No more events are buffered: the consumer ended or is being cancelled.
    closed: bool,
    /// The slot was counted out of its channel and its consumer cancelled (done once).
    detached: bool,
}

impl Hub {
    pub(super) fn new(
        connections: pool::ConnectionPool,
        prefetch: u16,
        linger: Duration,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Hub {
            inner: Arc::new(HubInner {
                connections,
                prefetch,
                linger,
                timeout,
                slots: Mutex::new(HashMap::new()),
                opening: Mutex::new(HashMap::new()),
                last_opened: Mutex::new(None),
                channels: tokio::sync::Mutex::new(Vec::new()),
                broker: std::sync::OnceLock::new(),
                shutdown,
                next_tag: AtomicU64::new(1),
                next_reader: AtomicU64::new(1),
                gap_flags: Mutex::new(Default::default()),
            }),
        }
    }

    /// Starts the reaper that cancels consumers whose postbox nobody polled for the linger time.
    pub(super) fn start(&self, broker: Broker) {
        let _ = self.inner.broker.set(Arc::downgrade(&broker.inner));
        let hub = self.clone();
        let period =
            (self.inner.linger / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = hub.inner.shutdown.cancelled() => break,
                    _ = tick.tick() => hub.reap(false),
                }
            }
            tracing::debug!("postbox reaper stopped");
        });
    }

    fn broker(&self) -> Option<Broker> {
        self.inner
            .broker
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|inner| Broker { inner })
    }

    /// A new reader for a cursor client's poll or stream.
    pub fn reader(&self) -> Reader {
        Reader(self.inner.next_reader.fetch_add(1, Ordering::Relaxed))
    }

    /// Events a cursor client may hold in flight before it should confirm them (half the prefetch:
    /// beyond the prefetch RabbitMQ sends the postbox nothing more).
    pub fn in_flight_limit(&self) -> usize {
        usize::from(self.inner.prefetch / 2).max(1)
    }

    /// Whether the service is shutting down (streams end, waits return at once).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Whether a consumer is attached to this queue in this process.
    pub fn has_slot(&self, queue: &str) -> bool {
        self.inner
            .slots
            .lock()
            .expect("hub lock")
            .contains_key(queue)
    }

    /// Notes that a gap was recorded for a queue, so its next poll looks it up.
    pub fn flag_gap(&self, queue: &str) {
        self.inner
            .gap_flags
            .lock()
            .expect("hub lock")
            .insert(queue.to_owned());
    }

    /// Takes the gap note of a queue.
    pub fn take_gap_flag(&self, queue: &str) -> bool {
        self.inner.gap_flags.lock().expect("hub lock").remove(queue)
    }

    /// Waits until the postbox holds events or `deadline` passes, and leases what it holds (at most
    /// `max` events). An empty lease means the deadline passed. The postbox's queue is declared when its
    /// consumer is first attached.
    ///
    /// `acks` selects the acknowledgement mode ([`Acks`]). A superseded cursor reader gets an empty
    /// lease marked [`Lease::superseded`] at once.
    pub async fn wait(
        &self,
        postbox: &Postbox,
        deadline: tokio::time::Instant,
        max: usize,
        acks: Acks<'_>,
    ) -> Result<Lease, BrokerError> {
        let cursor = matches!(acks, Acks::Cursor { .. });
        // A registered client's postbox has one reader at a time; the shared default postbox may be
        // read by several devices at once, which split its events (no owner).
        let reader = match acks {
            Acks::Cursor { reader, .. } if postbox.client_id.is_some() => Some(reader.0),
            _ => None,
        };
        let broker = self
            .broker()
            .ok_or_else(|| BrokerError::Unavailable("broker is shutting down".into()))?;
        let queue = broker.topology().queue(postbox);
        let queue = queue.as_str();
        let mut attempts = 0;
        loop {
            // Boxed: attaching (declare, consume) is a large future needed once per postbox; inline it
            // would enlarge every waiting poll.
            let Some(slot) = Box::pin(self.slot(&broker, queue, postbox, deadline)).await? else {
                let mut lease = Lease::empty();
                lease.attaching = true;
                return Ok(lease);
            };
            let _user = SlotUser::new(&slot);
            if let Acks::Cursor { settle, .. } = acks {
                match reader {
                    Some(reader) if !claim(&slot, reader, settle) => {
                        return Ok(Lease::superseded());
                    }
                    Some(_) => {}
                    None => {
                        if let Some(last) = settle {
                            settle_cursor(&slot, last);
                        }
                    }
                }
            }
            loop {
                let notified = slot.notify.notified();
                tokio::pin!(notified);
                // Register for wake-ups before looking, so an event arriving in between is not missed.
                notified.as_mut().enable();
                let mut wake_at = deadline;
                {
                    let mut st = slot.state.lock().expect("slot lock");
                    if st.closed {
                        break;
                    }
                    // A consumer just attached to a postbox holding events: RabbitMQ pushes them one
                    // by one, so wait (briefly) until the backlog is here, to answer with one batch.
                    if let Some((backlog, until)) = st.backlog {
                        let now = tokio::time::Instant::now();
                        if st.buffer.len() < backlog && now < until {
                            wake_at = until.min(deadline);
                        } else {
                            st.backlog = None;
                        }
                    }
                }
                if wake_at == deadline {
                    let mut st = slot.state.lock().expect("slot lock");
                    if reader.is_some_and(|r| st.owner != r) {
                        return Ok(Lease::superseded());
                    }
                    let (deliveries, expired) = take_live(&mut st.buffer, max.max(1));
                    if !expired.is_empty() {
                        ack_all(expired);
                    }
                    if !deliveries.is_empty() {
                        st.users += 1;
                        return Ok(Lease {
                            slot: Some(slot.clone()),
                            deliveries,
                            cursor,
                            reader,
                            attaching: false,
                            superseded: false,
                        });
                    }
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(wake_at), if wake_at < deadline => {}
                    _ = tokio::time::sleep_until(deadline) => return Ok(Lease::empty()),
                    _ = self.inner.shutdown.cancelled() => return Ok(Lease::empty()),
                }
            }
            // The consumer went away (channel closed, queue deleted): attach a new one, a few times.
            attempts += 1;
            if attempts >= 3 {
                return Err(BrokerError::Unavailable(format!(
                    "consumer on {queue} keeps closing"
                )));
            }
        }
    }

    /// Cancels the consumer of a postbox now, requeueing what it holds (client said it disconnected).
    pub fn release(&self, queue: &str) {
        let slot = self.inner.slots.lock().expect("hub lock").remove(queue);
        if let Some(slot) = slot {
            close_slot(slot);
        }
    }

    /// Cancels every consumer (shutdown), requeueing what they hold, and closes their channels.
    pub async fn close(&self) {
        self.reap(true);
        let channels = std::mem::take(&mut *self.inner.channels.lock().await);
        for c in channels {
            super::close_quietly(c.channel).await;
        }
    }

    fn reap(&self, all: bool) {
        let linger = self.inner.linger;
        let expired: Vec<Arc<Slot>> = {
            let mut slots = self.inner.slots.lock().expect("hub lock");
            let keys: Vec<String> = slots
                .iter()
                .filter(|(_, s)| {
                    let st = s.state.lock().expect("slot lock");
                    all || st.closed
                        || (st.users == 0 && st.last_used.is_none_or(|t| t.elapsed() >= linger))
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| slots.remove(k)).collect()
        };
        for slot in expired {
            close_slot(slot);
        }
    }

    /// The postbox's slot, attaching its consumer when there is none. `None`: the attach is still under
    /// way at the poll's deadline, RabbitMQ being busy rather than gone (a herd of first polls, each
    /// costing it a declare, binds and a consume): the poll answers with no events and the next one
    /// finds the attach further along, instead of failing. The poll waits at least one backend timeout
    /// for the attach (a `timeout=0` poll too: it answers with what the postbox holds), and fails with
    /// [`BrokerError::Timeout`] when no attach at all succeeded in this process for that long (a hung
    /// broker still surfaces as a 503).
    async fn slot(
        &self,
        broker: &Broker,
        queue: &str,
        postbox: &Postbox,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Arc<Slot>>, BrokerError> {
        let round = self.inner.timeout;
        let mut wait = AttachWait::new(round, tokio::time::Instant::now());
        loop {
            if let Some(slot) = self.inner.slots.lock().expect("hub lock").get(queue)
                && !slot.state.lock().expect("slot lock").closed
            {
                return Ok(Some(slot.clone()));
            }
            let (began, opening) = self.opening(broker, queue, postbox);
            match tokio::time::timeout_at(wait.until(deadline), opening).await {
                Ok(Ok(slot)) => return Ok(Some(slot)),
                // This attach gave up waiting (for a declare channel, for RabbitMQ): while others get
                // through, the next round starts another.
                Ok(Err(BrokerError::Timeout(_))) if self.opened_within(round) => {}
                Ok(Err(e)) => return Err(e),
                Err(_elapsed) => {}
            }
            let now = tokio::time::Instant::now();
            match wait.next(now, deadline, self.opened_within(round)) {
                AfterWait::Again => {}
                AfterWait::Empty => {
                    // Others attach, this one does not: say so once it is clearly stuck (a herd of
                    // first polls attaches within seconds), as its polls answer no events meanwhile.
                    let waited = began.elapsed();
                    if waited >= STUCK_ATTACH {
                        tracing::warn!(
                            queue,
                            waited_secs = waited.as_secs(),
                            "a postbox's consumer is still attaching while others attach; its polls answer no events meanwhile (its events stay in RabbitMQ)"
                        );
                    }
                    return Ok(None);
                }
                AfterWait::Fail => return Err(BrokerError::Timeout(round)),
            }
        }
    }

    /// Whether a slot was opened in this process during the last `period`.
    fn opened_within(&self, period: Duration) -> bool {
        self.inner
            .last_opened
            .lock()
            .expect("hub lock")
            .is_some_and(|t| t.elapsed() < period)
    }

    /// The attach under way for a postbox, started when there is none, and when it began.
    fn opening(&self, broker: &Broker, queue: &str, postbox: &Postbox) -> (Instant, Opening) {
        self.inner
            .opening
            .lock()
            .expect("hub lock")
            .entry(queue.to_owned())
            .or_insert_with(|| {
                let (hub, broker) = (self.clone(), broker.clone());
                let (queue, postbox) = (queue.to_owned(), postbox.clone());
                // Spawned, so it runs to its end even when every poll waiting for it gives up: a
                // consume abandoned halfway can leave RabbitMQ a consumer nobody reads, holding the
                // postbox's events unacknowledged. Once open, the slot is registered (an unused one is
                // reaped after the linger time) and the next poll finds it ready.
                let began = Instant::now();
                let task = tokio::spawn(async move {
                    // Forgotten however the attempt ends (a panic included), so the next poll
                    // tries again instead of inheriting this outcome.
                    let _done = OpeningDone {
                        hub: &hub,
                        queue: &queue,
                    };
                    let opened = hub.open_slot(&broker, &queue, &postbox).await;
                    if opened.is_ok() {
                        *hub.inner.last_opened.lock().expect("hub lock") = Some(Instant::now());
                    }
                    opened
                });
                let opening = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(BrokerError::Unavailable(format!(
                            "opening a postbox failed: {e}"
                        )))
                    })
                }
                .boxed()
                .shared();
                (began, opening)
            })
            .clone()
    }

    /// Declares a postbox, attaches a consumer to it and registers the slot.
    async fn open_slot(
        &self,
        broker: &Broker,
        queue: &str,
        postbox: &Postbox,
    ) -> Result<Arc<Slot>, BrokerError> {
        // Declare on a disposable channel first: it refreshes `x-expires`, recreates a deleted postbox,
        // and a PRECONDITION_FAILED there cannot take the shared consumer channel down with it.
        let ready = broker.declare_postbox(postbox).await?;
        let created = self.attach(queue, ready as usize).await?;
        let mut slots = self.inner.slots.lock().expect("hub lock");
        match slots.get(queue) {
            // Another poll attached a consumer meanwhile: keep one, cancel ours.
            Some(existing) if !existing.state.lock().expect("slot lock").closed => {
                let existing = existing.clone();
                drop(slots);
                close_slot(created);
                Ok(existing)
            }
            _ => {
                slots.insert(queue.to_owned(), created.clone());
                Ok(created)
            }
        }
    }

    async fn attach(&self, queue: &str, ready: usize) -> Result<Arc<Slot>, BrokerError> {
        // Every step is bounded: a channel.open or basic.consume sent as the connection died may never
        // be answered, and an attach that never ends leaves every later poll of the postbox waiting for
        // it (answering no events while they wait in RabbitMQ). Generously: a busy broker (a herd of
        // first polls) answers late but answers, and giving up closes a channel other postboxes share.
        let bound = self.inner.timeout * 4;
        let (channel, counter) = tokio::time::timeout(bound, self.consumer_channel())
            .await
            .map_err(|_| BrokerError::Timeout(bound))??;
        let tag = format!(
            "postbox-{}-{}",
            std::process::id(),
            self.inner.next_tag.fetch_add(1, Ordering::Relaxed)
        );
        let consuming = channel.basic_consume(
            ShortString::from(queue.to_owned()),
            ShortString::from(tag.clone()),
            BasicConsumeOptions::default(), // manual acks, not exclusive
            FieldTable::default(),
        );
        let consumer = match tokio::time::timeout(bound, consuming).await {
            Ok(consumer) => consumer.map_err(|e| BrokerError::classify(e, queue))?,
            Err(_) => {
                // No answer: the channel is taken for dead. It leaves the shared list and is closed,
                // so that a consume RabbitMQ did register leaves no consumer nobody reads.
                tracing::warn!(queue, "basic.consume got no answer; closing its channel");
                self.inner
                    .channels
                    .lock()
                    .await
                    .retain(|c| !Arc::ptr_eq(&c.consumers, &counter));
                tokio::spawn(async move {
                    let _ = channel
                        .close(200, ShortString::from("no answer to basic.consume"))
                        .await;
                });
                return Err(BrokerError::Timeout(bound));
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            queue: queue.to_owned(),
            channel,
            tag,
            consumers_on_channel: counter,
            state: Mutex::new(SlotState {
                last_used: Some(Instant::now()),
                backlog: (ready > 0).then(|| {
                    (
                        ready.min(usize::from(self.inner.prefetch)),
                        tokio::time::Instant::now() + BACKLOG_WAIT,
                    )
                }),
                ..Default::default()
            }),
            notify: Notify::new(),
        });
        tokio::spawn(pump(slot.clone(), consumer, self.clone()));
        Ok(slot)
    }

    /// A shared consumer channel with room for one more consumer, opening one when needed.
    async fn consumer_channel(&self) -> Result<(Channel, Arc<AtomicU64>), BrokerError> {
        let mut channels = self.inner.channels.lock().await;
        channels.retain(|c| c.channel.status().connected());
        if let Some(c) = channels
            .iter()
            .find(|c| (c.consumers.load(Ordering::Relaxed) as usize) < CONSUMERS_PER_CHANNEL)
        {
            return Ok((c.channel.clone(), c.consumers.clone()));
        }
        let conn = pool::get(&self.inner.connections, self.inner.timeout).await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| BrokerError::classify(e, "channel.open"))?;
        drop(conn);
        // Per-consumer prefetch (global = false): each postbox may hand a poll a full batch.
        channel
            .basic_qos(self.inner.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| BrokerError::classify(e, "basic.qos"))?;
        let consumers = Arc::new(AtomicU64::new(0));
        channels.push(ConsumerChannel {
            channel: channel.clone(),
            consumers: consumers.clone(),
        });
        Ok((channel, consumers))
    }
}

/// How long a poll waits for its postbox's consumer to attach: in rounds of the backend timeout, the
/// first one whole whatever the poll's deadline, the next ones only while attaches keep succeeding
/// (RabbitMQ is busy, not gone) and the poll's deadline has not passed.
struct AttachWait {
    round: Duration,
    round_end: tokio::time::Instant,
    /// The first round ended with RabbitMQ still attaching others.
    extended: bool,
}

/// What a poll does when a wait for its attach ended without a slot.
#[derive(Debug, PartialEq)]
enum AfterWait {
    /// Wait again (for the same attach, or a new one if that one gave up).
    Again,
    /// Answer with no events; the attach goes on.
    Empty,
    /// RabbitMQ attached nothing for a whole round: 503.
    Fail,
}

impl AttachWait {
    fn new(round: Duration, now: tokio::time::Instant) -> Self {
        AttachWait {
            round,
            round_end: now + round,
            extended: false,
        }
    }

    /// Until when to wait for the attach this time.
    fn until(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        if self.extended {
            self.round_end.min(deadline)
        } else {
            self.round_end
        }
    }

    /// The wait ended at `now` without a slot; `progressing`: another attach succeeded in this process
    /// during the last round.
    fn next(
        &mut self,
        now: tokio::time::Instant,
        deadline: tokio::time::Instant,
        progressing: bool,
    ) -> AfterWait {
        if now >= self.round_end {
            if !progressing {
                return AfterWait::Fail;
            }
            self.round_end = now + self.round;
            self.extended = true;
        }
        if self.extended && now >= deadline {
            AfterWait::Empty
        } else {
            AfterWait::Again
        }
    }
}

/// Moves deliveries from the AMQP consumer into the slot's buffer and wakes its polls.
async fn pump(slot: Arc<Slot>, mut consumer: lapin::Consumer, hub: Hub) {
    while let Some(next) = consumer.next().await {
        match next {
            Ok(delivery) => {
                let mut st = slot.state.lock().expect("slot lock");
                if st.closed {
                    drop(st);
                    requeue(vec![delivery]);
                } else {
                    st.buffer.push_back(delivery);
                    drop(st);
                    slot.notify.notify_waiters();
                }
            }
            Err(e) => {
                tracing::warn!(queue = %slot.queue, error = %e, "postbox consumer failed");
                break;
            }
        }
    }
    // The consumer ended: cancelled by us, by the broker (queue deleted), or its channel closed. Whatever
    // it still buffers goes back to RabbitMQ (a nack on a closed channel is a no-op: the broker already
    // requeued those events when the channel closed).
    let (leftovers, first) = {
        let mut st = slot.state.lock().expect("slot lock");
        st.closed = true;
        let first = !std::mem::replace(&mut st.detached, true);
        (take_unacked(&mut st), first)
    };
    requeue(leftovers.into());
    slot.notify.notify_waiters();
    if first {
        slot.consumers_on_channel.fetch_sub(1, Ordering::Relaxed);
    }
    let mut slots = hub.inner.slots.lock().expect("hub lock");
    if slots
        .get(&slot.queue)
        .is_some_and(|s| Arc::ptr_eq(s, &slot))
    {
        slots.remove(&slot.queue);
    }
}

/// Marks a slot closed, cancels its consumer and requeues what it buffers.
fn close_slot(slot: Arc<Slot>) {
    let leftovers = {
        let mut st = slot.state.lock().expect("slot lock");
        if std::mem::replace(&mut st.detached, true) {
            return;
        }
        st.closed = true;
        take_unacked(&mut st)
    };
    slot.notify.notify_waiters();
    slot.consumers_on_channel.fetch_sub(1, Ordering::Relaxed);
    tokio::spawn(async move {
        if slot.channel.status().connected() {
            let _ = slot
                .channel
                .basic_cancel(
                    ShortString::from(slot.tag.clone()),
                    BasicCancelOptions::default(),
                )
                .await;
        }
        requeue(leftovers.into());
    });
}

/// Everything a slot holds unacknowledged, oldest first: in flight, then buffered.
fn take_unacked(st: &mut SlotState) -> VecDeque<Delivery> {
    let mut all = std::mem::take(&mut st.in_flight);
    all.append(&mut st.buffer);
    all
}

/// A cursor reader's claim on a slot, at each of its waits. With `settle` (the first wait of a poll or
/// stream) the reader takes the slot over, waking the older readers so they see they are superseded,
/// and applies the client's cursor. Later waits keep the slot if nobody newer took it. Returns whether
/// the reader owns the slot.
fn claim(slot: &Slot, reader: u64, settle: Option<Option<&str>>) -> bool {
    match settle {
        Some(last) => {
            let previous = {
                let mut st = slot.state.lock().expect("slot lock");
                std::mem::replace(&mut st.owner, reader)
            };
            if previous != 0 && previous != reader {
                slot.notify.notify_waiters();
            }
            settle_cursor(slot, last);
            true
        }
        None => {
            let mut st = slot.state.lock().expect("slot lock");
            if st.owner == 0 {
                // A slot attached again (its consumer closed) starts unowned.
                st.owner = reader;
            }
            st.owner == reader
        }
    }
}

/// Applies a cursor client's `last_event_id` to what the slot holds in flight: acknowledges the events
/// up to and including it, and puts the rest back at the front of the buffer to be handed out again.
/// Only events the client's own answers carried are in flight (a superseded reader's go back to the
/// buffer), so the cursor acknowledges exactly what the client can have seen.
fn settle_cursor(slot: &Slot, last: Option<&str>) {
    let mut st = slot.state.lock().expect("slot lock");
    if st.in_flight.is_empty() {
        return;
    }
    let confirmed = last.and_then(|last| {
        st.in_flight
            .iter()
            .position(|d| event_id(d).as_deref() == Some(last))
    });
    if let Some(i) = confirmed {
        let acked: Vec<Delivery> = st.in_flight.drain(..=i).collect();
        ack_all(acked);
    }
    let again = std::mem::take(&mut st.in_flight);
    for d in again.into_iter().rev() {
        st.buffer.push_front(d);
    }
}

/// Takes up to `max` live deliveries from the front of a buffer, and the expired ephemeral ones met on
/// the way (RabbitMQ drops expired messages only at the head of a queue; these were already delivered to
/// a lingering consumer before they expired).
fn take_live(buffer: &mut VecDeque<Delivery>, max: usize) -> (Vec<Delivery>, Vec<Delivery>) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (mut live, mut expired) = (Vec::new(), Vec::new());
    while live.len() < max {
        let Some(d) = buffer.pop_front() else { break };
        if expires_at(&d).is_some_and(|t| t <= now_ms) {
            expired.push(d);
        } else {
            live.push(d);
        }
    }
    (live, expired)
}

/// Acknowledges deliveries that must not be delivered (expired).
fn ack_all(deliveries: Vec<Delivery>) {
    tokio::spawn(async move {
        for d in deliveries {
            let _ = d.acker.ack(BasicAckOptions { multiple: false }).await;
        }
    });
}

/// Gives deliveries back to RabbitMQ, in order, for the next consumer of their postbox.
fn requeue(deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for d in deliveries {
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
        }
    });
}

/// Counts a poll as using a slot while it waits, so the reaper leaves the slot alone.
struct SlotUser {
    slot: Arc<Slot>,
}

impl SlotUser {
    fn new(slot: &Arc<Slot>) -> Self {
        slot.state.lock().expect("slot lock").users += 1;
        SlotUser { slot: slot.clone() }
    }
}

impl Drop for SlotUser {
    fn drop(&mut self) {
        let mut st = self.slot.state.lock().expect("slot lock");
        st.users -= 1;
        st.last_used = Some(Instant::now());
    }
}

/// Events handed to one poll, unacknowledged until [`Lease::ack`]. Dropping an unacknowledged lease puts
/// its events back at the front of the postbox's buffer.
pub struct Lease {
    slot: Option<Arc<Slot>>,
    deliveries: Vec<Delivery>,
    /// Handed to a cursor client: parked in flight when sent, not acknowledged.
    cursor: bool,
    /// The reader owning the postbox it was taken for (registered clients' postboxes only).
    reader: Option<u64>,
    /// Empty because the postbox's consumer was still attaching at the poll's deadline.
    attaching: bool,
    /// Empty because a newer poll or stream of the same client took the postbox over.
    superseded: bool,
}

impl Lease {
    fn empty() -> Self {
        Lease {
            slot: None,
            deliveries: Vec::new(),
            cursor: false,
            reader: None,
            attaching: false,
            superseded: false,
        }
    }

    fn superseded() -> Self {
        let mut lease = Lease::empty();
        lease.superseded = true;
        lease
    }

    /// Empty because a newer poll or stream of the same client owns the postbox now: this one is
    /// over (a stream ends).
    pub fn is_superseded(&self) -> bool {
        self.superseded
    }

    /// Empty because the postbox's consumer was still attaching at the poll's deadline (RabbitMQ busy).
    pub fn attaching(&self) -> bool {
        self.attaching
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The id of the last event, if any.
    pub fn last_event_id(&self) -> Option<String> {
        self.deliveries.last().and_then(event_id)
    }

    /// The events, in postbox order (messages that are not Postbox events are skipped).
    pub fn events(&self) -> impl Iterator<Item = Received<'_>> {
        self.deliveries.iter().filter_map(message::read)
    }

    /// The response carrying the events was handed over: a seed client's events are acknowledged now,
    /// a cursor client's are parked in flight until a later cursor confirms them; but when a newer
    /// reader took the postbox over meanwhile, this answer is presumed unseen and its events go back to
    /// the buffer. Returns how many events the postbox holds in flight now (see
    /// [`Hub::in_flight_limit`]).
    pub async fn handed_over(mut self) -> usize {
        if !self.cursor {
            self.ack().await;
            return 0;
        }
        let deliveries = std::mem::take(&mut self.deliveries);
        let mut in_flight = 0;
        if let Some(slot) = &self.slot {
            let mut st = slot.state.lock().expect("slot lock");
            if st.closed {
                drop(st);
                requeue(deliveries);
            } else if self.reader.is_some_and(|r| st.owner != r) {
                for d in deliveries.into_iter().rev() {
                    st.buffer.push_front(d);
                }
                drop(st);
                slot.notify.notify_waiters();
            } else {
                st.in_flight.extend(deliveries);
                in_flight = st.in_flight.len();
            }
        }
        self.settle();
        in_flight
    }

    /// Acknowledges the events: they leave the postbox for good.
    pub async fn ack(mut self) {
        let deliveries = std::mem::take(&mut self.deliveries);
        let acks = deliveries
            .iter()
            .map(|d| d.acker.ack(BasicAckOptions { multiple: false }));
        for result in futures_util::future::join_all(acks).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "ack failed; the event will be delivered again");
            }
        }
        self.settle();
    }

    fn settle(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut st = slot.state.lock().expect("slot lock");
            st.users -= 1;
            st.last_used = Some(Instant::now());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let deliveries = std::mem::take(&mut self.deliveries);
        if let Some(slot) = &self.slot
            && !deliveries.is_empty()
        {
            let mut st = slot.state.lock().expect("slot lock");
            if st.closed {
                drop(st);
                requeue(deliveries);
            } else {
                for d in deliveries.into_iter().rev() {
                    st.buffer.push_front(d);
                }
                drop(st);
                slot.notify.notify_waiters();
            }
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: Duration = Duration::from_secs(5);

    #[test]
    fn a_poll_waits_one_whole_round_for_its_attach_whatever_its_deadline() {
        let start = tokio::time::Instant::now();
        let mut wait = AttachWait::new(ROUND, start);
        // A `timeout=0` poll: its deadline has passed, yet it waits the round out.
        assert_eq!(wait.until(start), start + ROUND);
        // Its attach failed early while others got through: it tries again within the round.
        let early = start + Duration::from_secs(1);
        assert_eq!(wait.next(early, start, true), AfterWait::Again);
        assert_eq!(wait.until(start), start + ROUND);
    }

    #[test]
    fn a_busy_broker_makes_a_poll_answer_empty_at_its_deadline() {
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_millis(5_500);
        let mut wait = AttachWait::new(ROUND, start);
        let end = start + ROUND;
        assert_eq!(wait.next(end, deadline, true), AfterWait::Again);
        // The next round is cut at the poll's deadline, which then answers with no events.
        assert_eq!(wait.until(deadline), deadline);
        assert_eq!(wait.next(deadline, deadline, true), AfterWait::Empty);

        // A long hold keeps waiting round after round while attaches succeed...
        let far = start + Duration::from_secs(60);
        let mut wait = AttachWait::new(ROUND, start);
        assert_eq!(wait.next(end, far, true), AfterWait::Again);
        assert_eq!(wait.until(far), end + ROUND);
        // ...and fails as soon as a round passes with none.
        assert_eq!(wait.next(end + ROUND, far, false), AfterWait::Fail);
    }

    #[test]
    fn a_broker_attaching_nothing_for_a_round_fails_the_poll() {
        let start = tokio::time::Instant::now();
        let mut wait = AttachWait::new(ROUND, start);
        assert_eq!(
            wait.next(start + ROUND, start + Duration::from_secs(60), false),
            AfterWait::Fail
        );
        let mut wait = AttachWait::new(ROUND, start);
        assert_eq!(wait.next(start + ROUND, start, false), AfterWait::Fail);
    }
}
