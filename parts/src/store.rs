use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{PartError, PartId};

/// The local, content-addressed directory of part files.
///
/// Layout under the root: `parts/<id>.parquet` for parts, `tmp/` for writes in progress,
/// `quarantine/` for files that failed verification (kept for inspection, never served).
/// All methods block on disk I/O: call them from a blocking thread.
#[derive(Debug)]
pub struct LocalPartStore {
    parts: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    next_tmp: AtomicU64,
}

/// The result of checking a stored part against its id.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    Valid,
    Missing,
    /// The file did not hash to its id; it has been moved to the quarantine directory.
    Corrupt {
        reason: String,
        moved_to: PathBuf,
    },
}

impl LocalPartStore {
    /// Opens (creating if needed) the store under `root`, discarding writes a crash left
    /// unfinished in `tmp/`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, PartError> {
        let root = root.as_ref();
        let store = LocalPartStore {
            parts: root.join("parts"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
            next_tmp: AtomicU64::new(0),
        };
        for dir in [&store.parts, &store.tmp, &store.quarantine] {
            fs::create_dir_all(dir).map_err(|e| PartError::io(dir, e))?;
        }
        for entry in fs::read_dir(&store.tmp).map_err(|e| PartError::io(&store.tmp, e))? {
            let path = entry.map_err(|e| PartError::io(&store.tmp, e))?.path();
            fs::remove_file(&path).map_err(|e| PartError::io(&path, e))?;
        }
        Ok(store)
    }

    pub fn path(&self, id: &PartId) -> PathBuf {
        self.parts.join(format!("{id}.parquet"))
    }

    pub fn contains(&self, id: &PartId) -> bool {
        self.path(id).exists()
    }

    /// Stores `bytes` as part `id` durably: temp file, fsync, rename, fsync of the directory.
    /// Refuses bytes that do not hash to `id`. Writing a part that is already stored is a no-op.
    pub fn write(&self, id: &PartId, bytes: &[u8]) -> Result<PathBuf, PartError> {
        let actual = PartId::of_bytes(bytes);
        if actual != *id {
            return Err(PartError::Corrupt {
                id: id.to_string(),
                path: self.path(id),
                reason: format!("the bytes to store hash to {actual}"),
            });
        }
        let target = self.path(id);
        if target.exists() {
            return Ok(target);
        }
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{id}.{}.{n}.tmp", std::process::id()));
        let mut file = File::create(&tmp).map_err(|e| PartError::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| PartError::io(&tmp, e))?;
        file.sync_all().map_err(|e| PartError::io(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, &target).map_err(|e| PartError::io(&target, e))?;
        sync_dir(&self.parts)?;
        Ok(target)
    }

    /// Starts receiving a part chunk by chunk (from a peer or an object store). The bytes are
    /// hashed as they arrive; [`PartWriter::finish`] makes the part visible only if they hash
    /// to `id`.
    pub fn begin_write(&self, id: &PartId) -> Result<PartWriter<'_>, PartError> {
        self.begin(Some(*id))
    }

