//! The node-local write-ahead log of asynchronous inserts: records appended to segment files,
//! concurrent appends sharing one fsync (group commit), replayed on start.
//!
//! A record is `[payload length: u32][checksum: u64][kind: u8][payload]`, the checksum being
//! the XXH32 hash of the payload seeded with the kind (the kind byte's top bit set says so), or,
//! in records written before December 2026, the first 8 bytes of the blake3 hash of kind and
//! payload. The checksum only has to catch a torn or garbled write, as a WAL's CRC does: blake3
//! cost this log's thread about a microsecond of CPU a small insert, XXH32 a tenth of that. An
//! insert record's payload starts with its sequence number. Reading stops at the first record
//! that is short or fails its checksum (a write torn by a crash): the file is cut there, so a
//! half-written record is never applied and the next start finds a clean log. A `Flushed`
//! record names inserts that were registered; a segment is deleted once every insert in it was
//! flushed and it is no longer the one being written. The log knows nothing of what the
//! payloads mean.
//!
//! An append frames its record straight into the queue the writer thread takes whole, under
//! one short lock, and leaves its waker there: the writer writes and fsyncs what it took, moves
//! the durable mark past it and wakes those appenders. Nothing is allocated per small append
//! and no small payload crosses threads (an earlier log sent each payload through a channel
//! with a one-shot answer: 1.2 µs of the request thread's CPU in the allocator alone). A large
//! payload is handed to the writer to frame, as every payload once was: copying and hashing it
//! under the lock, on a runtime thread, would hold up that thread and every other append.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hasher as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use twox_hash::XxHash32;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// A segment whose inserts were all flushed is closed (and deleted) past this size.
const DRAINED_SEGMENT_BYTES: u64 = 1024 * 1024;

/// Payloads larger than this are framed by the writer thread rather than under the queue's
/// lock: an insert may log hundreds of MiB, tens of milliseconds of copying and hashing.
const WRITER_FRAMES_BYTES: usize = 64 * 1024;

/// The writer keeps its group buffer's capacity between groups up to this size: a burst's
/// larger buffer is given back.
const KEPT_GROUP_CAPACITY: usize = 16 * 1024 * 1024;

/// How long a group waits for more appends when the last group held several. A longer wait
/// means fewer fsyncs (each writes the segment's new size as well as its data: a journal commit
/// on most filesystems, a second write on this machine's ext4, which has no journal) but
/// requests that wait on the group longer, while the CPU idles if too few others are left to
/// run. Measured with 256 clients of 10-row inserts, as the rate's share of the same round's
/// `GET /ping` ceiling (`tandem-bench --small-insert-rounds`): 1 ms gave medians of 0.33-0.34
/// in 4 batches of 3 rounds, 500 µs 0.34-0.40 in the batches interleaved with them (and the
/// machine was busier: 91-96% against 90-95%), 250 µs 0.31-0.33 against 500 µs's 0.34-0.36. At
/// 500 µs a group held about 44 inserts (885 fsyncs a second at 39k inserts/s; 1 ms: about 77,
/// 583 a second). Earlier, when an insert cost half again as much CPU, 1 ms had been the best:
/// no wait gave 40.5-42.3k inserts/s (an fsync for every few), 500 µs 43-46k, 1 ms 44.6-47k,
/// 2 ms 41.5-45k; ending the wait early once appends pause for 100 µs gave 42-43k. The less CPU
/// an insert takes, the more of its time is the wait.
const GROUP_LINGER: Duration = Duration::from_micros(500);

const HEADER_BYTES: usize = 4 + 8 + 1;
const KIND_INSERT: u8 = 1;
const KIND_FLUSHED: u8 = 2;
/// Set in the kind byte of a record whose checksum is XXH32 (every record written now).
const XXH32_CHECKSUM: u8 = 0x80;

/// Why an append was refused. Nothing of a refused append is in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "the insert log holds {held} bytes not yet registered and this insert needs {needed} more, over \
         async_insert_max_log_bytes = {limit}"
    )]
    Full { held: u64, needed: u64, limit: u64 },
    #[error("the insert log cannot be written: {0}")]
    Io(String),
}

