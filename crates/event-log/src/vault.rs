//! The key vault: per-person, per-day content keys, so that a person's
//! content can be destroyed without touching the hash-chained log
//! (crypto-shredding; `docs/privacy.md`).
//!
//! A record's personal content is sealed (XChaCha20-Poly1305) under the keys
//! of the people it is about, for the day it was recorded; the sealed bytes
//! are part of the payload the chain covers, so destroying a key changes no
//! stored record and the chain still verifies. The plaintext never reaches
//! the disk.
//!
//! Keys live apart from the log, in `<log>/vault/keys`: length-prefixed,
//! checksummed entries. New keys are appended before the group whose
//! records they seal is written, and synced while it is. Erasure rewrites the file without the
//! destroyed keys (write, sync, rename, sync the directory), so no file of
//! the data directory holds them afterwards; a key deleted inside sled would
//! linger in its log until the page was rewritten.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::record::{from_hex, to_hex};
use crate::sharded::ShardedMap;

/// Names one content key: 16 random bytes, never reused, so content sealed
/// before an erasure stays unreadable when the person writes again.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// Lowercase hexadecimal, 32 characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 32 hexadecimal characters.
    pub fn from_hex(text: &str) -> Option<KeyId> {
        Some(KeyId(from_hex(text)?.try_into().ok()?))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// Content sealed under the keys of the people it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The keys, in the order they were combined. All are needed to open it.
    pub key_ids: Vec<KeyId>,
    /// XChaCha20 nonce.
    pub nonce: [u8; 24],
    /// Ciphertext with its Poly1305 tag.
    pub ciphertext: Vec<u8>,
}

/// Why sealed content could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    /// The keys are there but the ciphertext, nonce or key list does not
    /// authenticate: the stored bytes were altered.
    #[error("sealed content does not authenticate (altered ciphertext, nonce or key list)")]
    Tampered,
    /// Nothing to seal for: content needs at least one subject.
    #[error("sealed content needs at least one subject")]
    NoSubject,
}

/// One key as the vault file (or a store's keys table) holds it.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) subject: Arc<str>,
    pub(crate) day: u32,
    pub(crate) id: KeyId,
    pub(crate) key: [u8; 32],
}

/// An erasure a store that keeps the keys must carry out where it keeps
/// them (every node's keys, not only those this one knows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Erasure {
    /// Every key of a subject.
    Subject(String),
    /// The keys of subjects starting with the prefix, for days before `day`.
    Before { prefix: String, day: u32 },
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(2 + self.subject.len() + 4 + 16 + 32);
        let len = u16::try_from(self.subject.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&self.subject.as_bytes()[..usize::from(len)]);
        body.extend_from_slice(&self.day.to_be_bytes());
        body.extend_from_slice(&self.id.0);
        body.extend_from_slice(&self.key);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body)[..8]);
    }

    /// The entry at the start of `bytes` and its length, or `None` at a torn
    /// or damaged tail.
    fn decode(bytes: &[u8]) -> Option<(Entry, usize)> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let body = bytes.get(4..4 + len)?;
        let check = bytes.get(4 + len..4 + len + 8)?;
        if Sha256::digest(body)[..8] != *check {
            return None;
        }
        let subject_len = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
        let subject = std::str::from_utf8(body.get(2..2 + subject_len)?).ok()?;
        let rest = body.get(2 + subject_len..)?;
        if rest.len() != 4 + 16 + 32 {
            return None;
        }
        Some((
            Entry {
                subject: Arc::from(subject),
                day: u32::from_be_bytes(rest[..4].try_into().ok()?),
                id: KeyId(rest[4..20].try_into().ok()?),
                key: rest[20..52].try_into().ok()?,
            },
            4 + len + 8,
        ))
    }
}

/// The key each subject's content of each day is sealed under, by day and
/// then subject: a lookup borrows the subject (no string is made per seal),
/// and the subject's text is shared with its entry.
#[derive(Default)]
struct Current(HashMap<u32, ShardedMap<Arc<str>, KeyId>>);

