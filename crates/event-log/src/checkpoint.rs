//! Signed checkpoints: an Ed25519 signature over one (position, hash) of the
//! chain, so that anyone holding the public key can tell a log that was
//! rewritten and re-hashed from the one that was signed. It signs and checks;
//! it does not decide when to sign, keep the private key safe, or vouch for
//! records after the last checkpoint (see "Anchoring the chain" in
//! `docs/security.md` for exactly what is and is not detected).
//!
//! * [`CheckpointSigner`] holds a private key (a 32-byte Ed25519 seed) and
//!   signs a [`Head`] as a [`SignedCheckpoint`]; [`write_checkpoint`] stores
//!   it as `<dir>/<position>.json`.
//! * [`PublicKey`] checks a [`SignedCheckpoint`]'s signature
//!   ([`SignedCheckpoint::verify`]); [`Anchors::verified`] does so for a set of
//!   them, and [`verify_anchored`] / [`verify_ndjson_anchored`] walk the whole
//!   chain from position 1 (the same checks as [`crate::verify`]) and require
//!   the record at each checkpoint's position to carry the signed hash.
//!
//! Key files hold 64 hexadecimal characters (and an optional newline): the
//! seed for the private key (mode 0600, refused when group or others may
//! read it), the public key for the public one.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ChainFault, VerifyError};
use crate::ndjson::verify_ndjson_with;
use crate::record::{from_hex, to_hex, ChainHash, Head};
use crate::store::EventStore;
use crate::verify::{verify_with, ChainVerifier, VerifyReport};

/// Opens the bytes a checkpoint signature covers, so that a signature made
/// for anything else (another protocol, a later format) never verifies as a
/// checkpoint. A format change means a new prefix.
pub const CHECKPOINT_DOMAIN: &[u8] = b"baton-checkpoint-v1";

/// A claim about a log: "the record at `position` has hash `hash`", made at
/// `at_ms` by the holder of the key `key_id`. Only meaningful with its
/// signature ([`SignedCheckpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Position of the record the checkpoint vouches for (the head signed).
    pub position: u64,
    /// That record's hash, which covers every record up to it.
    pub hash: ChainHash,
    /// When it was signed: milliseconds since the Unix epoch, from the
    /// signer's clock (informative: it is signed, but nothing checks it).
    pub at_ms: i64,
    /// Fingerprint of the public key that signed it ([`PublicKey::key_id`]).
    pub key_id: String,
}

impl Checkpoint {
    /// The bytes the signature covers (pinned; a unit test snapshots them):
    ///
    /// ```text
    /// [19] "baton-checkpoint-v1"
    /// u64  position          (big-endian)
    /// [32] hash
    /// i64  at_ms             (big-endian, two's complement)
    /// u32  key_id length     (big-endian), then key_id as UTF-8
    /// ```
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 8 + 4 + 16);
        out.extend_from_slice(CHECKPOINT_DOMAIN);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        // A key id longer than 4 GiB cannot come from a file we read whole;
        // saturating keeps this total without a panic path.
        let len = u32::try_from(self.key_id.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out
    }

    /// The position and hash as a [`Head`].
    pub fn head(&self) -> Head {
        Head {
            position: self.position,
            hash: self.hash,
        }
    }
}

/// A [`Checkpoint`] and the Ed25519 signature over its
/// [`Checkpoint::signing_bytes`]. JSON form (see [`SignedCheckpoint::to_json`]):
/// `{"position", "hash", "at_ms", "key_id", "signature"}`, hashes and the
/// signature in lowercase hexadecimal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CheckpointJson", into = "CheckpointJson")]
pub struct SignedCheckpoint {
    /// What was signed. Editing it makes [`SignedCheckpoint::verify`] fail.
    pub checkpoint: Checkpoint,
    signature: [u8; 64],
}

impl SignedCheckpoint {
    /// The signature, 128 lowercase hexadecimal characters.
    pub fn signature_hex(&self) -> String {
        to_hex(&self.signature)
    }

