//! The server's log lines, gathered in memory and written to stdout in batches by one
//! thread, so that a request does not pay a `write` system call for its line. At thousands
//! of tokens a second, each with its audit line, that call and the kernel's work behind it
//! cost a client_credentials token 2-4% of its throughput (README, "Benchmarks"). As
//! nginx's `access_log ... buffer= flush=` and Envoy's access log flush interval do, lines
//! are written about every `log.flush_interval`, in the order they were logged, each with
//! the time it was logged. Once the server is serving, a stop by SIGTERM or SIGINT writes
//! out every line; a crash (SIGKILL, the OOM killer) loses the lines not yet written,
//! normally at most an interval's, as the audit table's writer, which batches its rows over
//! a longer interval, already may.

use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// Past this many bytes waiting, the thread that logs writes the batch itself: lines then
/// cost what unbuffered lines do, and memory stays bounded when stdout blocks.
const HIGH_WATER: usize = 256 * 1024;

/// The process's one buffer, once installed: its flusher, and `FlushOnDrop` at exit, reach
/// it here.
static INSTALLED: OnceLock<LineBuffer> = OnceLock::new();

pub struct LineBuffer {
    /// Lines logged and not yet taken for writing.
    pending: Mutex<Vec<u8>>,
    /// Taken before `pending` is released, so that batches are written in the order they
    /// were taken.
    output: Mutex<Output>,
    /// Wakes the flusher when a line arrives in an empty buffer.
    arrived: Condvar,
    interval: Duration,
}

struct Output {
    /// The batch being written; its capacity is kept for the next.
    batch: Vec<u8>,
    sink: Box<dyn Write + Send>,
}

impl LineBuffer {
    fn new(interval: Duration, sink: Box<dyn Write + Send>) -> LineBuffer {
        LineBuffer {
            pending: Mutex::new(Vec::new()),
            output: Mutex::new(Output {
                batch: Vec::new(),
                sink,
            }),
            arrived: Condvar::new(),
            interval,
        }
    }

    /// The process's buffer for stdout, its flusher thread started by the first call.
    /// `None` when the thread cannot be started: the caller then logs unbuffered.
    pub fn install(interval: Duration) -> Option<&'static LineBuffer> {
        if let Some(buffer) = INSTALLED.get() {
            return Some(buffer);
        }
        let buffer = INSTALLED.get_or_init(|| LineBuffer::new(interval, Box::new(io::stdout())));
        buffer.start().then_some(buffer)
    }

    /// Starts the flusher thread; false when it cannot be started.
    fn start(&'static self) -> bool {
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || self.run())
            .is_ok()
    }

    fn run(&self) {
        loop {
            let pending = self
                .arrived
                .wait_while(lock(&self.pending), |lines| lines.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            drop(pending);
            // Lines arriving meanwhile join this batch.
            std::thread::sleep(self.interval);
            self.write_out(lock(&self.pending));
        }
    }

    /// One event's writer: tracing-subscriber and json-subscriber format a whole line and
    /// hand it over in one `write_all`, so lines are never interleaved.
    pub fn writer(&'static self) -> LineWriter {
        LineWriter(self)
    }

    fn append(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        if pending.len() >= HIGH_WATER {
            self.write_out(pending);
        } else if was_empty {
            drop(pending);
            self.arrived.notify_one();
        }
    }

    /// Writes what `pending` holds. A failure (a closed stdout, a full disk) is reported on
    /// stderr, as tracing-subscriber reports a line its writer refused.
    fn write_out(&self, mut pending: MutexGuard<'_, Vec<u8>>) {
        if pending.is_empty() {
            return;
        }
        let mut output = lock(&self.output);
        let Output { batch, sink } = &mut *output;
        std::mem::swap(&mut *pending, batch);
        drop(pending);
        if let Err(e) = sink.write_all(batch).and_then(|()| sink.flush()) {
            eprintln!("gatehouse: log lines could not be written: {e}");
        }
        batch.clear();
    }
}

/// Writes out what the installed buffer holds when dropped: at exit, so that no line is
/// left behind.
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(buffer) = INSTALLED.get() {
            buffer.write_out(lock(&buffer.pending));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct LineWriter(&'static LineBuffer);

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink that keeps what it was given and counts the writes.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.bytes).extend_from_slice(bytes);
            *lock(&self.writes) += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn started(interval: Duration) -> (&'static LineBuffer, Recorder) {
        let recorder = Recorder::default();
        let buffer: &'static LineBuffer = Box::leak(Box::new(LineBuffer::new(
            interval,
            Box::new(recorder.clone()),
        )));
        assert!(buffer.start());
        (buffer, recorder)
    }

    fn written(recorder: &Recorder) -> String {
        String::from_utf8(lock(&recorder.bytes).clone()).unwrap()
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_each_threads_order_and_in_few_writes() {
        let (buffer, recorder) = started(Duration::from_millis(50));
        std::thread::scope(|s| {
            for thread in 0..4 {
                s.spawn(move || {
                    for n in 0..500 {
                        let line = format!("thread={thread} n={n} {}\n", "x".repeat(n % 40));
                        buffer.writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while written(&recorder).lines().count() < 2000 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = written(&recorder);
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (thread, rest) = line
                .strip_prefix("thread=")
                .and_then(|l| l.split_once(" n="))
                .unwrap_or_else(|| panic!("a torn line: {line:?}"));
            let thread: usize = thread.parse().unwrap();
            let (n, padding) = rest.split_once(' ').unwrap();
            let n: usize = n.parse().unwrap();
            assert_eq!(n, next[thread], "thread {thread}'s lines out of order");
            assert_eq!(padding, "x".repeat(n % 40));
            next[thread] += 1;
        }
        assert_eq!(next, [500; 4], "every line arrived");
        // 2000 lines logged faster than the interval: a handful of batches, not a write each.
        let writes = *lock(&recorder.writes);
        assert!(writes < 100, "{writes} writes for 2000 lines");
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_more_lines_to_push_it() {
        let (buffer, recorder) = started(Duration::from_millis(20));
        buffer.writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while written(&recorder).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(&recorder), "alone\n");
    }

    #[test]
    fn writing_out_empties_the_buffer_at_once() {
        let (buffer, recorder) = started(Duration::from_secs(3600));
        buffer.writer().write_all(b"last words\n").unwrap();
        assert_eq!(written(&recorder), "", "the flusher waits out its interval");
        buffer.write_out(lock(&buffer.pending));
        assert_eq!(written(&recorder), "last words\n");
    }

    #[test]
    fn past_the_high_water_mark_the_logging_thread_writes_the_batch_itself() {
        let (buffer, recorder) = started(Duration::from_secs(3600));
        let line = format!("{}\n", "y".repeat(1023));
        let below_the_mark = (HIGH_WATER - 1) / line.len();
        for _ in 0..below_the_mark {
            buffer.writer().write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(written(&recorder), "", "below the mark everything waits");
        buffer.writer().write_all(line.as_bytes()).unwrap();
        assert_eq!(written(&recorder).len(), (below_the_mark + 1) * line.len());
        assert_eq!(lock(&buffer.pending).len(), 0);
    }
}