/// An insert found in the log at start that was never marked flushed.
#[derive(Debug)]
pub struct Replayed {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// What opening the log found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub inserts: Vec<Replayed>,
    /// Bytes cut from torn tails.
    pub cut_bytes: u64,
}

/// What the appenders and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer while it waits for work.
    work: Condvar,
    /// Every sequence below this is on disk. Moved by the writer under the queue's lock, read
    /// without it by a woken appender.
    durable: AtomicU64,
    /// Why the log stopped taking appends: after a failed write or fsync, what reached the
    /// disk is unknown.
    failed: OnceLock<String>,
    /// Bytes of the segments on disk.
    bytes: AtomicU64,
    /// `async_insert_max_log_bytes`.
    max_bytes: u64,
}

/// What waits for the writer.
struct Queue {
    /// Insert records framed by appenders, in sequence order, not yet taken by the writer.
    records: Vec<u8>,
    /// Larger payloads, for the writer to frame, with their sequences.
    large: Vec<(u64, Vec<u8>)>,
    /// The bytes `large` will take once framed.
    large_bytes: u64,
    /// The sequence of the first record in `records` or `large`.
    first: u64,
    /// The sequence the next append takes.
    next_sequence: u64,
    /// Appenders waiting for their sequence to become durable.
    waiters: Vec<(u64, Waker)>,
    /// Inserts marked flushed, not yet recorded.
    flushed: Vec<u64>,
    /// Bytes on disk or being written: with what is queued, what the limit counts.
    held: u64,
    /// The writer waits on `work`: the next append or flushed mark must wake it.
    writer_waiting: bool,
    /// The log was dropped: the writer writes what is queued and stops.
    closed: bool,
}

impl Queue {
    /// Bytes queued for the writer, as they will be on disk.
    fn queued_bytes(&self) -> u64 {
        self.records.len() as u64 + self.large_bytes
    }

    fn is_idle(&self) -> bool {
        self.records.is_empty() && self.large.is_empty() && self.flushed.is_empty()
    }

