//! The cross-invocation prefix cache: KV states of decoded contexts, kept on disk so that the
//! next `ntv` process restores the longest cached prefix of its context and decodes only the
//! rest.
//!
//! **Where.** One folder per cache: beside the session file ([`dir_for_session`]:
//! `<session>.kvcache/`), or `$NTV_CACHE_DIR/kv/` for one-shot use ([`default_dir`]). The folder
//! is always safe to delete, even while ntv runs.
//!
//! **Entries.** One file per stored context, named `<ns>-<n>-<key>.ntvkv`: `ns` is 16 hex digits
//! of SHA-256 over (model fingerprint, KV parameters), `n` the number of tokens, `key` SHA-256
//! over (fingerprint, KV parameters, the `n` token ids). The name lets a lookup find the entries
//! that are exact prefixes of a context by hashing only the lengths present in the folder. A file
//! holds llama.cpp's sequence-state file (written and read by llama.cpp itself, streamed between
//! the KV cache and the file without a copy of the whole state in memory), then a header (magic,
//! format version, the key material in full, the state length and the XXH3-128 checksum of the
//! state: it guards against torn or corrupted files, not against an adversary, and runs at memory
//! speed where SHA-256 cost ~25 ms per 46 MB state), the header's length and an end marker.
//! Nothing is trusted, and llama.cpp reads nothing, until all of it matches: wrong magic or version, key material that differs from the caller's
//! or from the file name, a length that is not the file's, or a bad checksum make the entry
//! ignored and deleted.
//!
//! **Writes** go to a temp file (`.…tmp`, never read) that is fsynced (unless the cache was
//! opened without durability, as the commands do) and then renamed: an interrupted process
//! leaves either the whole entry or none. Temp files older than
//! [`STALE_TEMP`] are removed by later stores.
//!
//! **Lookups** also use an entry that holds a *longer* context sharing a prefix with the one asked
//! for (after an undo or a rewind): [`Decoder::restore_prefix_file`] drops the positions past
//! the shared part. Such an entry is used only when the shared part is at least 1/[`MIN_SHARE`] of
//! what it holds, since restoring costs time in proportion to its size.
//!
//! **What is kept.** Storing a context supersedes the entries of the same model and parameters
//! that hold a strict prefix of it (the longer entry serves every context they served), so a user
//! stepping one token at a time keeps one entry per line of generation, not one per step. Beyond
//! `max_bytes`, the least recently used entries (file modification time, refreshed by every hit)
//! are evicted.
//!
//! Typical use by a command (see `commands::restore_prefix` / `commands::save_prefix`): open
//! the cache beside the session, `restore_into` the decoder before the first `eval` (0 means
//! nothing usable was cached), decode, then `save_from` after the command's last decode (a
//! failure there is worth a warning, not an error).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::engine::Decoder;

/// First bytes of every entry.
const MAGIC: [u8; 8] = *b"NTVKVST\n";
/// Entry format version; another version is ignored (and deleted).
const FORMAT_VERSION: u32 = 3;
/// Last bytes of every entry (after the header and its length).
const TRAILER_MAGIC: [u8; 8] = *b"NTVKVEND";
/// Extension of complete entries.
const ENTRY_EXT: &str = "ntvkv";
/// Extension of entries being written (names also start with a dot).
const TEMP_EXT: &str = "tmp";
/// Longest fingerprint or KV-parameter string an entry may carry.
const MAX_KEY_STR: u32 = 1 << 16;
/// Most tokens an entry may carry.
const MAX_TOKENS: u32 = 1 << 24;
/// Bytes of the fixed part of a header, besides the strings and tokens.
const FIXED_HEADER: usize = 8 + 4 + 4 + 4 + 4 + 8 + 16;

/// A longer entry is restored for a shared prefix only when that prefix is at least 1/MIN_SHARE of
/// its tokens; below that, decoding the prefix again is about as cheap as reading the state.
pub const MIN_SHARE: usize = 32;
/// Temp files older than this are left over from a killed process and removed.
pub const STALE_TEMP: Duration = Duration::from_secs(15 * 60);
/// A sensible default bound for a cache folder (1 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// The cache folder for a session file: `<session>.kvcache` beside it.
pub fn dir_for_session(session: &Path) -> PathBuf {
    let mut name = session.file_name().unwrap_or_default().to_os_string();
    name.push(".kvcache");
    session.with_file_name(name)
}