    /// Starts writing a new part whose id is not known until its last byte (a merge writing
    /// its result): [`PartWriter::finish`] names it by its hash.
    pub fn begin_new_part(&self) -> Result<PartWriter<'_>, PartError> {
        self.begin(None)
    }

    fn begin(&self, expected: Option<PartId>) -> Result<PartWriter<'_>, PartError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let name = expected.map_or_else(|| "new".to_string(), |id| id.to_string());
        let tmp = self.tmp.join(format!("{name}.{}.{n}.tmp", std::process::id()));
        // Readable too: a scratch copy is read through this handle once its name is gone.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| PartError::io(&tmp, e))?;
        Ok(PartWriter { store: self, expected, tmp, file: Some(file), hasher: blake3::Hasher::new(), bytes: 0 })
    }

    /// Reads a part and checks its hash. A corrupt file is quarantined and reported.
    pub fn read(&self, id: &PartId) -> Result<Bytes, PartError> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PartError::NotFound { id: id.to_string() });
            }
            Err(e) => return Err(PartError::io(&path, e)),
        };
        let actual = PartId::of_bytes(&bytes);
        if actual != *id {
            let reason = format!("its bytes hash to {actual}");
            let moved_to = self.quarantine(id)?;
            return Err(PartError::Corrupt { id: id.to_string(), path: moved_to, reason });
        }
        Ok(Bytes::from(bytes))
    }

    /// Hashes the stored file (streaming, without holding it in memory) and compares with `id`.
    pub fn verify(&self, id: &PartId) -> Result<VerifyOutcome, PartError> {
        let path = self.path(id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VerifyOutcome::Missing);
            }
            Err(e) => return Err(PartError::io(&path, e)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| PartError::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = PartId::from_hash(hasher.finalize());
        if actual == *id {
            return Ok(VerifyOutcome::Valid);
        }
        let moved_to = self.quarantine(id)?;
        Ok(VerifyOutcome::Corrupt { reason: format!("its bytes hash to {actual}"), moved_to })
    }

    /// Moves a part's file into `quarantine/`, under a name that never collides.
    pub fn quarantine(&self, id: &PartId) -> Result<PathBuf, PartError> {
        let from = self.path(id);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let to = self.quarantine.join(format!("{id}.{stamp}.parquet"));
        fs::rename(&from, &to).map_err(|e| PartError::io(&from, e))?;
        sync_dir(&self.parts)?;
        Ok(to)
    }

    /// Deletes a part's file. Ok if it is already gone.
    pub fn remove(&self, id: &PartId) -> Result<(), PartError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PartError::io(&path, e)),
        }
    }

    /// Ids of every stored part file (files with other names are ignored).
    pub fn list(&self) -> Result<Vec<PartId>, PartError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.parts).map_err(|e| PartError::io(&self.parts, e))? {
            let name = entry.map_err(|e| PartError::io(&self.parts, e))?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".parquet")).and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// A part being received or written. Dropping it without [`finish`](Self::finish) discards the