impl Current {
    fn get(&self, subject: &str, day: u32) -> Option<KeyId> {
        self.0.get(&day)?.get(subject).copied()
    }

    fn insert(&mut self, entry: &Entry) {
        self.0
            .entry(entry.day)
            .or_default()
            .insert(entry.subject.clone(), entry.id);
    }

    fn remove(&mut self, entry: &Entry) {
        if let Some(day) = self.0.get_mut(&entry.day) {
            day.remove(&*entry.subject);
            if day.is_empty() {
                self.0.remove(&entry.day);
            }
        }
    }
}

#[derive(Default)]
struct Keys {
    /// Every live key by id (sharded: a million-key map growing at once
    /// would hold the vault's lock, and every seal, for a long while).
    by_id: ShardedMap<KeyId, Entry>,
    /// The key content of `(subject, day)` is sealed under now.
    current: Current,
    /// Keys made since the last sync, in order.
    pending: Vec<KeyId>,
    /// Erasures not yet carried out by the store that keeps the keys.
    erasures: Vec<Erasure>,
}

/// Per-person content keys; see the module docs.
pub struct KeyVault {
    keys: Mutex<Keys>,
    /// Append handle of the vault file (none in memory). Taken before
    /// `keys` by whoever writes the file, and held while it syncs, so that
    /// sealing (which needs only `keys`) never waits for the disk.
    file: Mutex<Option<File>>,
    /// `<log>/vault`, or `None` for a vault that lives in memory.
    dir: Option<PathBuf>,
    /// Kept by its store (PostgreSQL's keys table): new keys and erasures
    /// are queued for the store to write with its next group.
    kept_by_store: bool,
    /// Distinguishes nonces made in the same instant by this process.
    counter: AtomicU64,
    syncs: AtomicU64,
    /// Random bytes from the operating system, drawn 2 KiB at a time: one
    /// `getrandom` call per 64 keys, not one per key.
    entropy: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault")
            .field("dir", &self.dir)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// A vault file as [`KeyVault::read`] found it.
pub(crate) struct Loaded {
    keys: Keys,
    /// Where the last whole entry ends.
    valid: u64,
    /// The file that was read, or `None` when there was none.
    read: Option<FileStamp>,
}

/// Which file a file is, and how long: for files only ever appended to,
/// cut back by their one writer, or replaced whole by a rename (the vault
/// file, a projection snapshot), the same stamp means the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    file: (u64, u64),
}

impl FileStamp {
    /// The stamp of a file whose metadata is `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            file: (meta.dev(), meta.ino()),
        }
    }

    /// The stamp of the file at `path`, or `None` when there is none (or
    /// its metadata cannot be read).
    pub fn at(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path)
            .ok()
            .map(|meta| FileStamp::of(&meta))
    }
}

impl Loaded {
    /// Finishes the open of the vault read from `dir`, by its only writer
    /// (a store holding its directory's lock): read again if the file
    /// changed since (another process that held the lock then may have
    /// appended keys), its torn tail cut, and opened for appending.
    pub(crate) fn open(self, dir: &Path) -> std::io::Result<KeyVault> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(KEYS_FILE);
        let loaded = if FileStamp::at(&path) == self.read {
            self
        } else {
            KeyVault::read(dir)?
        };
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if loaded.read.is_some_and(|read| loaded.valid < read.len) {
            file.set_len(loaded.valid)?;
            file.sync_all()?;
        }
        File::open(dir)?.sync_all()?;
        Ok(KeyVault {
            keys: Mutex::new(loaded.keys),
            file: Mutex::new(Some(file)),
            dir: Some(dir.to_path_buf()),
            kept_by_store: false,
            counter: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            entropy: Mutex::new(Vec::new()),
        })
    }
}

const KEYS_FILE: &str = "keys";
const KEYS_TMP: &str = "keys.tmp";