    /// Checks that `key` signed exactly this checkpoint: the key id must be
    /// the key's, and the signature must verify over the signing bytes
    /// (strict Ed25519: no small-order keys, no malleable signatures).
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        let c = &self.checkpoint;
        let expected = key.key_id();
        if c.key_id != expected {
            return Err(CheckpointError::WrongKey {
                position: c.position,
                signed_by: c.key_id.clone(),
                expected,
            });
        }
        key.0
            .verify_strict(&c.signing_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| CheckpointError::BadSignature {
                position: c.position,
                key_id: expected,
            })
    }

    /// Pretty-printed JSON with a trailing newline: what
    /// [`write_checkpoint`] stores.
    pub fn to_json(&self) -> String {
        // Integers and strings only: serializing to a String cannot fail.
        #[allow(clippy::expect_used)]
        let mut text = serde_json::to_string_pretty(self).expect("serialize a checkpoint");
        text.push('\n');
        text
    }

    /// Parses the JSON form. Checks the shape only, not the signature.
    pub fn from_json(bytes: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
        serde_json::from_slice(bytes).map_err(|e| CheckpointError::Malformed {
            reason: e.to_string(),
        })
    }

    /// Reads and parses a checkpoint file (not its signature).
    pub fn read_file(path: &Path) -> Result<SignedCheckpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::File {
            path: path.to_owned(),
            source,
        })?;
        SignedCheckpoint::from_json(&bytes)
    }
}

/// The JSON shape of a [`SignedCheckpoint`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointJson {
    position: u64,
    hash: String,
    at_ms: i64,
    key_id: String,
    signature: String,
}

impl From<SignedCheckpoint> for CheckpointJson {
    fn from(s: SignedCheckpoint) -> CheckpointJson {
        CheckpointJson {
            position: s.checkpoint.position,
            hash: s.checkpoint.hash.to_hex(),
            at_ms: s.checkpoint.at_ms,
            key_id: s.checkpoint.key_id,
            signature: to_hex(&s.signature),
        }
    }
}

impl TryFrom<CheckpointJson> for SignedCheckpoint {
    type Error = String;

    fn try_from(j: CheckpointJson) -> Result<SignedCheckpoint, String> {
        let hash = ChainHash::from_hex(&j.hash).ok_or("hash is not 64 hexadecimal digits")?;
        let signature = from_hex(&j.signature)
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or("signature is not 128 hexadecimal digits")?;
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint {
                position: j.position,
                hash,
                at_ms: j.at_ms,
                key_id: j.key_id,
            },
            signature,
        })
    }
}

/// An Ed25519 public key that checks checkpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 64 hexadecimal characters (surrounding whitespace ignored).
    /// Refuses bytes that are not a point of the curve, and small-order
    /// ("weak") keys, for which a signature proves nothing.
    pub fn from_hex(text: &str) -> Result<PublicKey, CheckpointError> {
        let bad = |reason: &str| CheckpointError::BadKey {
            what: "public key",
            reason: reason.to_owned(),
        };
        let bytes: [u8; 32] = from_hex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("expected 64 hexadecimal characters"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad("the bytes are not an Ed25519 public key"))?;
        if key.is_weak() {
            return Err(bad("a small-order (weak) Ed25519 key is refused"));
        }
        Ok(PublicKey(key))
    }

    /// Reads a public key file (64 hexadecimal characters).
    pub fn from_file(path: &Path) -> Result<PublicKey, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::File {
            path: path.to_owned(),
            source,
        })?;
        PublicKey::from_hex(&text)
    }

    /// 64 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        to_hex(self.0.as_bytes())
    }

    /// A short fingerprint: the first 8 bytes of SHA-256 of the 32 key bytes,
    /// as 16 lowercase hexadecimal characters. It names the key in
    /// checkpoints and messages; it is not a secret and proves nothing alone.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        to_hex(&digest[..8])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Signs checkpoints with an Ed25519 private key.
