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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;
use twox_hash::XxHash32;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// A segment whose inserts were all flushed is closed (and deleted) past this size.
const DRAINED_SEGMENT_BYTES: u64 = 1024 * 1024;

/// Appends waiting together are written and fsynced together, up to this many bytes at a time.
const GROUP_BYTES: usize = 16 * 1024 * 1024;

/// How long a group waits for more appends when the last group held several. A longer wait
/// means fewer fsyncs (each a journal commit for the kernel) but requests that wait on the
/// group longer, while the CPU idles if too few others are left to run. Measured with 256
/// clients of 10-row inserts, as the rate's share of the same round's `GET /ping` ceiling
/// (`tandem-bench --small-insert-rounds`): 1 ms gave medians of 0.33-0.34 in 4 batches of 3
/// rounds, 500 µs 0.34-0.40 in the batches interleaved with them (and the machine was busier:
/// 91-96% against 90-95%), 250 µs 0.31-0.33 against 500 µs's 0.34-0.36. At 500 µs a group held
/// about 44 inserts (885 fsyncs a second at 39k inserts/s; 1 ms: about 77, 583 a second).
/// Earlier, when an insert cost half again as much CPU, 1 ms had been the best: no wait gave
/// 40.5-42.3k inserts/s (an fsync for every few), 500 µs 43-46k, 1 ms 44.6-47k, 2 ms 41.5-45k;
/// ending the wait early once appends pause for 100 µs gave 42-43k. The less CPU an insert
/// takes, the more of its time is the wait.
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

enum Command {
    Append { payload: Vec<u8>, reply: oneshot::Sender<Result<u64, LogError>> },
    Flushed { sequences: Vec<u64> },
}

/// The write-ahead log. Cheap to share: appends go to one writer thread.
pub struct InsertLog {
    /// None once dropped: the writer then finishes what it was sent and stops.
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Bytes of the segments on disk (what `async_insert_max_log_bytes` bounds).
    bytes: Arc<AtomicU64>,
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
        let mut pending: HashMap<u64, u64> = HashMap::new();
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
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            file: None,
            segment: next_segment,
            segment_bytes: 0,
            sizes,
            pending,
            per_segment,
            next_sequence,
            max_bytes,
            bytes: Arc::new(AtomicU64::new(0)),
            failed: None,
        };
        writer.delete_finished_segments();
        writer.open_segment()?;
        let bytes = writer.bytes.clone();
        let (commands, receiver) = mpsc::channel();
        let writer = std::thread::Builder::new().name("insert-log".into()).spawn(move || writer.run(receiver))?;
        Ok((InsertLog { commands: Some(commands), writer: Some(writer), bytes }, recovery))
    }

    /// Appends one insert and returns its sequence number once it is on disk (fsynced,
    /// together with whatever else was waiting).
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .as_ref()
            .ok_or_else(|| LogError::Io("the log is closed".into()))?
            .send(Command::Append { payload, reply })
            .map_err(|_| LogError::Io("the log writer has stopped".into()))?;
        answer.await.map_err(|_| LogError::Io("the log writer has stopped".into()))?
    }

    /// Marks inserts as registered elsewhere: their records are no longer needed.
    pub fn flushed(&self, sequences: Vec<u64>) {
        if let (false, Some(commands)) = (sequences.is_empty(), &self.commands) {
            let _ = commands.send(Command::Flushed { sequences });
        }
    }

    /// Bytes of log on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Closing the log lets the writer finish what it was sent.