/// The cache folder for use without a session: `$NTV_CACHE_DIR/kv` (or the platform cache
/// folder's `ntv/kv`); `None` when there is no cache folder.
pub fn default_dir() -> Option<PathBuf> {
    crate::models::cache_dir().ok().map(|d| d.join("kv"))
}

/// A folder of KV states keyed by model, KV parameters and token prefix.
#[derive(Debug, Clone)]
pub struct KvCache {
    dir: PathBuf,
    max_bytes: u64,
    durable: bool,
}

/// An entry's file name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryName {
    ns: String,
    n_tokens: usize,
    key: String,
}

impl EntryName {
    fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(ENTRY_EXT)?.strip_suffix('.')?;
        let mut parts = stem.split('-');
        let (ns, n, key) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || ns.len() != 16
            || key.len() != 64
            || !is_lower_hex(ns)
            || !is_lower_hex(key)
            || n.is_empty()
            || n.len() > 9
            || !n.bytes().all(|b| b.is_ascii_digit())
            || (n.len() > 1 && n.starts_with('0'))
        {
            return None;
        }
        let n_tokens = n.parse().ok().filter(|&n| n > 0)?;
        Some(Self {
            ns: ns.to_string(),
            n_tokens,
            key: key.to_string(),
        })
    }

    fn file_name(&self) -> String {
        format!("{}-{}-{}.{ENTRY_EXT}", self.ns, self.n_tokens, self.key)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn feed_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// The namespace of a (model, KV parameters) pair: 16 hex digits.
fn namespace(fingerprint: &str, kv_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"ntv-kvcache-ns\0");
    feed_str(&mut h, fingerprint);
    feed_str(&mut h, kv_key);
    hex(&h.finalize()[..8])
}

/// SHA-256 of the key material, fed token by token so that every prefix length can be read off
/// one pass (the token count is implied: strings are length-prefixed, tokens 4 bytes each).
#[derive(Clone)]
struct KeyHasher(Sha256);

impl KeyHasher {
    fn new(fingerprint: &str, kv_key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"ntv-kvcache-key\0");
        feed_str(&mut h, fingerprint);
        feed_str(&mut h, kv_key);
        Self(h)
    }

    fn feed(&mut self, tokens: &[i32]) {
        for t in tokens {
            self.0.update(t.to_le_bytes());
        }
    }

    fn hex(&self) -> String {
        hex(&self.0.clone().finalize())
    }
}

fn key_of(fingerprint: &str, kv_key: &str, tokens: &[i32]) -> String {
    let mut h = KeyHasher::new(fingerprint, kv_key);
    h.feed(tokens);
    h.hex()
}

