//! The audit trail: who did what, from where, with what outcome, and never a secret. Each
//! event is a log line under the target `gatehouse::audit` and a row in `audit_events`.
//!
//! The server queues rows to one writer thread, which appends them in batches: recording an
//! event costs the request a channel send, not a database write. If the queue is full (the
//! database is down or far behind), the event is still in the log and the overflow is
//! counted and warned about. Admin commands write their row directly.
//!
//! `audit.log_only` names events that go to the log alone: at thousands of tokens a second
//! `token_issued` of client_credentials alone adds hundreds of millions of rows a day,
//! which an operator of machine-to-machine traffic may rather keep in the log pipeline
//! (the inverse of Keycloak's `enabledEventTypes`, which lists the event types it stores).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::GrantType;
use crate::storage::audit::{self as audit_store, AuditRow};
use crate::storage::{now_unix, DbConnection, Pool, StorageResult};

pub const TARGET: &str = "gatehouse::audit";

const QUEUE_CAPACITY: usize = 65_536;
/// Rows per transaction. On SQLite a transaction holds the process's writer gate, so a
/// backlog goes in pieces that let the requests' own writes in between.
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_millis(50);

/// What happened. The name is the `event` field of the log line and of the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Login,
    Consent,
    TokenIssued,
    TokenRevoked,
    RefreshReuseDetected,
    CodeReplayDetected,
    KeyGenerated,
    KeyRotated,
    ClientsSynced,
    UserAdded,
    UserDisabled,
    UserEnabled,
    PasswordChanged,
}

impl Event {
    pub const ALL: [Event; 13] = [
        Event::Login,
        Event::Consent,
        Event::TokenIssued,
        Event::TokenRevoked,
        Event::RefreshReuseDetected,
        Event::CodeReplayDetected,
        Event::KeyGenerated,
        Event::KeyRotated,
        Event::ClientsSynced,
        Event::UserAdded,
        Event::UserDisabled,
        Event::UserEnabled,
        Event::PasswordChanged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Login => "login",
            Event::Consent => "consent",
            Event::TokenIssued => "token_issued",
            Event::TokenRevoked => "token_revoked",
            Event::RefreshReuseDetected => "refresh_reuse_detected",
            Event::CodeReplayDetected => "code_replay_detected",
            Event::KeyGenerated => "key_generated",
            Event::KeyRotated => "key_rotated",
            Event::ClientsSynced => "clients_synced",
            Event::UserAdded => "user_added",
            Event::UserDisabled => "user_disabled",
            Event::UserEnabled => "user_enabled",
            Event::PasswordChanged => "password_changed",
        }
    }

    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|event| event.name() == name)
    }
}

/// What `audit.log_only` can name: an event, or `token_issued.GRANT`, the tokens of one
/// grant type (Keycloak, too, tells client-credentials logins from the users' tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    Event(Event),
    TokenIssuedBy(GrantType),
}

// One bit each in `LOG_ONLY`: the events from bit 0, the grant types from bit 16.
const _: () = assert!(Event::ALL.len() <= 16 && GrantType::ALL.len() <= 16);

impl Selector {
    pub fn parse(name: &str) -> Option<Selector> {
        match name.strip_prefix("token_issued.") {
            Some(grant) => GrantType::parse(grant).map(Selector::TokenIssuedBy),
            None => Event::from_name(name).map(Selector::Event),
        }
    }

    /// How `list` and the configuration write it: `consent`, `token_issued.password`.
    pub fn name(self) -> String {
        match self {
            Selector::Event(event) => event.name().to_owned(),
            Selector::TokenIssuedBy(grant) => format!("token_issued.{}", grant.as_str()),
        }
    }

    /// `selectors` as the configuration would list them: `token_issued.password, consent`.
    pub fn list(selectors: &[Selector]) -> String {
        let names: Vec<String> = selectors.iter().map(|s| s.name()).collect();
        names.join(", ")
    }

    fn bit(self) -> u32 {
        match self {
            Selector::Event(event) => 1 << event as u32,
            Selector::TokenIssuedBy(grant) => 1 << (16 + grant as u32),
        }
    }
}