///
/// For the server: load it once at start ([`CheckpointSigner::from_file`]),
/// then on each tick `signer.sign(&store.head().await?, now_ms)` and
/// [`write_checkpoint`]`(&data_dir.join("checkpoints"), &signed)`. Signing is
/// pure and takes microseconds; it does not check the chain, so sign only a
/// head the caller vouches for (the server's own writer, or a log that
/// [`crate::verify`] just passed).
///
/// `Debug` shows the key id only; the seed is wiped from memory when the
/// signer is dropped (ed25519-dalek's `zeroize`).
pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    /// A signer from a 32-byte Ed25519 seed (the private key).
    pub fn from_seed(seed: &[u8; 32]) -> CheckpointSigner {
        CheckpointSigner {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// A signer from the seed as 64 hexadecimal characters (surrounding
    /// whitespace ignored).
    pub fn from_seed_hex(text: &str) -> Result<CheckpointSigner, CheckpointError> {
        let seed: [u8; 32] = from_hex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| CheckpointError::BadKey {
                what: "private key",
                reason: "expected 64 hexadecimal characters (the Ed25519 seed)".into(),
            })?;
        Ok(CheckpointSigner::from_seed(&seed))
    }

    /// Reads a private key file: 64 hexadecimal characters. On Unix the file
    /// must not be readable, writable or executable by group or others (as
    /// `ssh` insists for its keys): `chmod 600` it.
    pub fn from_file(path: &Path) -> Result<CheckpointSigner, CheckpointError> {
        let file_error = |source| CheckpointError::File {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(file_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(CheckpointError::KeyFileTooOpen {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(file_error)?;
        CheckpointSigner::from_seed_hex(&text)
    }

    /// A new key from 32 bytes of the operating system's randomness
    /// (`/dev/urandom`, so Unix only).
    pub fn generate() -> io::Result<CheckpointSigner> {
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut seed)?;
        Ok(CheckpointSigner::from_seed(&seed))
    }

    /// Writes the private key to `path` (the seed in hex, created with mode
    /// 0600) and the public key to `path.pub` (see [`public_key_path`]), and
    /// answers the latter. Refuses, writing nothing, when either exists.
    pub fn write_key_files(&self, path: &Path) -> Result<PathBuf, CheckpointError> {
        let public = public_key_path(path);
        for p in [path, public.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(CheckpointError::KeyExists { path: p.to_owned() });
            }
        }
        let write = |p: &Path, mode: u32, text: String| -> Result<(), CheckpointError> {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(mode);
            }
            #[cfg(not(unix))]
            let _ = mode;
            let file_error = |source: io::Error| match source.kind() {
                io::ErrorKind::AlreadyExists => CheckpointError::KeyExists { path: p.to_owned() },
                _ => CheckpointError::File {
                    path: p.to_owned(),
                    source,
                },
            };
            let mut file = options.open(p).map_err(file_error)?;
            file.write_all(text.as_bytes()).map_err(file_error)?;
            file.sync_all().map_err(file_error)
        };
        write(path, 0o600, format!("{}\n", to_hex(self.key.as_bytes())))?;
        if let Err(e) = write(&public, 0o644, format!("{}\n", self.public_key().to_hex())) {
            // No private key without its public half.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(public)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The public key's fingerprint ([`PublicKey::key_id`]).
    pub fn key_id(&self) -> String {
        self.public_key().key_id()
    }

    /// Signs `head` as of `at_ms` (milliseconds since the Unix epoch).
    /// Ed25519 is deterministic: the same head, time and key give the same
    /// signature.
    pub fn sign(&self, head: &Head, at_ms: i64) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            position: head.position,
            hash: head.hash,
            at_ms,
            key_id: self.key_id(),
        };
        let signature = self.key.sign(&checkpoint.signing_bytes()).to_bytes();
        SignedCheckpoint {
            checkpoint,
            signature,
        }
    }
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// Where the public key of the private key file `path` lives: `path.pub`.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes `signed` to `path` atomically (a temporary file beside it, synced,
/// then renamed over `path`), replacing what was there.
pub fn write_checkpoint_file(path: &Path, signed: &SignedCheckpoint) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let partial = path.with_file_name(name);
    let written = (|| {
        let mut file = File::create(&partial)?;
        file.write_all(signed.to_json().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    // Make the rename itself durable; a directory that cannot be opened
    // for this (not a Unix filesystem) is no reason to fail.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Stores `signed` as `dir/<position>.json` (creating `dir`), atomically, and
/// answers the path. This is what the server calls after each scheduled
/// [`CheckpointSigner::sign`].
///
/// When the file exists already with the same position, hash and key id, it
/// is kept as it is (its earlier time is the stronger statement) and its path
/// answered. When it exists with anything else — another hash for the same
/// position (the log was replaced), another key, or bytes that are not a
/// checkpoint — nothing is written and the error is `AlreadyExists`: that is
/// evidence, not something to overwrite.
pub fn write_checkpoint(dir: &Path, signed: &SignedCheckpoint) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.json", signed.checkpoint.position));
    match std::fs::read(&path) {
        Ok(bytes) => {
            let same = SignedCheckpoint::from_json(&bytes).is_ok_and(|old| {
                old.checkpoint.hash == signed.checkpoint.hash
                    && old.checkpoint.key_id == signed.checkpoint.key_id
                    && old.checkpoint.position == signed.checkpoint.position
            });
            if same {
                return Ok(path);
            }
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds a different checkpoint for position {} \
                     (another hash or key); refusing to overwrite it",
                    path.display(),
                    signed.checkpoint.position
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_checkpoint_file(&path, signed)?;
    Ok(path)
}

/// Checkpoints whose signatures verified with one public key, sorted by
/// position: the only way to ask [`verify_anchored`] for anchoring, so an
/// unverified checkpoint can never anchor anything.
#[derive(Debug, Clone)]
pub struct Anchors {
    checkpoints: Vec<Checkpoint>,
}

impl Anchors {
    /// Verifies every checkpoint's signature with `key` and keeps them.
    /// Fails on the first that does not verify ([`CheckpointError::WrongKey`],
    /// [`CheckpointError::BadSignature`]).
    pub fn verified(
        checkpoints: impl IntoIterator<Item = SignedCheckpoint>,
        key: &PublicKey,
    ) -> Result<Anchors, CheckpointError> {
        let mut kept = Vec::new();
        for signed in checkpoints {
            signed.verify(key)?;
            kept.push(signed.checkpoint);
        }
        kept.sort_by_key(|c| (c.position, c.at_ms));
        Ok(Anchors { checkpoints: kept })
    }

    /// The checkpoints, by position.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// A verifier that checks the chain and these anchors, or the error for a
    /// checkpoint no log can satisfy (position 0 with a hash other than
    /// zeros: an empty log has no other head).
    fn verifier(&self) -> Result<ChainVerifier, CheckpointError> {
        let mut anchors = Vec::with_capacity(self.checkpoints.len());
        for c in &self.checkpoints {
            if c.position > 0 {
                anchors.push(c.head());
            } else if c.hash != ChainHash::ZERO {
                return Err(CheckpointError::Chain(VerifyError::Broken {
                    position: 0,
                    line: None,
                    fault: ChainFault::CheckpointMismatch {
                        signed: c.hash,
                        anchored: 0,
                    },
                }));
            }
        }
        Ok(ChainVerifier::anchored(anchors))
    }

    fn report(
        &self,
        chain: VerifyReport,
        verifier: &ChainVerifier,
    ) -> Result<AnchoredReport, CheckpointError> {
        if let Some(missing) = verifier.unreached_anchor() {
            return Err(CheckpointError::BeyondHead {
                position: missing.position,
                head: chain.head.position,
            });
        }
        let up_to = verifier.anchored_up_to();
        Ok(AnchoredReport {
            chain,
            anchored: self
                .checkpoints
                .iter()
                .rev()
                .find(|c| c.position == up_to && up_to > 0)
                .cloned(),
            checkpoints: self.checkpoints.len(),
        })
    }
}

/// What an anchored verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredReport {
    /// The plain chain verification (every record from position 1).
    pub chain: VerifyReport,
    /// The checkpoint with the highest position (the latest signed, among
    /// several for that position); `None` when no checkpoint lies past
    /// position 0.
    pub anchored: Option<Checkpoint>,
    /// How many checkpoints were checked.
    pub checkpoints: usize,
}

impl AnchoredReport {
    /// The last position a signature vouches for (0: none).
    pub fn anchored_position(&self) -> u64 {
        self.anchored.as_ref().map_or(0, |c| c.position)
    }

    /// Records after the last checkpoint: they verify as a chain, but could
    /// have been rewritten and re-hashed without this check noticing.
    pub fn unanchored(&self) -> u64 {
        self.chain.head.position - self.anchored_position()
    }
}

/// Verifies a store's chain from position 1 (as [`crate::verify`]) and
/// requires the record at every checkpoint's position to carry the signed
/// hash. Fails with [`CheckpointError::Chain`] naming the first bad position
/// (a [`ChainFault::CheckpointMismatch`] when only the anchoring fails), or
/// [`CheckpointError::BeyondHead`] when a checkpoint lies past the head.
pub async fn verify_anchored<S: EventStore>(
    store: &S,
    anchors: &Anchors,
) -> Result<AnchoredReport, CheckpointError> {
    let (report, verifier) = verify_with(store, anchors.verifier()?).await?;
    anchors.report(report, &verifier)
}

/// [`verify_anchored`] for an NDJSON export ([`crate::verify_ndjson`]'s
/// checks, plus the anchors). A file cut after a checkpoint's position still
/// passes: compare the reported head with the live one.
pub fn verify_ndjson_anchored<R: BufRead>(
    reader: R,
    anchors: &Anchors,
) -> Result<AnchoredReport, CheckpointError> {
    let (report, verifier) = verify_ndjson_with(reader, anchors.verifier()?)?;
    anchors.report(report, &verifier)
}

/// Why a key or checkpoint could not be used, or a log failed its
/// checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a key.
    #[error("not a valid {what}: {reason}")]
    BadKey {
        /// "private key" or "public key".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A private key file that others may read is refused.
    #[error(
        "the private key file {path:?} is accessible by group or others (mode {mode:o}); \
         run `chmod 600` on it"
    )]
    KeyFileTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Key generation never overwrites a file.
    #[error("{path:?} already exists; refusing to overwrite it")]
    KeyExists {
        /// The file that exists.
        path: PathBuf,
    },
    /// A key or checkpoint file could not be read or written.
    #[error("{path:?}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a checkpoint.
    #[error("not a checkpoint: {reason}")]
    Malformed {
        /// Why.
        reason: String,
    },
    /// The checkpoint names another key than the one given.
    #[error(
        "the checkpoint at position {position} was signed by key {signed_by}, \
         not by the given public key {expected}"
    )]
    WrongKey {
        /// The checkpoint's position.
        position: u64,
        /// The key id the checkpoint carries.
        signed_by: String,
        /// The given key's id.
        expected: String,
    },
    /// The signature does not verify: the checkpoint was edited (position,
    /// hash, time or key id) or its signature damaged.
    #[error(
        "the checkpoint at position {position} has a signature that does not verify \
         with key {key_id}: the checkpoint was edited or its signature damaged"
    )]
    BadSignature {
        /// The position the (edited) checkpoint names.
        position: u64,
        /// The key it was checked with.
        key_id: String,
    },
    /// A checkpoint lies past the end of the log.
    #[error(
        "the checkpoint at position {position} lies past the end of the log (its last \
         position is {head}): the log was truncated, or the checkpoint is of another log"
    )]
    BeyondHead {
        /// The checkpoint's position.
        position: u64,
        /// The log's last position.
        head: u64,
    },
    /// The chain is broken, or a record differs from a checkpoint (then the
    /// fault is [`ChainFault::CheckpointMismatch`]); also read failures.
    #[error(transparent)]
    Chain(#[from] VerifyError),
}