    /// Drops what is queued: after a failure, nothing more is written.
    fn discard(&mut self) {
        self.records.clear();
        self.large.clear();
        self.large_bytes = 0;
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The lock guards no invariant a panicking holder could break halfway: every holder
        // only pushes to or swaps out whole buffers.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frames an insert record into the queue and leaves `waker` to be woken once it is on
    /// disk; its sequence number.
    fn enqueue(&self, payload: Vec<u8>, waker: &Waker) -> Result<u64, LogError> {
        let mut queue = self.queue();
        if let Some(reason) = self.failed.get() {
            return Err(LogError::Io(reason.clone()));
        }
        if queue.closed {
            return Err(LogError::Io("the log is closed".into()));
        }
        let needed = (HEADER_BYTES + 8 + payload.len()) as u64;
        let held = queue.held + queue.queued_bytes();
        if held + needed > self.max_bytes {
            return Err(LogError::Full { held, needed, limit: self.max_bytes });
        }
        let sequence = queue.next_sequence;
        queue.next_sequence += 1;
        if payload.len() > WRITER_FRAMES_BYTES {
            queue.large.push((sequence, payload));
            queue.large_bytes += needed;
        } else {
            frame(&mut queue.records, KIND_INSERT, &[&sequence.to_le_bytes(), &payload]);
        }
        queue.waiters.push((sequence, waker.clone()));
        self.wake_writer(&mut queue);
        Ok(sequence)
    }

    /// Ready once `sequence` is on disk, or the log failed first.
    fn poll_durable(&self, sequence: u64, waker: &Waker) -> Poll<Result<u64, LogError>> {
        if let Some(answer) = self.durable_answer(sequence) {
            return Poll::Ready(answer);
        }
        // Polled before the writer woke it (a timeout or a select around the append): the
        // current waker is the one to wake. Checked again under the lock the writer moves the
        // mark under, so the wake cannot be missed.
        let mut queue = self.queue();
        if let Some(answer) = self.durable_answer(sequence) {
            return Poll::Ready(answer);
        }
        queue.waiters.push((sequence, waker.clone()));
        Poll::Pending
    }

    fn durable_answer(&self, sequence: u64) -> Option<Result<u64, LogError>> {
        if self.durable.load(Ordering::Acquire) > sequence {
            return Some(Ok(sequence));
        }
        self.failed.get().map(|reason| Err(LogError::Io(reason.clone())))
    }

    fn wake_writer(&self, queue: &mut Queue) {
        if queue.writer_waiting {
            queue.writer_waiting = false;
            self.work.notify_one();
        }
    }
}

/// The write-ahead log. Cheap to share: appends go to one writer thread.
pub struct InsertLog {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl InsertLog {
    /// Opens the log in `dir` (created if missing), cutting torn tails, and starts its writer.
    /// Returns the inserts not yet flushed, in the order they were logged.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(InsertLog, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let number = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal"));
            if let Some(number) = number.and_then(|n| n.parse::<u64>().ok()) {
                segments.insert(number, path);
            }
        }
        let mut recovery = Recovery::default();
        let mut inserts: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
        let mut flushed = HashSet::new();
        let mut sizes = BTreeMap::new();
        for (&number, path) in &segments {
            let (records, valid_len, file_len) = read_segment(path)?;
            if valid_len < file_len {
                tracing::warn!(segment = %path.display(), valid_len, file_len, "cutting a torn tail off the insert log");
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(valid_len)?;
                file.sync_all()?;
                recovery.cut_bytes += file_len - valid_len;
            }
            sizes.insert(number, valid_len);
            for (kind, payload) in records {
                match kind {
                    KIND_INSERT if payload.len() >= 8 => {
                        let sequence = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                        inserts.insert(sequence, (number, payload[8..].to_vec()));
                    }
                    KIND_FLUSHED => flushed
                        .extend(payload.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))),
                    _ => {}
                }
            }
        }
        let next_sequence = inserts.keys().next_back().map_or(0, |s| s + 1);
        let mut pending = PendingSegments::default();
        let mut per_segment: BTreeMap<u64, usize> = sizes.keys().map(|&n| (n, 0)).collect();
        for (sequence, (segment, payload)) in inserts {
            if flushed.contains(&sequence) {
                continue;
            }
            pending.insert(sequence, segment);
            *per_segment.entry(segment).or_default() += 1;
            recovery.inserts.push(Replayed { sequence, payload });
        }
        let next_segment = segments.keys().next_back().map_or(0, |n| n + 1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: Vec::new(),
                large: Vec::new(),
                large_bytes: 0,
                first: next_sequence,
                next_sequence,
                waiters: Vec::new(),
                flushed: Vec::new(),
                held: 0,
                writer_waiting: false,
                closed: false,
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(next_sequence),
            failed: OnceLock::new(),
            bytes: AtomicU64::new(0),
            max_bytes,
        });
        let mut writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            file: None,
            segment: next_segment,
            segment_bytes: 0,
            sizes,
            pending,
            per_segment,
        };
        writer.delete_finished_segments();
        writer.open_segment()?;
        shared.queue().held = writer.held();
        let writer = std::thread::Builder::new().name("insert-log".into()).spawn(move || writer.run())?;
        Ok((InsertLog { shared, writer: Some(writer) }, recovery))
    }

    /// Appends one insert and returns its sequence number once it is on disk (fsynced,
    /// together with whatever else was waiting).
    ///
    /// An append dropped before it returns (its request went away) marks its record flushed:
    /// nobody was told it was logged and nobody will buffer it, and a record left pending would
    /// keep its segment, and the bytes it counts against the limit, until the next restart.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        let mut appended = Abandoned { log: self, sequence: None };
        let mut payload = Some(payload);
        let answer = std::future::poll_fn(|cx| match appended.sequence {
            None => match self.shared.enqueue(payload.take().unwrap_or_default(), cx.waker()) {
                Ok(sequence) => {
                    appended.sequence = Some(sequence);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            },
            Some(sequence) => self.shared.poll_durable(sequence, cx.waker()),
        })
        .await;
        appended.sequence = None;
        answer
    }

    /// Marks inserts as registered elsewhere: their records are no longer needed.
    pub fn flushed(&self, sequences: Vec<u64>) {
        if sequences.is_empty() {
            return;
        }
        let mut queue = self.shared.queue();
        queue.flushed.extend(sequences);
        self.shared.wake_writer(&mut queue);
    }

    /// Bytes of log on disk.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

