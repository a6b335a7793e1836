//! The audit trail: who did what, from where, with what outcome, and never a secret. Each
//! event is a log line under the target `gatehouse::audit` and a row in `audit_events`.
//!
//! The server queues rows to one writer thread, which appends them in batches: recording an
//! event costs the request a channel send, not a database write. If the queue is full (the
//! database is down or far behind), the event is still in the log and the overflow is
//! counted and warned about. Admin commands write their row directly.
//!
//! `audit.log_only` names events that go to the log alone: at thousands of tokens a second
//! `token_issued` alone adds hundreds of millions of rows a day, which an operator of
//! machine-to-machine traffic may rather keep in the log pipeline (as Keycloak's
//! `enabledEventTypes` chooses which events it stores).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

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

    fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Whether `audit.log_only` keeps this event out of the audit table.
    fn is_log_only(self) -> bool {
        LOG_ONLY.load(Ordering::Relaxed) & self.bit() != 0
    }
}

/// The events of `audit.log_only`, one bit each; set once at start by `keep_in_log_only`.
static LOG_ONLY: AtomicU32 = AtomicU32::new(0);

/// From now on, `events` are logged but not written to the audit table.
pub fn keep_in_log_only(events: &[Event]) {
    let bits = events.iter().fold(0, |bits, event| bits | event.bit());
    LOG_ONLY.store(bits, Ordering::Relaxed);
}

/// One event, built at the place it happens.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    event: Event,
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

    /// Free text for what the columns do not hold (a grant type, a key id). Never a secret.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = Some(detail.into());
        self
    }

    /// Logs the event and queues its row for the writer thread.
    pub fn record(self) {
        self.log();
        if self.event.is_log_only() {
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
        if self.event.is_log_only() {
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
    use super::Event;

    #[test]
    fn every_event_has_its_own_name_and_is_found_by_it() {
        for event in Event::ALL {
            assert_eq!(Event::from_name(event.name()), Some(event));
        }
        let mut names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Event::ALL.len());
        assert_eq!(Event::from_name("tokens_issued"), None);
        assert_eq!(Event::from_name("Login"), None);
    }
}