impl CheckpointError {
    /// The position the failure is about, when there is one.
    pub fn position(&self) -> Option<u64> {
        match self {
            CheckpointError::WrongKey { position, .. }
            | CheckpointError::BadSignature { position, .. }
            | CheckpointError::BeyondHead { position, .. } => Some(*position),
            CheckpointError::Chain(e) => e.position(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed(&[7; 32])
    }

    fn head() -> Head {
        Head {
            position: 42,
            hash: ChainHash([0xab; 32]),
        }
    }

    /// Snapshot of the signed bytes: a change here is a format change and
    /// needs a new domain prefix.
    #[test]
    fn signing_bytes_snapshot() {
        let c = Checkpoint {
            position: 42,
            hash: ChainHash([0xab; 32]),
            at_ms: 1_700_000_000_000,
            key_id: "0123456789abcdef".into(),
        };
        let expected = [
            "6261746f6e2d636865636b706f696e742d7631", // "baton-checkpoint-v1"
            "000000000000002a",                       // position 42
            &"ab".repeat(32),                         // hash
            "0000018bcfe56800",                       // at_ms
            "00000010",                               // key id length
            "30313233343536373839616263646566",       // "0123456789abcdef"
        ]
        .concat();
        assert_eq!(to_hex(&c.signing_bytes()), expected);
    }

    /// Ed25519 is deterministic: a fixed seed and checkpoint give a fixed
    /// signature, so a change of the key derivation or the signed bytes shows.
    #[test]
    fn signature_snapshot() {
        let s = signer();
        let signed = s.sign(&head(), 1_700_000_000_000);
        assert_eq!(s.key_id().len(), 16);
        assert_eq!(signed.checkpoint.key_id, s.key_id());
        assert_eq!(
            (s.public_key().to_hex(), s.key_id(), signed.signature_hex()),
            (
                SNAPSHOT_PUBLIC.to_owned(),
                SNAPSHOT_KEY_ID.to_owned(),
                SNAPSHOT_SIGNATURE.to_owned()
            )
        );
        signed.verify(&s.public_key()).unwrap();
    }

    // Seed [7; 32], head 42 / [0xab; 32], at 1_700_000_000_000. Checked
    // against an independent Ed25519 (Python's `cryptography`) signing the
    // bytes of `signing_bytes_snapshot`, so the format is not dalek-specific.
    const SNAPSHOT_PUBLIC: &str =
        "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    const SNAPSHOT_KEY_ID: &str = "fe812c12f3ab4ce6";
    const SNAPSHOT_SIGNATURE: &str = "f86706ce539bbb76234522e90cdeb6c73638527de06fb35e\
        7bfe68cf0b0d8cdfeb23d069bb0d4607e63932f6fd594a697f6cee08c2fc6ac2b374d26f8862720d";

    #[test]
    fn json_round_trip_and_shape() {
        let signed = signer().sign(&head(), 5);
        let json = signed.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["at_ms", "hash", "key_id", "position", "signature"]);
        assert_eq!(value["hash"], "ab".repeat(32));
        assert_eq!(
            SignedCheckpoint::from_json(json.as_bytes()).unwrap(),
            signed
        );
        for bad in [
            r#"{"position":1}"#,
            &json.replace("\"position\"", "\"extra\": 1, \"position\""),
            &json.replace(&"ab".repeat(32), "zz"),
            &json.replace(&signed.signature_hex(), "00"),
        ] {
            assert!(
                matches!(
                    SignedCheckpoint::from_json(bad.as_bytes()),
                    Err(CheckpointError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_parse_from_hex_only_when_valid() {
        let s = signer();
        let public = PublicKey::from_hex(&format!(" {}\n", s.public_key().to_hex())).unwrap();
        assert_eq!(public, s.public_key());
        assert!(PublicKey::from_hex("abcd").is_err());
        // The identity point has small order: a "weak" key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_hex(&to_hex(&identity)).is_err());
        let again = CheckpointSigner::from_seed_hex(&to_hex(&[7; 32])).unwrap();
        assert_eq!(again.public_key(), s.public_key());
        assert!(CheckpointSigner::from_seed_hex("07").is_err());
        assert!(!format!("{s:?}").contains(&to_hex(&[7; 32])));
    }
}