/// An append in flight: its record, once queued, is given up if the append is dropped.
struct Abandoned<'a> {
    log: &'a InsertLog,
    sequence: Option<u64>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(sequence) = self.sequence.take() {
            self.log.flushed(vec![sequence]);
        }
    }
}

/// Closing the log lets the writer finish what was queued.
impl Drop for InsertLog {
    fn drop(&mut self) {
        {
            let mut queue = self.shared.queue();
            queue.closed = true;
            self.shared.wake_writer(&mut queue);
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The segment of every insert not yet flushed, by sequence. Hashed by aHash: the writer
/// inserts and removes every insert's sequence, and with SipHash the map was a tenth of its
/// thread's time.
type PendingSegments = HashMap<u64, u64, ahash::RandomState>;

/// One group as the writer took it from the queue.
#[derive(Default)]
struct Group {
    /// The framed insert records, then (framed by the writer) the large ones and a `Flushed`
    /// record.
    records: Vec<u8>,
    large: Vec<(u64, Vec<u8>)>,
    /// The sequences of the insert records, large ones included.
    sequences: std::ops::Range<u64>,
    flushed: Vec<u64>,
}

struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    file: Option<File>,
    segment: u64,
    segment_bytes: u64,
    /// Size of every segment on disk, the current one included.
    sizes: BTreeMap<u64, u64>,
    /// The segment of every insert not yet flushed.
    pending: PendingSegments,
    per_segment: BTreeMap<u64, usize>,
}

impl Writer {
    fn run(mut self) {
        let mut concurrent = false;
        let mut group = Group::default();
        let mut woken = Vec::new();
        while self.take(&mut group, concurrent) {
            concurrent = group.sequences.end - group.sequences.start > 1;
            let written = self.write_group(&mut group);
            self.publish(&group, written, &mut woken);
            for waker in woken.drain(..) {
                waker.wake();
            }
            group.records.clear();
            group.records.shrink_to(KEPT_GROUP_CAPACITY);
            group.large.clear();
            group.flushed.clear();
        }
    }

    /// Waits for work and takes it into `group`; false once the log is closed and drained.
    fn take(&self, group: &mut Group, concurrent: bool) -> bool {
        let shared = &self.shared;
        let mut queue = shared.queue();
        while queue.is_idle() {
            if queue.closed {
                return false;
            }
            queue.writer_waiting = true;
            queue = shared.work.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
        queue.writer_waiting = false;
        // While appends come from many requests at once, the group waits a little for more:
        // each fsync also writes the segment's new size, and without the wait a group held
        // about 6 inserts at 16,000 inserts/s (2,400 fsyncs a second). A lone writer, whose
        // groups hold one append, never waits. Appends made meanwhile do not wake the writer
        // (it is not waiting on `work`): a wake per append was a context switch per insert.
        if concurrent && !queue.closed {
            drop(queue);
            std::thread::sleep(GROUP_LINGER);
            queue = shared.queue();
        }
        queue.held = self.held() + queue.queued_bytes();
        queue.large_bytes = 0;
        std::mem::swap(&mut queue.records, &mut group.records);
        std::mem::swap(&mut queue.large, &mut group.large);
        std::mem::swap(&mut queue.flushed, &mut group.flushed);
        group.sequences = queue.first..queue.next_sequence;
        queue.first = queue.next_sequence;
        true
    }

    /// Writes the group; whether its records are on disk.
    fn write_group(&mut self, group: &mut Group) -> bool {
        if self.shared.failed.get().is_some() {
            return false;
        }
        let appended = !group.sequences.is_empty();
        for (sequence, payload) in &group.large {
            frame(&mut group.records, KIND_INSERT, &[&sequence.to_le_bytes(), payload]);
        }
        if !group.flushed.is_empty() {
            let body: Vec<u8> = group.flushed.iter().flat_map(|s| s.to_le_bytes()).collect();
            frame(&mut group.records, KIND_FLUSHED, &[&body]);
        }
        // Only appends need the fsync: a lost `Flushed` record replays inserts that were
        // registered, and registration deduplicates them.
        if let Err(e) = self.write(&group.records, appended) {
            let reason = format!("{e} (in {})", self.dir.display());
            tracing::error!(error = %reason, "the insert log failed; asynchronous inserts are refused until restart");
            let _ = self.shared.failed.set(reason);
            return false;
        }
        for sequence in group.sequences.clone() {
            self.pending.insert(sequence, self.segment);
        }
        *self.per_segment.entry(self.segment).or_default() += (group.sequences.end - group.sequences.start) as usize;
        for sequence in &group.flushed {
            if let Some(segment) = self.pending.remove(sequence)
                && let Some(count) = self.per_segment.get_mut(&segment)
            {
                *count = count.saturating_sub(1);
            }
        }
        // A full segment is closed; so is one whose inserts were all flushed, once it is big
        // enough to be worth deleting (its bytes count against the limit until then).
        let drained = self.per_segment.get(&self.segment).is_none_or(|&count| count == 0);
        let rotate = self.segment_bytes >= SEGMENT_BYTES || (drained && self.segment_bytes >= DRAINED_SEGMENT_BYTES);
        if rotate && let Err(e) = self.open_segment() {
            let _ = self.shared.failed.set(format!("cannot start a new log segment: {e}"));
        }
        self.delete_finished_segments();
        true
    }

    /// Moves the durable mark past the group if it was written and collects the wakers of the
    /// appenders it answers: all of them once the log failed (a group written before the
    /// failure, say before a new segment could not be started, is still acknowledged).
    fn publish(&self, group: &Group, written: bool, woken: &mut Vec<Waker>) {
        let shared = &self.shared;
        let mut queue = shared.queue();
        queue.held = self.held();
        if written {
            shared.durable.store(group.sequences.end, Ordering::Release);
        }
        let answered = if shared.failed.get().is_some() {
            // Nothing queued will be written: every appender learns why.
            queue.discard();
            u64::MAX
        } else {
            group.sequences.end
        };
        let mut at = 0;
        while at < queue.waiters.len() {
            if queue.waiters[at].0 < answered {
                woken.push(queue.waiters.swap_remove(at).1);
            } else {
                at += 1;
            }
        }
    }

    fn held(&self) -> u64 {
        self.sizes.values().sum()
    }

    fn write(&mut self, buffer: &[u8], sync: bool) -> io::Result<()> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("no open segment"))?;
        file.write_all(buffer)?;
        if sync {
            file.sync_data()?;
        }
        self.segment_bytes += buffer.len() as u64;
        self.sizes.insert(self.segment, self.segment_bytes);
        self.publish_size();
        Ok(())
    }

    fn open_segment(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            self.segment += 1;
        }
        let path = self.dir.join(format!("{:020}.wal", self.segment));
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Some(file);
        self.segment_bytes = 0;
        self.sizes.insert(self.segment, 0);
        self.per_segment.entry(self.segment).or_default();
        Ok(())
    }