impl KeyVault {
    /// A vault that keeps its keys in memory only (the in-memory store's).
    pub fn in_memory() -> KeyVault {
        KeyVault {
            keys: Mutex::new(Keys::default()),
            file: Mutex::new(None),
            dir: None,
            kept_by_store: false,
            counter: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            entropy: Mutex::new(Vec::new()),
        }
    }

    /// Opens (creating if needed) the vault in `dir`. A torn tail, left by
    /// a crash while keys were appended, is cut off: the group those keys
    /// were made for was never synced, so no caller was answered for it.
    pub fn open(dir: &Path) -> std::io::Result<KeyVault> {
        KeyVault::read(dir)?.open(dir)
    }

    /// Reads the vault in `dir` and changes nothing, not even a torn tail
    /// (a missing vault reads as empty): a store reads it on a thread of
    /// its own before it holds its directory's lock, and finishes the open
    /// with [`Loaded::open`] once it does.
    pub(crate) fn read(dir: &Path) -> std::io::Result<Loaded> {
        let mut file = match File::open(dir.join(KEYS_FILE)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loaded {
                    keys: Keys::default(),
                    valid: 0,
                    read: None,
                })
            }
            Err(e) => return Err(e),
        };
        let before = FileStamp::of(&file.metadata()?);
        let mut bytes = Vec::with_capacity(usize::try_from(before.len).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        let mut entries = Vec::new();
        let mut at = 0;
        while let Some((entry, len)) = Entry::decode(&bytes[at..]) {
            entries.push(entry);
            at += len;
        }
        // The maps are sized before they are filled: growing them would
        // move every entry at each doubling.
        let mut per_day: HashMap<u32, usize> = HashMap::new();
        for entry in &entries {
            *per_day.entry(entry.day).or_default() += 1;
        }
        let mut keys = Keys::default();
        keys.by_id.reserve(entries.len());
        for (day, count) in per_day {
            keys.current.0.entry(day).or_default().reserve(count);
        }
        for entry in entries {
            keys.current.insert(&entry);
            keys.by_id.insert(entry.id, entry);
        }
        Ok(Loaded {
            keys,
            valid: at as u64,
            read: Some(FileStamp {
                len: bytes.len() as u64,
                ..before
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// True when the vault holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How often new keys were synced to the vault file.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Seals `plaintext` for the people `subjects` names (each
    /// `"<page>/<psid>"`), under their keys for `day` (days since the Unix
    /// epoch), making any key that does not exist yet. The key ids are bound
    /// to the ciphertext, so a record cannot be re-pointed at other keys.
    pub fn seal(
        &self,
        subjects: &[&str],
        day: u32,
        plaintext: &[u8],
    ) -> Result<Sealed, VaultError> {
        if subjects.is_empty() {
            return Err(VaultError::NoSubject);
        }
        let mut ids = Vec::with_capacity(subjects.len());
        let mut material = Vec::with_capacity(subjects.len());
        {
            let mut keys = self.lock();
            for subject in subjects {
                let id = match keys.current.get(subject, day) {
                    Some(id) => id,
                    None => {
                        let entry = Entry {
                            subject: Arc::from(*subject),
                            day,
                            id: KeyId(uuid::Uuid::new_v4().into_bytes()),
                            key: self.fresh_key(),
                        };
                        let id = entry.id;
                        keys.current.insert(&entry);
                        keys.by_id.insert(id, entry);
                        // Only a vault with a file or a store has keys to sync.
                        if self.dir.is_some() || self.kept_by_store {
                            keys.pending.push(id);
                        }
                        id
                    }
                };
                ids.push(id);
                material.push(keys.by_id[&id].key);
            }
        }
        let cipher = XChaCha20Poly1305::new(&combine(&material).into());
        let nonce = self.nonce();
        let aad = aad(&ids);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Tampered)?;
        Ok(Sealed {
            key_ids: ids,
            nonce,
            ciphertext,
        })
    }

    /// Opens sealed content: `Ok(None)` when one of its keys was destroyed
    /// (the content is erased), an error when the bytes were altered.
    pub fn open_sealed(&self, sealed: &Sealed) -> Result<Option<Vec<u8>>, VaultError> {
        let mut material = Vec::with_capacity(sealed.key_ids.len());
        {
            let keys = self.lock();
            for id in &sealed.key_ids {
                match keys.by_id.get(id) {
                    Some(entry) => material.push(entry.key),
                    None => return Ok(None),
                }
            }
        }
        if material.is_empty() {
            return Err(VaultError::NoSubject);
        }
        let cipher = XChaCha20Poly1305::new(&combine(&material).into());
        let aad = aad(&sealed.key_ids);
        cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Some)
            .map_err(|_| VaultError::Tampered)
    }

    /// Whether every key of `ids` is still there.
    pub fn holds(&self, ids: &[KeyId]) -> bool {
        let keys = self.lock();
        ids.iter().all(|id| keys.by_id.contains_key(id))
    }

    /// 32 bytes from the operating system's random source, for a new key.
    /// Bytes handed out are removed from the pool, never reused.
    fn fresh_key(&self) -> [u8; 32] {
        let mut pool = self.entropy.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 32 {
            let mut fresh = vec![0u8; 2048];
            OsRng.fill_bytes(&mut fresh);
            *pool = fresh;
        }
        let at = pool.len() - 32;
        let mut key = [0u8; 32];
        key.copy_from_slice(&pool[at..]);
        pool[at..].fill(0);
        pool.truncate(at);
        key
    }

    /// 24 nonce bytes: 16 from the thread's CSPRNG (no system call) and a
    /// per-process counter. XChaCha20's long nonce makes random nonces safe.
    fn nonce(&self) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        nonce[16..].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    /// Writes and syncs the keys made since the last call (the writer does
    /// the two halves itself, around a group's write).
    #[cfg(test)]
    pub(crate) fn persist_pending(&self) -> std::io::Result<()> {
        if self.write_pending()? {
            self.sync_file()?;
        }
        Ok(())
    }

    /// Appends the keys made since the last call to the vault file, without
    /// syncing it: a killed process loses nothing written (the page cache
    /// keeps it), a power cut needs [`KeyVault::sync_file`]. Whether
    /// anything was written.
    pub(crate) fn write_pending(&self) -> std::io::Result<bool> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let out = {
            let mut keys = self.lock();
            if keys.pending.is_empty() {
                return Ok(false);
            }
            let mut out = Vec::with_capacity(keys.pending.len() * 96);
            for id in std::mem::take(&mut keys.pending) {
                if let Some(entry) = keys.by_id.get(&id) {
                    entry.encode(&mut out);
                }
            }
            out
        };
        let Some(file) = file.as_mut() else {
            return Ok(false);
        };
        if let Err(e) = file.write_all(&out) {
            // Not written: the keys stay pending for the next group (their
            // own group fails, so nobody was answered for it).
            let mut keys = self.lock();
            let mut at = 0;
            while let Some((entry, len)) = Entry::decode(&out[at..]) {
                keys.pending.push(entry.id);
                at += len;
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Syncs what [`KeyVault::write_pending`] wrote (`fdatasync`).
    pub(crate) fn sync_file(&self) -> std::io::Result<()> {
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = file.as_ref() {
            file.sync_data()?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Destroys every key of `subject`: all content sealed for that person
    /// is unreadable from now on. Returns how many keys were destroyed.
    pub fn erase_subject(&self, subject: &str) -> std::io::Result<usize> {
        self.queue_erasure(Erasure::Subject(subject.to_owned()));
        self.destroy(|e| &*e.subject == subject)
    }

    /// Destroys the keys of every subject starting with `prefix` (a page:
    /// `"<page>/"`) made for a day before `day`. Returns how many.
    pub fn erase_before(&self, prefix: &str, day: u32) -> std::io::Result<usize> {
        self.queue_erasure(Erasure::Before {
            prefix: prefix.to_owned(),
            day,
        });
        self.destroy(|e| e.day < day && e.subject.starts_with(prefix))
    }

    fn queue_erasure(&self, erasure: Erasure) {
        if self.kept_by_store {
            self.lock().erasures.push(erasure);
        }
    }

    /// A vault whose keys its store keeps (PostgreSQL's keys table, shared
    /// by every node of a shard): in memory here; new keys and erasures wait
    /// in [`KeyVault::unsaved`] until the store writes them with a group.
    pub(crate) fn kept_by_store() -> KeyVault {
        KeyVault {
            kept_by_store: true,
            ..KeyVault::in_memory()
        }
    }

    /// What the store must write: keys made and erasures asked since the
    /// last [`KeyVault::saved`].
    pub(crate) fn unsaved(&self) -> (Vec<Entry>, Vec<Erasure>) {
        let keys = self.lock();
        let entries = keys
            .pending
            .iter()
            .filter_map(|id| keys.by_id.get(id).cloned())
            .collect();
        (entries, keys.erasures.clone())
    }

    /// The store wrote these (its transaction committed).
    pub(crate) fn saved(&self, entries: &[Entry], erasures: &[Erasure]) {
        let mut keys = self.lock();
        keys.pending
            .retain(|id| !entries.iter().any(|e| e.id == *id));
        keys.erasures.retain(|e| !erasures.contains(e));
    }

    /// Every live key (to copy a vault into a store that keeps its keys).
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.lock().by_id.values().cloned().collect()
    }

    /// Keys other nodes made, as the store read them.
    pub(crate) fn absorb(&self, entries: Vec<Entry>) {
        let mut keys = self.lock();
        for entry in entries {
            if keys.current.get(&entry.subject, entry.day).is_none() {
                keys.current.insert(&entry);
            }
            keys.by_id.entry(entry.id).or_insert(entry);
        }
    }

    /// Keys destroyed by another node's erasure.
    pub(crate) fn forget(&self, ids: &[KeyId]) {
        let mut keys = self.lock();
        for id in ids {
            if let Some(entry) = keys.by_id.remove(id) {
                if keys.current.get(&entry.subject, entry.day) == Some(*id) {
                    keys.current.remove(&entry);
                }
            }
        }
        keys.pending.retain(|id| !ids.contains(id));
    }

    /// The days for which `subject` has keys (for reports and tests).
    pub fn days_of(&self, subject: &str) -> Vec<u32> {
        let keys = self.lock();
        let mut days: Vec<u32> = keys
            .by_id
            .values()
            .filter(|e| &*e.subject == subject)
            .map(|e| e.day)
            .collect();
        days.sort_unstable();
        days
    }

    fn destroy(&self, doomed: impl Fn(&Entry) -> bool) -> std::io::Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = self.lock();
        let ids: Vec<KeyId> = keys
            .by_id
            .values()
            .filter(|e| doomed(e))
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        for id in &ids {
            if let Some(entry) = keys.by_id.remove(id) {
                keys.current.remove(&entry);
            }
        }
        keys.pending.retain(|id| !ids.contains(id));
        if let Some(dir) = &self.dir {
            // Every live key, pending ones included, into a new file that
            // replaces the old one whole.
            let mut out = Vec::with_capacity(keys.by_id.len() * 96);
            for entry in keys.by_id.values() {
                entry.encode(&mut out);
            }
            let tmp = dir.join(KEYS_TMP);
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(KEYS_FILE))?;
            File::open(dir)?.sync_all()?;
            *file = Some(OpenOptions::new().append(true).open(dir.join(KEYS_FILE))?);
            keys.pending.clear();
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ids.len())
    }
}

/// One key from several: SHA-256 over a label and the keys in order.
fn combine(material: &[[u8; 32]]) -> [u8; 32] {
    if let [only] = material {
        return *only;
    }
    let mut h = Sha256::new();
    h.update(b"baton/content-key/v1");
    for k in material {
        h.update(k);
    }
    h.finalize().into()
}

fn aad(ids: &[KeyId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * ids.len() + 8);
    out.extend_from_slice(b"baton/v1");
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_content_opens_until_a_subject_is_erased() {
        let vault = KeyVault::in_memory();
        let a = vault.seal(&["p/alice"], 10, b"hello alice").unwrap();
        let both = vault.seal(&["p/alice", "p/bob"], 10, b"to both").unwrap();
        let b = vault.seal(&["p/bob"], 10, b"hello bob").unwrap();
        assert_eq!(vault.open_sealed(&a).unwrap().unwrap(), b"hello alice");
        assert_eq!(vault.open_sealed(&both).unwrap().unwrap(), b"to both");
        assert_eq!(vault.erase_subject("p/alice").unwrap(), 1);
        assert_eq!(vault.open_sealed(&a).unwrap(), None);
        assert_eq!(vault.open_sealed(&both).unwrap(), None);
        assert_eq!(vault.open_sealed(&b).unwrap().unwrap(), b"hello bob");
        // Alice writes again: a new key, and the old content stays erased.
        let again = vault.seal(&["p/alice"], 10, b"back").unwrap();
        assert_ne!(again.key_ids, a.key_ids);
        assert_eq!(vault.open_sealed(&again).unwrap().unwrap(), b"back");
        assert_eq!(vault.open_sealed(&a).unwrap(), None);
    }

    #[test]
    fn altered_ciphertext_nonce_or_keys_do_not_open() {
        let vault = KeyVault::in_memory();
        let sealed = vault.seal(&["p/alice"], 1, b"secret").unwrap();
        let other = vault.seal(&["p/bob"], 1, b"other").unwrap();
        let mut c = sealed.clone();
        c.ciphertext[0] ^= 1;
        assert_eq!(vault.open_sealed(&c), Err(VaultError::Tampered));
        let mut n = sealed.clone();
        n.nonce[0] ^= 1;
        assert_eq!(vault.open_sealed(&n), Err(VaultError::Tampered));
        let mut k = sealed.clone();
        k.key_ids = other.key_ids.clone();
        assert_eq!(vault.open_sealed(&k), Err(VaultError::Tampered));
        assert_eq!(vault.seal(&[], 1, b"x"), Err(VaultError::NoSubject));
    }

    #[test]
    fn retention_destroys_only_older_days_of_one_page() {
        let vault = KeyVault::in_memory();
        let old = vault.seal(&["p/alice"], 5, b"old").unwrap();
        let new = vault.seal(&["p/alice"], 9, b"new").unwrap();
        let other_page = vault.seal(&["q/alice"], 5, b"kept").unwrap();
        assert_eq!(vault.erase_before("p/", 9).unwrap(), 1);
        assert_eq!(vault.open_sealed(&old).unwrap(), None);
        assert_eq!(vault.open_sealed(&new).unwrap().unwrap(), b"new");
        assert_eq!(vault.open_sealed(&other_page).unwrap().unwrap(), b"kept");
        assert_eq!(vault.days_of("p/alice"), vec![9]);
    }

    #[test]
    fn keys_survive_a_reopen_and_erased_ones_leave_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let vault = KeyVault::open(dir.path()).unwrap();
            let a = vault.seal(&["p/alice"], 1, b"alice").unwrap();
            let b = vault.seal(&["p/bob"], 1, b"bob").unwrap();
            vault.persist_pending().unwrap();
            assert_eq!(vault.syncs(), 1);
            (a, b)
        };
        let alice_key = {
            let vault = KeyVault::open(dir.path()).unwrap();
            assert_eq!(vault.open_sealed(&a).unwrap().unwrap(), b"alice");
            let key = vault.lock().by_id[&a.key_ids[0]].key;
            vault.erase_subject("p/alice").unwrap();
            key
        };
        let vault = KeyVault::open(dir.path()).unwrap();
        assert_eq!(vault.open_sealed(&a).unwrap(), None);
        assert_eq!(vault.open_sealed(&b).unwrap().unwrap(), b"bob");
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            assert!(!bytes.windows(32).any(|w| w == alice_key));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = {
            let vault = KeyVault::open(dir.path()).unwrap();
            let a = vault.seal(&["p/alice"], 1, b"alice").unwrap();
            vault.persist_pending().unwrap();
            a
        };
        let path = dir.path().join(KEYS_FILE);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 60, 1, 2, 3]).unwrap();
        drop(f);
        let vault = KeyVault::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        assert_eq!(vault.open_sealed(&a).unwrap().unwrap(), b"alice");
    }

    /// A store reads its vault before it holds its directory's lock: the
    /// read changes nothing (a torn tail is cut only by the open that
    /// follows), and keys appended between the read and the open (by a
    /// process that held the lock until then) are read again, not lost.
    #[test]
    fn a_vault_read_before_the_lock_changes_nothing_and_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        assert!(KeyVault::read(dir.path()).unwrap().read.is_none());
        let a = {
            let vault = KeyVault::open(dir.path()).unwrap();
            let a = vault.seal(&["p/alice"], 1, b"alice").unwrap();
            vault.persist_pending().unwrap();
            a
        };
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 60, 1, 2, 3]).unwrap();
        drop(f);
        let torn = std::fs::read(&path).unwrap();
        let read = KeyVault::read(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            torn,
            "the read changed the file"
        );
        let vault = read.open(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            torn.len() as u64 - 7
        );
        assert_eq!(vault.open_sealed(&a).unwrap().unwrap(), b"alice");
        drop(vault);
        // Another writer appends after the read.
        let read = KeyVault::read(dir.path()).unwrap();
        let b = {
            let other = KeyVault::open(dir.path()).unwrap();
            let b = other.seal(&["p/bob"], 1, b"bob").unwrap();
            other.persist_pending().unwrap();
            b
        };
        let vault = read.open(dir.path()).unwrap();
        assert_eq!(vault.len(), 2);
        assert_eq!(vault.open_sealed(&b).unwrap().unwrap(), b"bob");
        assert_eq!(vault.open_sealed(&a).unwrap().unwrap(), b"alice");
        drop(vault);
        // Or puts another file of the same length in its place.
        let elsewhere = tempfile::tempdir().unwrap();
        let c = {
            let other = KeyVault::open(elsewhere.path()).unwrap();
            let a = other.seal(&["p/alice"], 1, b"alice").unwrap();
            let c = other.seal(&["p/carol"], 1, b"carol").unwrap();
            assert!(other.erase_subject("p/alice").is_ok());
            let b = other.seal(&["p/bob"], 1, b"bob").unwrap();
            other.persist_pending().unwrap();
            drop((a, b));
            c
        };
        let replacement = elsewhere.path().join(KEYS_FILE);
        let read = KeyVault::read(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&replacement).unwrap().len(),
            std::fs::metadata(&path).unwrap().len(),
            "the same length"
        );
        let kept = dir.path().join("kept");
        std::fs::copy(&path, &kept).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let vault = read.open(dir.path()).unwrap();
        assert_eq!(vault.open_sealed(&c).unwrap().unwrap(), b"carol");
        assert_eq!(vault.open_sealed(&a).unwrap(), None);
        drop(vault);
        std::fs::rename(&kept, &path).unwrap();
        // Or replaces the file (an erasure's rewrite).
        let read = KeyVault::read(dir.path()).unwrap();
        KeyVault::open(dir.path())
            .unwrap()
            .erase_subject("p/alice")
            .unwrap();
        let vault = read.open(dir.path()).unwrap();
        assert_eq!(vault.len(), 1);
        assert_eq!(vault.open_sealed(&a).unwrap(), None);
        assert_eq!(vault.open_sealed(&b).unwrap().unwrap(), b"bob");
    }
}