/// The selectors of `audit.log_only`; set at start by `keep_in_log_only`.
static LOG_ONLY: AtomicU32 = AtomicU32::new(0);

/// From now on, what `selectors` name is logged but not written to the audit table.
pub fn keep_in_log_only(selectors: &[Selector]) {
    let bits = selectors.iter().fold(0, |bits, s| bits | s.bit());
    LOG_ONLY.store(bits, Ordering::Relaxed);
}

/// One event, built at the place it happens.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    event: Event,
    /// The grant type of a `token_issued`.
    grant: Option<GrantType>,
    outcome: &'static str,
    user_id: Option<String>,
    client_id: Option<String>,
    ip: Option<String>,
    detail: Option<String>,
}

impl AuditEvent {
    /// `outcome` says how `event` ended (`success`, `failure`, `denied`, `refused`,
    /// `detected`).
    pub fn new(event: Event, outcome: &'static str) -> AuditEvent {
        AuditEvent {
            event,
            grant: None,
            outcome,
            user_id: None,
            client_id: None,
            ip: None,
            detail: None,
        }
    }

    pub fn user(mut self, user_id: Option<&str>) -> AuditEvent {
        self.user_id = user_id.map(str::to_owned);
        self
    }

    pub fn client(mut self, client_id: Option<&str>) -> AuditEvent {
        self.client_id = client_id.map(str::to_owned);
        self
    }

    pub fn ip(mut self, ip: Option<&str>) -> AuditEvent {
        self.ip = ip.map(str::to_owned);
        self
    }

    /// The grant type a token was issued by, in the detail as `grant_type=...`.
    pub fn grant(mut self, grant: GrantType) -> AuditEvent {
        self.grant = Some(grant);
        self.detail(format!("grant_type={}", grant.as_str()))
    }

    /// Whether `audit.log_only` keeps this event out of the audit table.
    fn is_log_only(&self) -> bool {
        let bits = LOG_ONLY.load(Ordering::Relaxed);
        let named = |selector: Selector| bits & selector.bit() != 0;
        let by_grant = |grant: GrantType| {
            self.event == Event::TokenIssued && named(Selector::TokenIssuedBy(grant))
        };
        named(Selector::Event(self.event)) || self.grant.is_some_and(by_grant)
    }

    /// Free text for what the columns do not hold (a grant type, a key id). Never a secret.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = Some(detail.into());
        self
    }

    /// Logs the event and queues its row for the writer thread.
    pub fn record(self) {
        self.log();
        if self.is_log_only() {
            return;
        }
        let row = self.into_row();
        let Some(sink) = SINK.get() else { return };
        let sent = match sink
            .sender
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(sender) => sender.try_send(row),
            None => return,
        };
        if let Err(TrySendError::Full(_)) = sent {
            let dropped = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "audit queue full: events are in the log but not in the audit table"
                );
            }
        }
    }

    /// Logs the event and writes its row now, on `conn` (for admin commands).
    pub fn record_now(self, conn: &mut DbConnection) -> StorageResult<()> {
        self.log();
        if self.is_log_only() {
            return Ok(());
        }
        audit_store::insert_all(conn, &[self.into_row()])
    }

    fn log(&self) {
        tracing::info!(
            target: TARGET,
            event = self.event.name(),
            outcome = self.outcome,
            user_id = self.user_id.as_deref(),
            client_id = self.client_id.as_deref(),
            ip = self.ip.as_deref(),
            detail = self.detail.as_deref(),
            "audit"
        );
    }

    fn into_row(self) -> AuditRow {
        AuditRow {
            id: uuid::Uuid::now_v7().to_string(),
            occurred_at: now_unix(),
            event: self.event.name().to_owned(),
            outcome: self.outcome.to_owned(),
            user_id: self.user_id,
            client_id: self.client_id,
            ip: self.ip,
            detail: self.detail,
        }
    }
}