    /// Deletes the segments (other than the one being written) whose inserts were all flushed.
    fn delete_finished_segments(&mut self) {
        let finished: Vec<u64> = self
            .per_segment
            .iter()
            .filter(|&(&segment, &count)| count == 0 && (self.file.is_none() || segment != self.segment))
            .map(|(&segment, _)| segment)
            .collect();
        for segment in finished {
            let path = self.dir.join(format!("{segment:020}.wal"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete a flushed log segment");
                    continue;
                }
            }
            self.per_segment.remove(&segment);
            self.sizes.remove(&segment);
        }
        self.publish_size();
    }

    fn publish_size(&self) {
        self.shared.bytes.store(self.held(), Ordering::Relaxed);
    }
}

/// A writer that stops without the log being closed (it panicked) fails the log, so no
/// appender waits for it forever.
impl Drop for Writer {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        if !queue.closed {
            let _ = self.shared.failed.set("the insert log's writer stopped".into());
        }
        queue.discard();
        let waiters = std::mem::take(&mut queue.waiters);
        drop(queue);
        waiters.into_iter().for_each(|(_, waker)| waker.wake());
    }
}

/// The checksum of a record of `kind` (as written, with its checksum flag).
fn checksum(kind: u8, payload: &[u8]) -> u64 {
    if kind & XXH32_CHECKSUM != 0 {
        return u64::from(XxHash32::oneshot(u32::from(kind), payload));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Appends a record whose payload is `parts`, one after the other.
fn frame(buffer: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let kind = kind | XXH32_CHECKSUM;
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut hasher = XxHash32::with_seed(u32::from(kind));
    parts.iter().for_each(|part| hasher.write(part));
    buffer.reserve(HEADER_BYTES + len);
    buffer.extend_from_slice(&(len as u32).to_le_bytes());
    buffer.extend_from_slice(&u64::from(hasher.finish_32()).to_le_bytes());
    buffer.push(kind);
    parts.iter().for_each(|part| buffer.extend_from_slice(part));
}

/// A record as read back: its kind (without the checksum flag) and payload.
type Record = (u8, Vec<u8>);

/// The records of a segment up to the first torn or corrupt one, the length of that valid
/// prefix, and the file's length.
fn read_segment(path: &Path) -> io::Result<(Vec<Record>, u64, u64)> {
    let bytes = std::fs::read(path)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&header[4..12]);
        let kind = header[12];
        let Some(payload) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len) else { break };
        if checksum(kind, payload) != u64::from_le_bytes(sum) {
            break;
        }
        records.push((kind & !XXH32_CHECKSUM, payload.to_vec()));
        at += HEADER_BYTES + len;
    }
    Ok((records, at as u64, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

    use super::*;

    fn open(dir: &Path) -> (InsertLog, Recovery) {
        InsertLog::open(dir, 1 << 30).unwrap()
    }

    fn payloads(recovery: &Recovery) -> Vec<Vec<u8>> {
        recovery.inserts.iter().map(|r| r.payload.clone()).collect()
    }

    #[tokio::test]
    async fn appended_inserts_come_back_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recovery) = open(dir.path());
        assert!(recovery.inserts.is_empty());
        let a = log.append(b"a".to_vec()).await.unwrap();
        let b = log.append(b"b".to_vec()).await.unwrap();
        let c = log.append(b"c".to_vec()).await.unwrap();
        assert!(a < b && b < c);
        log.flushed(vec![b]);
        drop(log);
        let (log, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"a".to_vec(), b"c".to_vec()]);
        let d = log.append(b"d".to_vec()).await.unwrap();
        assert!(d > c, "sequence numbers go on after a restart");
    }

    #[tokio::test]
    async fn concurrent_appends_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        let log = Arc::new(log);
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(i.to_le_bytes().to_vec()).await.unwrap() })
            })
            .collect();
        let mut sequences = HashSet::new();
        for task in tasks {
            assert!(sequences.insert(task.await.unwrap()), "every append gets its own sequence number");
        }
        drop(log);
        let (_, recovery) = open(dir.path());
        assert_eq!(recovery.inserts.len(), 200);
    }

    /// Payloads past `WRITER_FRAMES_BYTES` are framed by the writer rather than queued framed:
    /// appended together with small ones, each comes back intact under its own sequence.
    #[tokio::test]
    async fn large_and_small_appends_come_back_under_their_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        let log = Arc::new(log);
        let payloads: Vec<Vec<u8>> = (0..40usize)
            .map(|i| if i % 4 == 0 { vec![i as u8; WRITER_FRAMES_BYTES + 1 + i] } else { i.to_le_bytes().to_vec() })
            .collect();
        let tasks: Vec<_> = payloads
            .iter()
            .map(|payload| {
                let (log, payload) = (log.clone(), payload.clone());
                tokio::spawn(async move { (log.append(payload.clone()).await.unwrap(), payload) })
            })
            .collect();
        let mut appended = BTreeMap::new();
        for task in tasks {
            let (sequence, payload) = task.await.unwrap();
            appended.insert(sequence, payload);
        }
        drop(log);
        let (_, recovery) = open(dir.path());
        let replayed: BTreeMap<u64, Vec<u8>> = recovery.inserts.into_iter().map(|r| (r.sequence, r.payload)).collect();
        assert_eq!(replayed, appended);
    }

    /// An append polled again before its group was written (a timeout or a select around it)
    /// is woken through the waker it was polled with last, not only the first one.
    #[tokio::test]
    async fn an_append_polled_again_is_woken_by_its_latest_waker() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        let mut append = std::pin::pin!(log.append(b"x".to_vec()));
        let mut first_poll = std::task::Context::from_waker(Waker::noop());
        assert!(append.as_mut().poll(&mut first_poll).is_pending(), "the record waits for its group");
        // The timer is polled first: an append never woken does not get a last poll in time.
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("the append was never woken"),
            sequence = append => assert!(sequence.is_ok(), "{sequence:?}"),
        }
    }

    /// An append whose request went away before it returned is not replayed, and does not
    /// keep its segment: nobody was told it was logged, and nobody buffered it.
    #[tokio::test]
    async fn an_append_dropped_before_it_returns_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InsertLog::open(dir.path(), 1 << 30).unwrap();
        {
            let mut append = std::pin::pin!(log.append(b"given up".to_vec()));
            let mut first_poll = std::task::Context::from_waker(Waker::noop());
            assert!(append.as_mut().poll(&mut first_poll).is_pending(), "the record is queued");
        }
        // Past the size at which a segment whose inserts were all flushed is closed.
        let filler = log.append(vec![0; DRAINED_SEGMENT_BYTES as usize]).await.unwrap();
        log.flushed(vec![filler]);
        let deleted = async {
            while log.bytes() >= DRAINED_SEGMENT_BYTES {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), deleted).await;
        assert!(waited.is_ok(), "the segment that held it was deleted ({} bytes left)", log.bytes());
        drop(log);
        let (_, recovery) = open(dir.path());
        assert!(recovery.inserts.is_empty(), "the given-up insert is not replayed");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        log.append(b"kept".to_vec()).await.unwrap();
        log.append(b"torn record".to_vec()).await.unwrap();
        drop(log);
        let segment = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).max().unwrap();
        let len = std::fs::metadata(&segment).unwrap().len();
        // A crash in the middle of the second record's payload.
        OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 3).unwrap();
        let (log, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"kept".to_vec()]);
        assert_eq!(recovery.cut_bytes, (HEADER_BYTES + 8 + b"torn record".len() - 3) as u64);
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), (HEADER_BYTES + 8 + 4) as u64, "the file was cut");
        log.append(b"after".to_vec()).await.unwrap();
        drop(log);
        let (_, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"kept".to_vec(), b"after".to_vec()], "the cut log takes new records");
    }

    /// A log written before records carried XXH32 checksums (blake3 ones, plain kinds) is
    /// replayed after an upgrade: its unflushed inserts are acknowledged ones.
    #[tokio::test]
    async fn records_with_blake3_checksums_are_replayed() {
        fn blake3_frame(buffer: &mut Vec<u8>, kind: u8, payload: &[u8]) {
            let hash = blake3::Hasher::new().update(&[kind]).update(payload).finalize();
            buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&hash.as_bytes()[..8]);
            buffer.push(kind);
            buffer.extend_from_slice(payload);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for (sequence, payload) in [(0u64, b"flushed".as_slice()), (1, b"pending")] {
            blake3_frame(&mut old, KIND_INSERT, &[&sequence.to_le_bytes(), payload].concat());
        }
        blake3_frame(&mut old, KIND_FLUSHED, &0u64.to_le_bytes());
        std::fs::write(dir.path().join(format!("{:020}.wal", 1)), &old).unwrap();
        let (log, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"pending".to_vec()]);
        assert_eq!(recovery.cut_bytes, 0);
        log.append(b"new".to_vec()).await.unwrap();
        drop(log);
        let (_, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"pending".to_vec(), b"new".to_vec()], "old and new records side by side");
    }

    #[tokio::test]
    async fn a_corrupt_record_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        log.append(b"first".to_vec()).await.unwrap();
        log.append(b"second".to_vec()).await.unwrap();
        drop(log);
        let segment = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).max().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        let (_, recovery) = open(dir.path());
        assert_eq!(payloads(&recovery), [b"first".to_vec()], "a record failing its checksum is not applied");
    }

    #[tokio::test]
    async fn a_full_log_refuses_and_flushed_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InsertLog::open(dir.path(), 100).unwrap();
        let a = log.append(vec![0; 40]).await.unwrap();
        assert!(matches!(log.append(vec![0; 60]).await, Err(LogError::Full { limit: 100, .. })));
        log.flushed(vec![a]);
        drop(log);
        let (log, recovery) = InsertLog::open(dir.path(), 100).unwrap();
        assert!(recovery.inserts.is_empty());
        log.append(vec![0; 60]).await.unwrap();
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments, 1, "the segment whose inserts were all flushed is gone");
    }
}