impl Drop for InsertLog {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: Option<File>,
    segment: u64,
    segment_bytes: u64,
    /// Size of every segment on disk, the current one included.
    sizes: BTreeMap<u64, u64>,
    /// The segment of every insert not yet flushed.
    pending: HashMap<u64, u64>,
    per_segment: BTreeMap<u64, usize>,
    next_sequence: u64,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    /// After a failed write or fsync nothing more is appended: what reached the disk is unknown.
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut concurrent = false;
        while let Ok(first) = commands.recv() {
            // While appends come from many requests at once, the group waits a little for more:
            // each fsync costs the kernel a journal commit, and without the wait a group held
            // about 6 inserts at 16,000 inserts/s (2,400 fsyncs a second). A lone writer, whose
            // groups hold one append, never waits. The writer sleeps rather than waiting on the
            // channel: a waiting receiver is woken by every send, a context switch per insert
            // (a tenth of the node's CPU at 22,000 inserts/s), a sleeping one by none.
            if concurrent {
                std::thread::sleep(GROUP_LINGER);
            }
            let mut group = vec![first];
            let mut group_bytes = 0;
            while group_bytes < GROUP_BYTES {
                let Ok(command) = commands.try_recv() else { break };
                if let Command::Append { payload, .. } = &command {
                    group_bytes += payload.len();
                }
                group.push(command);
            }
            concurrent = group.iter().filter(|c| matches!(c, Command::Append { .. })).count() > 1;
            self.write_group(group);
        }
    }

    fn write_group(&mut self, group: Vec<Command>) {
        let mut buffer = Vec::new();
        let mut replies = Vec::new();
        let mut flushed = Vec::new();
        let held = self.sizes.values().sum::<u64>();
        for command in group {
            match command {
                Command::Append { payload, reply } => {
                    if let Some(reason) = &self.failed {
                        let _ = reply.send(Err(LogError::Io(reason.clone())));
                        continue;
                    }
                    let needed = (HEADER_BYTES + 8 + payload.len()) as u64;
                    let total = held + buffer.len() as u64;
                    if total + needed > self.max_bytes {
                        let _ = reply.send(Err(LogError::Full { held: total, needed, limit: self.max_bytes }));
                        continue;
                    }
                    let sequence = self.next_sequence;
                    self.next_sequence += 1;
                    let mut body = Vec::with_capacity(8 + payload.len());
                    body.extend_from_slice(&sequence.to_le_bytes());
                    body.extend_from_slice(&payload);
                    frame(&mut buffer, KIND_INSERT, &body);
                    replies.push((sequence, reply));
                }
                Command::Flushed { sequences } => flushed.extend(sequences),
            }
        }
        if !flushed.is_empty() && self.failed.is_none() {
            let body: Vec<u8> = flushed.iter().flat_map(|s| s.to_le_bytes()).collect();
            frame(&mut buffer, KIND_FLUSHED, &body);
        }
        if !buffer.is_empty() && self.failed.is_none() {
            // Only appends need the fsync: a lost `Flushed` record replays inserts that were
            // registered, and registration deduplicates them.
            let result = self.write(&buffer, !replies.is_empty());
            if let Err(e) = result {
                let reason = format!("{e} (in {})", self.dir.display());
                tracing::error!(error = %reason, "the insert log failed; asynchronous inserts are refused until restart");
                self.failed = Some(reason);
            }
        }
        for (sequence, reply) in replies {
            let answer = match &self.failed {
                Some(reason) => Err(LogError::Io(reason.clone())),
                None => {
                    self.pending.insert(sequence, self.segment);
                    *self.per_segment.entry(self.segment).or_default() += 1;
                    Ok(sequence)
                }
            };
            let _ = reply.send(answer);
        }
        for sequence in flushed {
            if let Some(segment) = self.pending.remove(&sequence)
                && let Some(count) = self.per_segment.get_mut(&segment)
            {
                *count = count.saturating_sub(1);
            }
        }
        // A full segment is closed; so is one whose inserts were all flushed, once it is big
        // enough to be worth deleting (its bytes count against the limit until then).
        let drained = self.per_segment.get(&self.segment).is_none_or(|&count| count == 0);
        let rotate = self.segment_bytes >= SEGMENT_BYTES || (drained && self.segment_bytes >= DRAINED_SEGMENT_BYTES);
        if rotate
            && self.failed.is_none()
            && let Err(e) = self.open_segment()
        {
            self.failed = Some(format!("cannot start a new log segment: {e}"));
        }
        self.delete_finished_segments();
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
        self.bytes.store(self.sizes.values().sum(), Ordering::Relaxed);
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

fn frame(buffer: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let kind = kind | XXH32_CHECKSUM;
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&checksum(kind, payload).to_le_bytes());
    buffer.push(kind);
    buffer.extend_from_slice(payload);
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