struct Sink {
    /// Read-locked by every event, write-locked only to close the queue: a mutex here was
    /// contended between the workers.
    sender: RwLock<Option<SyncSender<AuditRow>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread that appends queued rows through `pool`. Once per process.
pub fn start_writer(pool: Pool) {
    let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
    let writer = match std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || write_rows(&pool, &receiver))
    {
        Ok(writer) => writer,
        Err(error) => {
            tracing::error!(%error, "cannot start the audit writer; audit events go to the log only");
            return;
        }
    };
    let sink = Sink {
        sender: RwLock::new(Some(sender)),
        writer: Mutex::new(Some(writer)),
        dropped: AtomicU64::new(0),
    };
    if SINK.set(sink).is_err() {
        tracing::warn!("the audit writer was already running");
    }
}

/// Closes the queue and waits, a bounded time, for the writer to append what is in it.
pub fn stop_writer(wait: Duration) {
    let Some(sink) = SINK.get() else { return };
    drop(
        sink.sender
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    );
    let Some(writer) = sink.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let deadline = std::time::Instant::now() + wait;
    while !writer.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if writer.is_finished() {
        let _ = writer.join();
    } else {
        tracing::warn!("stopping with audit rows not yet written; they are in the log");
    }
}

fn write_rows(pool: &Pool, receiver: &Receiver<AuditRow>) {
    while let Ok(first) = receiver.recv() {
        // Sleeps through LINGER and then takes what queued meanwhile, instead of waiting on
        // the queue for each row: a writer waiting on the queue is woken by every send,
        // which cost each request a futex wake and this thread a context switch (about 7%
        // of the server's CPU under client_credentials). One transaction then covers many
        // rows instead of one per event.
        std::thread::sleep(LINGER);
        let mut rows = vec![first];
        rows.extend(receiver.try_iter().take(QUEUE_CAPACITY));
        for batch in rows.chunks(BATCH) {
            write_batch(pool, batch);
        }
    }
}

/// A database outage holds the batch back and retries; the queue meanwhile fills and then
/// overflows into the log only.
fn write_batch(pool: &Pool, batch: &[AuditRow]) {
    let _writes = crate::storage::writes_through(pool);
    let mut delay = Duration::from_millis(100);
    loop {
        let written = pool.get().map_err(|e| e.to_string()).and_then(|mut conn| {
            audit_store::insert_all(&mut conn, batch).map_err(|e| e.to_string())
        });
        match written {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, rows = batch.len(), "cannot write audit rows; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Event, Selector};

    #[test]
    fn every_event_has_its_own_name_and_is_found_by_it() {
        // Every variant is in ALL, in order: one left out could not be named in config.
        assert_eq!(Event::ALL.len(), Event::PasswordChanged as usize + 1);
        for (i, event) in Event::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, i);
            assert_eq!(Event::from_name(event.name()), Some(event));
        }
        let mut names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Event::ALL.len());
        assert_eq!(Event::from_name("tokens_issued"), None);
        assert_eq!(Event::from_name("Login"), None);
    }

    #[test]
    fn selectors_name_an_event_or_the_tokens_of_one_grant() {
        use crate::config::GrantType;

        assert_eq!(
            Selector::parse("token_issued"),
            Some(Selector::Event(Event::TokenIssued))
        );
        for grant in GrantType::ALL {
            let selector = Selector::TokenIssuedBy(grant);
            assert_eq!(Selector::parse(&selector.name()), Some(selector));
        }
        assert_eq!(
            Selector::parse("token_issued.client_credentials"),
            Some(Selector::TokenIssuedBy(GrantType::ClientCredentials))
        );
        for unknown in [
            "token_issued.implicit",
            "login.password",
            "token_issued.",
            "",
        ] {
            assert_eq!(Selector::parse(unknown), None, "{unknown}");
        }
        let mut bits: Vec<u32> = Event::ALL.map(|e| Selector::Event(e).bit()).to_vec();
        bits.extend(GrantType::ALL.map(|g| Selector::TokenIssuedBy(g).bit()));
        let distinct: std::collections::HashSet<u32> = bits.iter().copied().collect();
        assert_eq!(distinct.len(), bits.len(), "every selector has its own bit");
    }
}