/// bytes. As an [`std::io::Write`] it takes a Parquet writer's output.
pub struct PartWriter<'a> {
    store: &'a LocalPartStore,
    /// The id the bytes must hash to; None for a new part, named by its hash.
    expected: Option<PartId>,
    tmp: PathBuf,
    file: Option<File>,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl PartWriter<'_> {
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), PartError> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        let file = self.file.as_mut().expect("file open until finish");
        file.write_all(chunk).map_err(|e| PartError::io(&self.tmp, e))
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// The id of the bytes written so far.
    pub fn id_so_far(&self) -> PartId {
        PartId::from_hash(self.hasher.finalize())
    }

    /// Verifies the hash, then fsyncs, renames into place and fsyncs the directory. On a
    /// mismatch nothing becomes visible and the error says what the bytes hashed to.
    pub fn finish(self) -> Result<PathBuf, PartError> {
        self.finish_unsynced()?.sync()
    }

    /// Verifies the hash and renames into place, without waiting for the disk: the part can be
    /// read at once and is durable after [`UnsyncedPart::sync`]. Only for a copy the cluster
    /// does not depend on until then (a fetched replica, recorded as a holder after the
    /// sync): a crash before it can leave a torn file, which start-up verification quarantines.
    pub fn finish_unsynced(mut self) -> Result<UnsyncedPart, PartError> {
        let actual = self.check()?;
        let file = self.file.take().expect("file open until finish");
        let target = self.store.path(&actual);
        fs::rename(&self.tmp, &target).map_err(|e| PartError::io(&target, e))?;
        Ok(UnsyncedPart { file, path: target, dir: self.store.parts.clone() })
    }

    /// Verifies the hash and hands over the file, open and already unlinked, for this node's
    /// own use and no one else's (a merge's source read from the bucket): it never becomes a
    /// part of the store, its bytes last while it is open, and a crash meanwhile leaves nothing
    /// (`tmp/` is cleared on start).
    pub fn finish_scratch(mut self) -> Result<File, PartError> {
        self.check()?;
        let file = self.file.take().expect("file open until finish");
        fs::remove_file(&self.tmp).map_err(|e| PartError::io(&self.tmp, e))?;
        Ok(file)
    }

    /// The id of the bytes written, if they hash to the id expected.
    fn check(&self) -> Result<PartId, PartError> {
        let actual = self.id_so_far();
        match self.expected {
            Some(expected) if actual != expected => Err(PartError::Corrupt {
                id: expected.to_string(),
                path: self.tmp.clone(),
                reason: format!("the {} bytes received hash to {actual}", self.bytes),
            }),
            _ => Ok(actual),
        }
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    /// Every write reaches the file at once; making it durable is [`PartWriter::finish`]'s.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A part file in place but perhaps not on disk yet (see [`PartWriter::finish_unsynced`]).
pub struct UnsyncedPart {
    file: File,
    path: PathBuf,
    dir: PathBuf,
}

impl UnsyncedPart {
    /// Fsyncs the file and the directory that names it.
    pub fn sync(self) -> Result<PathBuf, PartError> {
        self.file.sync_all().map_err(|e| PartError::io(&self.path, e))?;
        sync_dir(&self.dir)?;
        Ok(self.path)
    }
}

impl Drop for PartWriter<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), PartError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| PartError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use super::*;

    #[test]
    fn write_read_and_refuse_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let id = PartId::of_bytes(b"part bytes");
        store.write(&id, b"part bytes").unwrap();
        assert_eq!(&store.read(&id).unwrap()[..], b"part bytes");
        assert_eq!(store.list().unwrap(), vec![id]);
        assert!(store.write(&PartId::of_bytes(b"other"), b"part bytes").is_err());
    }

    #[test]
    fn corrupt_files_are_quarantined_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let id = PartId::of_bytes(b"part bytes");
        store.write(&id, b"part bytes").unwrap();
        fs::write(store.path(&id), b"part bytez").unwrap();
        let VerifyOutcome::Corrupt { moved_to, .. } = store.verify(&id).unwrap() else {
            panic!("corruption not detected")
        };
        assert!(moved_to.exists());
        assert!(!store.contains(&id));
        assert_eq!(store.verify(&id).unwrap(), VerifyOutcome::Missing);
    }

    #[test]
    fn received_parts_become_visible_only_if_they_hash_to_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let id = PartId::of_bytes(b"part bytes");
        let mut bad = store.begin_write(&id).unwrap();
        bad.append(b"part ").unwrap();
        bad.append(b"bytez").unwrap();
        assert!(matches!(bad.finish(), Err(PartError::Corrupt { .. })));
        assert!(!store.contains(&id));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "refused bytes leave nothing behind");
        let mut good = store.begin_write(&id).unwrap();
        good.append(b"part ").unwrap();
        good.append(b"bytes").unwrap();
        good.finish().unwrap();
        assert_eq!(&store.read(&id).unwrap()[..], b"part bytes");
    }

    #[test]
    fn a_new_part_is_named_by_its_hash_when_it_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let mut new = store.begin_new_part().unwrap();
        new.write_all(b"merged ").unwrap();
        new.write_all(b"bytes").unwrap();
        let id = new.id_so_far();
        assert_eq!(id, PartId::of_bytes(b"merged bytes"));
        assert!(!store.contains(&id), "not visible before it is finished");
        assert_eq!(new.finish().unwrap(), store.path(&id));
        assert_eq!(&store.read(&id).unwrap()[..], b"merged bytes");
        let mut abandoned = store.begin_new_part().unwrap();
        abandoned.write_all(b"half a part").unwrap();
        drop(abandoned);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "an abandoned part leaves nothing");
        assert_eq!(store.list().unwrap(), vec![id]);
    }

    #[test]
    fn a_scratch_copy_is_checked_and_never_becomes_a_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let id = PartId::of_bytes(b"part bytes");
        let mut bad = store.begin_write(&id).unwrap();
        bad.append(b"part bytez").unwrap();
        assert!(matches!(bad.finish_scratch(), Err(PartError::Corrupt { .. })));
        let mut good = store.begin_write(&id).unwrap();
        good.append(b"part bytes").unwrap();
        let mut file = good.finish_scratch().unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut read = String::new();
        file.read_to_string(&mut read).unwrap();
        assert_eq!(read, "part bytes", "the handle reads what was written");
        assert!(!store.contains(&id) && store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "nothing is left on disk");
    }

    #[test]
    fn read_detects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPartStore::open(dir.path()).unwrap();
        let id = PartId::of_bytes(b"part bytes");
        store.write(&id, b"part bytes").unwrap();
        fs::write(store.path(&id), b"part").unwrap();
        assert!(matches!(store.read(&id), Err(PartError::Corrupt { .. })));
    }
}