/// For each wanted prefix length (each `<= tokens.len()`), the key of `tokens[..n]`, hashing the
/// tokens once.
fn prefix_keys(
    fingerprint: &str,
    kv_key: &str,
    tokens: &[i32],
    lengths: impl IntoIterator<Item = usize>,
) -> Vec<(usize, String)> {
    let mut lengths: Vec<usize> = lengths.into_iter().filter(|&n| n <= tokens.len()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut h = KeyHasher::new(fingerprint, kv_key);
    let mut fed = 0;
    lengths
        .into_iter()
        .map(|n| {
            h.feed(&tokens[fed..n]);
            fed = n;
            (n, h.hex())
        })
        .collect()
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The header of an entry, as stored.
struct Header {
    fingerprint: String,
    kv_key: String,
    tokens: Vec<i32>,
    state_len: u64,
    state_sum: Checksum,
}

impl Header {
    /// The header bytes; the checksum comes last, so that a writer can fill it in once the state
    /// is hashed.
    fn encode(
        fingerprint: &str,
        kv_key: &str,
        tokens: &[i32],
        state_len: usize,
        state_sum: &Checksum,
    ) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(FIXED_HEADER + fingerprint.len() + kv_key.len() + 4 * tokens.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for s in [fingerprint, kv_key] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        for t in tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&(state_len as u64).to_le_bytes());
        out.extend_from_slice(state_sum);
        out
    }

    /// Bytes the header takes in the file.
    fn len(&self) -> u64 {
        (FIXED_HEADER + self.fingerprint.len() + self.kv_key.len() + 4 * self.tokens.len()) as u64
    }

    fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(invalid("not a ntv KV cache entry"));
        }
        let version = read_u32(r)?;
        if version != FORMAT_VERSION {
            return Err(invalid(format!("entry format version {version}")));
        }
        let fingerprint = read_str(r)?;
        let kv_key = read_str(r)?;
        let n = read_u32(r)?;
        if n == 0 || n > MAX_TOKENS {
            return Err(invalid(format!("{n} tokens")));
        }
        let mut raw = vec![0u8; 4 * n as usize];
        r.read_exact(&mut raw)?;
        let tokens = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut len = [0u8; 8];
        r.read_exact(&mut len)?;
        let mut state_sum: Checksum = [0u8; 16];
        r.read_exact(&mut state_sum)?;
        Ok(Self {
            fingerprint,
            kv_key,
            tokens,
            state_len: u64::from_le_bytes(len),
            state_sum,
        })
    }

    /// The header belongs to this model, these parameters and this file name.
    fn check(&self, fingerprint: &str, kv_key: &str, name: &EntryName) -> io::Result<()> {
        if self.fingerprint != fingerprint || self.kv_key != kv_key {
            return Err(invalid("another model or other KV parameters"));
        }
        if self.tokens.len() != name.n_tokens
            || key_of(fingerprint, kv_key, &self.tokens) != name.key
        {
            return Err(invalid("the token list does not match the file name"));
        }
        Ok(())
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_str(r: &mut impl Read) -> io::Result<String> {
    let n = read_u32(r)?;
    if n > MAX_KEY_STR {
        return Err(invalid("key string too long"));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| invalid("key string is not UTF-8"))
}

/// A file in the folder that is a complete entry.
struct Listed {
    path: PathBuf,
    name: EntryName,
    bytes: u64,
    used: SystemTime,
}

/// A unique temp name for this process and moment.
fn temp_name(ns: &str, n: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        ".{ns}-{n}-{}-{nanos}-{}.{TEMP_EXT}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn is_temp(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(&format!(".{TEMP_EXT}"))
}

/// Mark an entry as just used (LRU order). Best effort: a read-only folder still serves hits.
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Remove a file, ignoring that it may already be gone.
fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

impl KvCache {
    /// A cache in `dir` bounded to `max_bytes` (entries are evicted beyond it; a state larger
    /// than the bound is never stored). The folder is created by the first store; an existing
    /// path that is not a folder is an error.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a folder", dir.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            durable: true,
        })
    }

    /// Whether stores fsync an entry before renaming it into place (the default). Without it, a
    /// power cut can leave an entry whose content never reached the disk; its checksum then
    /// fails and it is deleted unread, so turning this off trades only durability for speed.
    pub fn with_fsync(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Number of complete entries and their total size in bytes (temp files excluded).
    pub fn usage(&self) -> (usize, u64) {
        let all = self.list();
        (all.len(), all.iter().map(|e| e.bytes).sum())
    }

    /// Complete entries in the folder (any namespace); unreadable folders list nothing.
    fn list(&self) -> Vec<Listed> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|de| {
                let name = EntryName::parse(de.file_name().to_str()?)?;
                let meta = de.metadata().ok().filter(|m| m.is_file())?;
                Some(Listed {
                    path: de.path(),
                    name,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(UNIX_EPOCH),
                })
            })
            .collect()
    }

    /// Longest cached prefix of `tokens` for this model (`fingerprint`) and KV parameters
    /// (`kv_key`, from [`Decoder::kv_params_key`]): `(n, state)` where the first `n` tokens of
    /// `tokens` can be restored from `state` with
    /// `Decoder::restore_prefix(&tokens[..n], &state)`. The state may hold more tokens than `n`
    /// (an entry for a longer context that shares those `n`); the restore drops the rest.
    ///
    /// Entries that are exact prefixes are found by name; others are judged by their header's
    /// token list. The chosen entry is verified in full before it is returned; one that fails
    /// (truncated, corrupt, written for something else) is deleted and the next best is tried.
    pub fn lookup(
        &self,
        fingerprint: &str,
        kv_key: &str,
        tokens: &[i32],
    ) -> Option<(usize, PathBuf)> {
        if tokens.is_empty() {
            return None;
        }
        let ns = namespace(fingerprint, kv_key);
        let entries: Vec<Listed> = self
            .list()
            .into_iter()
            .filter(|e| e.name.ns == ns)
            .collect();
        if entries.is_empty() {
            return None;
        }
        let keys = prefix_keys(
            fingerprint,
            kv_key,
            tokens,
            entries.iter().map(|e| e.name.n_tokens),
        );
        // (shared tokens, entry)
        let mut candidates: Vec<(usize, &Listed)> = Vec::new();
        for e in &entries {
            let n = e.name.n_tokens;
            let exact = keys
                .iter()
                .any(|(len, key)| *len == n && *key == e.name.key);
            let shared = if exact {
                n
            } else {
                match self.read_header(e, fingerprint, kv_key) {
                    Ok(h) => common_prefix(&h.tokens, tokens),
                    Err(err) => {
                        if err.kind() == io::ErrorKind::InvalidData
                            || err.kind() == io::ErrorKind::UnexpectedEof
                        {
                            remove(&e.path);
                        }
                        continue;
                    }
                }
            };
            if shared > 0 && shared.saturating_mul(MIN_SHARE) >= n {
                candidates.push((shared, e));
            }
        }
        // Most tokens shared first; among equals, the smallest state.
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.bytes.cmp(&b.1.bytes)));
        for (shared, e) in candidates {
            match self.read_entry(e, fingerprint, kv_key) {
                Ok(entry_tokens) if common_prefix(&entry_tokens, tokens) >= shared => {
                    touch(&e.path);
                    return Some((shared, e.path.clone()));
                }
                Ok(_) => continue,
                Err(err) => {
                    if err.kind() == io::ErrorKind::InvalidData
                        || err.kind() == io::ErrorKind::UnexpectedEof
                    {
                        remove(&e.path);
                    }
                }
            }
        }
        None
    }

    /// Read an entry's header from its trailer and check it against the caller, the file name
    /// and the file's length.
    fn read_header(&self, e: &Listed, fingerprint: &str, kv_key: &str) -> io::Result<Header> {
        let mut f = File::open(&e.path)?;
        let (at, header_len) = read_trailer(&mut f)?;
        f.seek(SeekFrom::Start(at))?;
        let h = Header::read(&mut BufReader::new(f.take(header_len)))?;
        if h.len() != header_len || h.state_len != at {
            return Err(invalid(format!(
                "entry has a {at}-byte state, its header announces {} bytes",
                h.state_len
            )));
        }
        h.check(fingerprint, kv_key, &e.name)?;
        Ok(h)
    }

    /// Verify a whole entry: header against the caller, the file name and the length, checksum
    /// against the state. Returns the tokens it holds.
    fn read_entry(&self, e: &Listed, fingerprint: &str, kv_key: &str) -> io::Result<Vec<i32>> {
        let h = self.read_header(e, fingerprint, kv_key)?;
        let mut r = File::open(&e.path)?.take(h.state_len);
        if checksum_of(&mut r)? != h.state_sum {
            return Err(invalid("state checksum mismatch"));
        }
        Ok(h.tokens)
    }

    /// Whether an entry for exactly `tokens` is present (by name; not verified).
    pub fn contains(&self, fingerprint: &str, kv_key: &str, tokens: &[i32]) -> bool {
        !tokens.is_empty() && self.entry_path(fingerprint, kv_key, tokens).is_file()
    }

    fn entry_path(&self, fingerprint: &str, kv_key: &str, tokens: &[i32]) -> PathBuf {
        let name = EntryName {
            ns: namespace(fingerprint, kv_key),
            n_tokens: tokens.len(),
            key: key_of(fingerprint, kv_key, tokens),
        };
        self.dir.join(name.file_name())
    }

    /// Store `state` as the KV state of exactly `tokens`; see [`KvCache::store_with`].
    pub fn store(
        &self,
        fingerprint: &str,
        kv_key: &str,
        tokens: &[i32],
        state: &[u8],
    ) -> io::Result<()> {
        self.store_with(fingerprint, kv_key, tokens, |path| fs::write(path, state))
    }

    /// Store the state that `write` puts into a new file at the path it is given (llama.cpp's
    /// sequence-state file: streamed from the KV cache, no copy of tens of MB in memory) as the
    /// KV state of exactly `tokens`: checksum, header appended, optional fsync, rename (a reader
    /// never sees half an entry). Then drop the entries of the same model and parameters that
    /// hold a strict prefix of `tokens` (this entry serves their contexts too) and evict the
    /// least recently used entries beyond `max_bytes`. A state that alone exceeds `max_bytes` is
    /// not kept.
    pub fn store_with(
        &self,
        fingerprint: &str,
        kv_key: &str,
        tokens: &[i32],
        write: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        if tokens.is_empty() || tokens.len() > MAX_TOKENS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot cache a state for {} tokens", tokens.len()),
            ));
        }
        if fingerprint.len() > MAX_KEY_STR as usize || kv_key.len() > MAX_KEY_STR as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fingerprint or KV parameters too long",
            ));
        }
        fs::create_dir_all(&self.dir)?;
        let ns = namespace(fingerprint, kv_key);
        let final_path = self.entry_path(fingerprint, kv_key, tokens);
        let temp_path = self.dir.join(temp_name(&ns, tokens.len()));
        let written = (|| {
            write(&temp_path)?;
            let mut f = File::options().read(true).append(true).open(&temp_path)?;
            let len = f.metadata()?.len();
            let sum = checksum_of(&mut (&f).take(len))?;
            let mut header = Header::encode(fingerprint, kv_key, tokens, len as usize, &sum);
            let header_len = header.len() as u64;
            if len + header_len + 16 > self.max_bytes {
                return Ok(false);
            }
            header.extend_from_slice(&header_len.to_le_bytes());
            header.extend_from_slice(&TRAILER_MAGIC);
            f.write_all(&header)?;
            f.set_modified(SystemTime::now())?;
            if self.durable {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&temp_path, &final_path)?;
            Ok(true)
        })();
        match written {
            Ok(true) => {}
            Ok(false) => {
                remove(&temp_path);
                return Ok(());
            }
            Err(e) => {
                remove(&temp_path);
                return Err(e);
            }
        }
        sync_dir(&self.dir);
        self.supersede(&ns, fingerprint, kv_key, tokens);
        self.evict(&final_path);
        Ok(())
    }

    /// Remove the entries of namespace `ns` that hold a strict prefix of `tokens`.
    fn supersede(&self, ns: &str, fingerprint: &str, kv_key: &str, tokens: &[i32]) {
        let shorter: Vec<Listed> = self
            .list()
            .into_iter()
            .filter(|e| e.name.ns == ns && e.name.n_tokens < tokens.len())
            .collect();
        let keys = prefix_keys(
            fingerprint,
            kv_key,
            tokens,
            shorter.iter().map(|e| e.name.n_tokens),
        );
        for e in &shorter {
            if keys
                .iter()
                .any(|(n, key)| *n == e.name.n_tokens && *key == e.name.key)
            {
                remove(&e.path);
            }
        }
    }

    /// Delete least recently used entries until the total is within `max_bytes` (never `keep`),
    /// and temp files left over by killed processes.
    fn evict(&self, keep: &Path) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for de in rd.filter_map(Result::ok) {
                let stale = de.file_name().to_str().is_some_and(is_temp)
                    && de
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TEMP);
                if stale {
                    remove(&de.path());
                }
            }
        }
        let mut all = self.list();
        let mut total: u64 = all.iter().map(|e| e.bytes).sum();
        if total <= self.max_bytes {
            return;
        }
        all.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
        for e in all {
            if total <= self.max_bytes {
                break;
            }
            if e.path != keep && fs::remove_file(&e.path).is_ok() {
                total = total.saturating_sub(e.bytes);
            }
        }
    }

    /// Delete every entry and temp file, then the folder if it is left empty.
    pub fn clear(&self) -> io::Result<()> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for de in rd {
            let de = de?;
            let ours = de
                .file_name()
                .to_str()
                .is_some_and(|n| is_temp(n) || EntryName::parse(n).is_some());
            if ours {
                match fs::remove_file(de.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Restore into `dec` the longest cached prefix of `tokens` (see [`KvCache::lookup`]) and
    /// return how many tokens it covers; 0 when nothing usable is cached or llama.cpp refuses
    /// the state (the decoder is then empty, as if new).
    pub fn restore_into(&self, dec: &mut Decoder<'_>, fingerprint: &str, tokens: &[i32]) -> usize {
        let kv_key = dec.kv_params_key();
        let Some((n, path)) = self.lookup(fingerprint, &kv_key, tokens) else {
            return 0;
        };
        match dec.restore_prefix_file(&tokens[..n], &path) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }

    /// Store the KV state of what `dec` holds ([`Decoder::cached`]), unless an entry for exactly
    /// those tokens exists already (then it is only marked as used). Returns whether a state was
    /// written.
    pub fn save_from(&self, dec: &Decoder<'_>, fingerprint: &str) -> io::Result<bool> {
        let tokens = dec.cached();
        if tokens.is_empty() {
            return Ok(false);
        }
        let kv_key = dec.kv_params_key();
        let path = self.entry_path(fingerprint, &kv_key, tokens);
        if path.is_file() {
            touch(&path);
            return Ok(false);
        }
        self.store_with(fingerprint, &kv_key, tokens, |p| {
            dec.save_prefix_file(p).map_err(io::Error::other)
        })?;
        Ok(path.is_file())
    }
}

/// The end of an entry: (where the header starts = the state's length, the header's length).
fn read_trailer(f: &mut File) -> io::Result<(u64, u64)> {
    let file_len = f.metadata()?.len();
    if file_len < 16 {
        return Err(invalid("entry too short"));
    }
    f.seek(SeekFrom::End(-16))?;
    let mut tail = [0u8; 16];
    f.read_exact(&mut tail)?;
    if tail[8..] != TRAILER_MAGIC {
        return Err(invalid("not a ntv KV cache entry"));
    }
    let header_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    if header_len > file_len - 16 {
        return Err(invalid("header longer than the entry"));
    }
    Ok((file_len - 16 - header_len, header_len))
}

/// Checksum of a stored state.
type Checksum = [u8; 16];

/// XXH3-128 of `bytes`, little-endian.
#[cfg(test)]
fn checksum(bytes: &[u8]) -> Checksum {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

/// XXH3-128 of everything `r` yields, streamed in 1 MB chunks.
fn checksum_of(r: &mut impl Read) -> io::Result<Checksum> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.digest128().to_le_bytes()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Make a rename durable (best effort: not every platform can open a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lookup` with the state copied out, for comparisons.
    fn look(c: &KvCache, fp: &str, kv: &str, tokens: &[i32]) -> Option<(usize, Vec<u8>)> {
        c.lookup(fp, kv, tokens)
            .map(|(n, path)| (n, state_bytes(&path)))
    }

    /// The state bytes of an entry (restores hand the file to llama.cpp instead).
    fn state_bytes(path: &Path) -> Vec<u8> {
        let mut f = File::open(path).expect("entry readable");
        let (state_len, _) = read_trailer(&mut f).expect("entry trailer");
        let mut state = vec![0u8; state_len as usize];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut state).unwrap();
        state
    }

    const FP: &str = "size=1000;sha256=abc";
    const KV: &str = "ntv-kv/1;n_ctx=512";

    fn state(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn cache(max: u64) -> (tempfile::TempDir, KvCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = KvCache::open(&dir.path().join("kv"), max).unwrap();
        (dir, c)
    }

    fn only_entry(c: &KvCache) -> PathBuf {
        let all = c.list();
        assert_eq!(all.len(), 1);
        all[0].path.clone()
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        let name = EntryName {
            ns: "0123456789abcdef".into(),
            n_tokens: 42,
            key: "a".repeat(64),
        };
        assert_eq!(EntryName::parse(&name.file_name()), Some(name.clone()));
        for bad in [
            "0123456789abcdef-42-aaaa.ntvkv",
            "0123456789ABCDEF-42-".to_string().as_str(),
            &format!("0123456789abcdef-042-{}.ntvkv", "a".repeat(64)),
            &format!("0123456789abcdef-0-{}.ntvkv", "a".repeat(64)),
            &format!("0123456789abcdef-42-{}.ntvkv.tmp", "a".repeat(64)),
            &format!(".0123456789abcdef-42-{}.tmp", "a".repeat(64)),
            &format!("0123456789abcdef-4-2-{}.ntvkv", "a".repeat(64)),
        ] {
            assert_eq!(EntryName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_depend_on_everything_and_prefix_hashing_agrees() {
        let toks = [1, 2, 3, 4, 5];
        let k = key_of(FP, KV, &toks);
        assert_ne!(k, key_of("other", KV, &toks));
        assert_ne!(k, key_of(FP, "other", &toks));
        assert_ne!(k, key_of(FP, KV, &toks[..4]));
        assert_ne!(k, key_of(FP, KV, &[1, 2, 3, 4, 6]));
        // No ambiguity between the strings and the tokens.
        assert_ne!(key_of("ab", "c", &[]), key_of("a", "bc", &[]));
        let keys = prefix_keys(FP, KV, &toks, [5, 2, 9, 2, 0]);
        assert_eq!(
            keys,
            vec![
                (0, key_of(FP, KV, &[])),
                (2, key_of(FP, KV, &toks[..2])),
                (5, k)
            ]
        );
        assert_ne!(namespace(FP, KV), namespace(FP, "other"));
    }

    #[test]
    fn store_then_lookup_finds_the_longest_prefix() {
        let (_d, c) = cache(1 << 20);
        assert_eq!(look(&c, FP, KV, &[1, 2, 3]), None, "missing folder");
        c.store(FP, KV, &[1, 2], &state(1, 100)).unwrap();
        c.store(FP, KV, &[7, 8, 9], &state(2, 100)).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2, 3, 4]), Some((2, state(1, 100))));
        assert_eq!(look(&c, FP, KV, &[1, 2]), Some((2, state(1, 100))));
        assert_eq!(look(&c, FP, KV, &[7, 8, 9, 1]), Some((3, state(2, 100))));
        assert_eq!(look(&c, FP, KV, &[5]), None);
        assert_eq!(look(&c, FP, KV, &[]), None);
        assert!(c.contains(FP, KV, &[1, 2]) && !c.contains(FP, KV, &[1]));
        // Other model or other parameters: nothing.
        assert_eq!(look(&c, "other", KV, &[1, 2, 3]), None);
        assert_eq!(look(&c, FP, "n_ctx=1024", &[1, 2, 3]), None);
    }

    #[test]
    fn a_longer_entry_serves_a_shared_prefix_and_prefixes_are_superseded() {
        let (_d, c) = cache(1 << 20);
        c.store(FP, KV, &[1, 2, 3], &state(1, 50)).unwrap();
        c.store(FP, KV, &[1, 2, 3, 4, 5], &state(2, 50)).unwrap();
        // The 3-token entry is a prefix of the 5-token one: superseded.
        assert_eq!(c.usage().0, 1);
        // A rewind: shares 4 tokens with the stored context.
        assert_eq!(look(&c, FP, KV, &[1, 2, 3, 4, 9]), Some((4, state(2, 50))));
        // A shorter context inside it.
        assert_eq!(look(&c, FP, KV, &[1, 2]), Some((2, state(2, 50))));
        // An unrelated branch is kept beside it.
        c.store(FP, KV, &[1, 2, 8], &state(3, 50)).unwrap();
        assert_eq!(c.usage().0, 2);
        assert_eq!(look(&c, FP, KV, &[1, 2, 8, 8]), Some((3, state(3, 50))));
        // Ties on shared length go to the smaller state.
        assert_eq!(look(&c, FP, KV, &[1, 2, 7]).map(|r| r.0), Some(2));
    }

    #[test]
    fn a_longer_entry_sharing_too_little_is_not_used() {
        let (_d, c) = cache(1 << 20);
        let long: Vec<i32> = (1..=(MIN_SHARE as i32 * 2 + 1)).collect();
        c.store(FP, KV, &long, &state(1, 10)).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 99]), None);
        assert_eq!(look(&c, FP, KV, &[1, 2, 3, 99]).map(|r| r.0), Some(3));
    }

    #[test]
    fn corrupt_entries_are_ignored_and_deleted() {
        type Spoil = fn(&Path);
        let cases: [(&str, Spoil); 6] = [
            ("flipped state byte", |p| {
                let mut b = fs::read(p).unwrap();
                let last = b.len() - 1;
                b[last] ^= 1;
                fs::write(p, b).unwrap();
            }),
            ("truncated", |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..b.len() - 10]).unwrap();
            }),
            ("header only", |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..20]).unwrap();
            }),
            ("token changed in the header", |p| {
                let mut b = fs::read(p).unwrap();
                let at = 8 + 4 + 4 + FP.len() + 4 + KV.len() + 4;
                b[at] ^= 1;
                fs::write(p, b).unwrap();
            }),
            ("other version", |p| {
                let mut b = fs::read(p).unwrap();
                b[8] = 9;
                fs::write(p, b).unwrap();
            }),
            ("extra bytes", |p| {
                let mut b = fs::read(p).unwrap();
                b.push(0);
                fs::write(p, b).unwrap();
            }),
        ];
        for (what, spoil) in cases {
            let (_d, c) = cache(1 << 20);
            c.store(FP, KV, &[1, 2, 3], &state(1, 64)).unwrap();
            let p = only_entry(&c);
            spoil(&p);
            assert_eq!(look(&c, FP, KV, &[1, 2, 3, 4]), None, "{what}");
            assert!(!p.exists(), "{what}: the bad entry is deleted");
            // Also when judged by header (a longer context that is not a prefix).
            c.store(FP, KV, &[1, 2, 3, 4, 5], &state(1, 64)).unwrap();
            let p = only_entry(&c);
            spoil(&p);
            assert_eq!(look(&c, FP, KV, &[1, 2, 3, 4, 9]), None, "{what}");
            assert!(!p.exists(), "{what}: the bad entry is deleted");
        }
    }

    #[test]
    fn an_entry_of_another_model_under_our_name_is_ignored() {
        let (_d, c) = cache(1 << 20);
        c.store("other model", KV, &[1, 2, 3], &state(1, 64))
            .unwrap();
        let theirs = only_entry(&c);
        let ours = c.entry_path(FP, KV, &[1, 2, 3]);
        fs::rename(&theirs, &ours).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2, 3]), None);
        assert!(!ours.exists());
    }

    #[test]
    fn temp_files_are_never_read_and_stale_ones_are_removed() {
        let (_d, c) = cache(1 << 20);
        c.store(FP, KV, &[5], &state(0, 8)).unwrap();
        // A complete entry written under a temp name, never renamed.
        let sum = checksum(&state(1, 64));
        let header = Header::encode(FP, KV, &[1, 2, 3], 64, &sum);
        let len = (header.len() as u64).to_le_bytes().to_vec();
        let tmp = c.dir.join(temp_name(&namespace(FP, KV), 3));
        fs::write(
            &tmp,
            [state(1, 64), header, len, TRAILER_MAGIC.to_vec()].concat(),
        )
        .unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2, 3]), None);
        assert_eq!(c.usage().0, 1);
        // A recent temp file survives a store (someone may be writing it); a stale one goes.
        c.store(FP, KV, &[6], &state(0, 8)).unwrap();
        assert!(tmp.exists());
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP - Duration::from_secs(1))
            .unwrap();
        c.store(FP, KV, &[7], &state(0, 8)).unwrap();
        assert!(!tmp.exists());
    }

    #[test]
    fn least_recently_used_entries_are_evicted_beyond_the_bound() {
        let one = (FIXED_HEADER + FP.len() + KV.len() + 4 + 1000 + 16) as u64;
        let (_d, c) = cache(3 * one);
        c.store(FP, KV, &[1], &state(1, 1000)).unwrap();
        c.store(FP, KV, &[2], &state(2, 1000)).unwrap();
        c.store(FP, KV, &[3], &state(3, 1000)).unwrap();
        assert_eq!(c.usage(), (3, 3 * one));
        // Use [1]: [2] is now the least recently used.
        assert!(look(&c, FP, KV, &[1]).is_some());
        c.store(FP, KV, &[4], &state(4, 1000)).unwrap();
        assert_eq!(c.usage(), (3, 3 * one));
        assert!(c.contains(FP, KV, &[1]));
        assert!(!c.contains(FP, KV, &[2]));
        assert!(c.contains(FP, KV, &[3]) && c.contains(FP, KV, &[4]));
        // A bigger entry pushes out as many as needed, never itself.
        c.store(FP, KV, &[5], &state(5, 2500)).unwrap();
        let (n, bytes) = c.usage();
        assert!(bytes <= 3 * one, "{bytes} > {}", 3 * one);
        assert_eq!(n, 1);
        assert!(c.contains(FP, KV, &[5]));
        // A state that can never fit is not stored, and evicts nothing.
        c.store(FP, KV, &[6], &state(6, 4000)).unwrap();
        assert!(!c.contains(FP, KV, &[6]));
        assert!(c.contains(FP, KV, &[5]));
    }

    #[test]
    fn large_states_round_trip_and_a_flipped_byte_is_caught() {
        let (_d, c) = cache(1 << 30);
        let big = state(9, (9 << 20) + 12345);
        c.store(FP, KV, &[1, 2], &big).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2, 3]), Some((2, big.clone())));
        let p = only_entry(&c);
        let mut b = fs::read(&p).unwrap();
        let at = b.len() - (5 << 20);
        b[at] ^= 0x80;
        fs::write(&p, b).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2, 3]), None);
        assert!(!p.exists());
        // Without fsync, same entries.
        let c = c.with_fsync(false);
        c.store(FP, KV, &[1, 2], &big).unwrap();
        assert_eq!(look(&c, FP, KV, &[1, 2]), Some((2, big)));
    }

    #[test]
    fn clear_removes_only_our_files() {
        let (_d, c) = cache(1 << 20);
        c.store(FP, KV, &[1], &state(1, 10)).unwrap();
        fs::write(c.dir.join("notes.txt"), "mine").unwrap();
        c.clear().unwrap();
        assert_eq!(c.usage().0, 0);
        assert!(c.dir.join("notes.txt").exists());
        fs::remove_file(c.dir.join("notes.txt")).unwrap();
        c.clear().unwrap();
        assert!(!c.dir.exists());
        c.clear().unwrap();
        // The folder comes back on the next store.
        c.store(FP, KV, &[1], &state(1, 10)).unwrap();
        assert!(look(&c, FP, KV, &[1]).is_some());
    }

    #[test]
    fn folders() {
        let d = dir_for_session(Path::new("/x/y/ntv-session.json"));
        assert_eq!(d, PathBuf::from("/x/y/ntv-session.json.kvcache"));
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(KvCache::open(f.path(), 1).is_err());
    }
}
