//! Handler output, kept per function: what wasm guests and container
//! handlers write to stdout and stderr, one JSON object per line (the
//! shape OpenFaaS's `/system/logs` streams), in a bounded ring on disk —
//! `<dir>/<function>.ndjson`, rotated to `<function>.ndjson.1` when it
//! passes its size cap, so each function keeps between one and two caps of
//! its latest output — and broadcast to followers.
//!
//! Output reaches the store through [`record`], which never blocks and
//! never writes: it charges the function's rate limit ([`LOG_RATE_BYTES`]
//! per second, each line costing its length plus [`LINE_COST`]) and hands
//! the text to the store's writer thread over a bounded queue. Output over
//! the limit, or arriving while the queue is full, is dropped and counted
//! ([`LogStore::dropped`], the metric `wisp_log_lines_dropped_total`), and
//! the function's log says so in a line of its own. A function flooding
//! its output so costs the server a bounded amount of work, and none of it
//! on the request path.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Default cap of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Longest line kept (longer ones are cut).
const MAX_LINE: usize = 16 * 1024;
/// Output a function may log per second, in bytes (lines cost [`LINE_COST`] more).
pub const LOG_RATE_BYTES: f64 = 1024.0 * 1024.0;
/// Output a function may log at once, after a quiet spell.
const LOG_BURST_BYTES: f64 = 4.0 * LOG_RATE_BYTES;
/// What a line costs beyond its bytes (its JSON, its write).
const LINE_COST: usize = 128;
/// Chunks of output waiting for the writer thread, across functions.
const QUEUE_DEPTH: usize = 4096;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub name: String,
    pub namespace: String,
    /// Which instance wrote it (a backend-chosen id).
    pub instance: String,
    /// RFC 3339, UTC, with milliseconds.
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

/// Lines a follower may fall behind by before it misses some.
const FOLLOW_BUFFER: usize = 1024;

pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
    functions: Mutex<HashMap<String, Arc<FunctionLog>>>,
}

struct FunctionLog {
    file: Mutex<Option<(File, u64)>>,
    /// Followers' channel, made by the first follower: its 1,024 slots
    /// (~180 KB) are not paid by every function that ever logs.
    tx: std::sync::OnceLock<broadcast::Sender<LogLine>>,
    bucket: Mutex<Bucket>,
    /// Lines dropped since the function's log was opened.
    dropped: AtomicU64,
    /// Lines dropped and not yet reported in the log itself.
    unreported: AtomicU64,
}

/// A token bucket of bytes.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full() -> Self {
        Bucket {
            tokens: LOG_BURST_BYTES,
            at: Instant::now(),
        }
    }

    /// Takes `cost` tokens if there are enough.
    fn take(&mut self, cost: f64) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LOG_RATE_BYTES;
        self.tokens = (self.tokens + refill).min(LOG_BURST_BYTES);
        self.at = now;
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

/// A chunk of output on its way to the writer thread.
struct Chunk {
    function: String,
    instance: String,
    stream: String,
    text: String,
}

impl LogStore {
    /// Opens (or makes) the store in `dir`. Handlers' output may hold
    /// anything: the directory is made 0700 and its files 0600, those an
    /// older wisp left readable included.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<LogStore> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(LOG_FILE_MODE))?;
            }
        }
        Ok(LogStore {
            dir,
            max_bytes: max_bytes.max(1024),
            functions: Mutex::new(HashMap::new()),
        })
    }

    fn function(&self, name: &str) -> Arc<FunctionLog> {
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        functions
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(FunctionLog {
                    file: Mutex::new(None),
                    tx: std::sync::OnceLock::new(),
                    bucket: Mutex::new(Bucket::full()),
                    dropped: AtomicU64::new(0),
                    unreported: AtomicU64::new(0),
                })
            })
            .clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ndjson"))
    }

    /// Lines dropped so far (over the rate limit, or the queue full), by
    /// function.
    pub fn dropped(&self) -> Vec<(String, u64)> {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, log)| (name.clone(), log.dropped.load(Ordering::Relaxed)))
            .collect()
    }

    /// Charges `text` to `function`'s rate limit; false (and the lines
    /// counted as dropped) if it is over.
    fn admit(&self, function: &str, text: &str) -> bool {
        let log = self.function(function);
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        let cost = (text.len() + lines * LINE_COST) as f64;
        let admitted = log
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(cost);
        if !admitted {
            log.count_dropped(lines);
        }
        admitted
    }

    /// Starts the writer thread and returns the queue to it.
    fn start_writer(self: &Arc<Self>) -> io::Result<SyncSender<Chunk>> {
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let store = self.clone();
        std::thread::Builder::new()
            .name("wisp-logs".into())
            .spawn(move || store.write_loop(rx))?;
        Ok(tx)
    }

    fn write_loop(&self, rx: Receiver<Chunk>) {
        for chunk in rx {
            self.append(&chunk.function, &chunk.instance, &chunk.stream, &chunk.text);
        }
    }

    /// Appends each line of `text` that `function`'s `instance` wrote on
    /// `stream`, after a line saying how many were dropped before it, if
    /// any. Errors are logged, never returned: output must not fail a
    /// request.
    pub fn append(&self, function: &str, instance: &str, stream: &str, text: &str) {
        let log = self.function(function);
        let unreported = log.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            let note = format!(
                "wisp: {unreported} lines of output dropped (over {} KiB/s, or the log writer behind)",
                LOG_RATE_BYTES as u64 / 1024
            );
            self.append_lines(&log, function, "wisp", "stderr", &note);
        }
        self.append_lines(&log, function, instance, stream, text);
    }

    fn append_lines(
        &self,
        log: &FunctionLog,
        function: &str,
        instance: &str,
        stream: &str,
        text: &str,
    ) {
        let timestamp = now_rfc3339();
        let mut file = log.file.lock().unwrap_or_else(PoisonError::into_inner);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut cut = line.len().min(MAX_LINE);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let entry = LogLine {
                name: function.to_owned(),
                namespace: "openfaas-fn".to_owned(),
                instance: instance.to_owned(),
                timestamp: timestamp.clone(),
                stream: stream.to_owned(),
                text: line[..cut].to_owned(),
            };
            if let Err(e) = self.write(&mut file, function, &entry) {
                tracing::warn!(function, error = %e, "writing the function's log failed");
            }
            if let Some(tx) = log.tx.get() {
                let _ = tx.send(entry);
            }
        }
    }

    fn write(
        &self,
        file: &mut Option<(File, u64)>,
        function: &str,
        entry: &LogLine,
    ) -> io::Result<()> {
        let path = self.path(function);
        if file.is_none() {
            let f = open_log(&path)?;
            let size = f.metadata()?.len();
            *file = Some((f, size));
        }
        let mut bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some((_, size)) = file.as_ref()
            && *size + bytes.len() as u64 > self.max_bytes
        {
            fs::rename(&path, rotated(&path))?;
            let f = open_log(&path)?;
            *file = Some((f, 0));
        }
        if let Some((f, size)) = file.as_mut() {
            f.write_all(&bytes)?;
            *size += bytes.len() as u64;
        }
        Ok(())
    }

    /// The last `tail` lines (all kept lines if `None`), oldest first.
    pub fn tail(&self, function: &str, tail: Option<usize>) -> io::Result<Vec<LogLine>> {
        let path = self.path(function);
        let mut lines = Vec::new();
        for file in [rotated(&path), path] {
            match File::open(&file) {
                Ok(f) => {
                    for line in BufReader::new(f).lines() {
                        if let Ok(entry) = serde_json::from_str::<LogLine>(&line?) {
                            lines.push(entry);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(n) = tail {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        Ok(lines)
    }

    /// New lines of `function` as they are written.
    pub fn follow(&self, function: &str) -> broadcast::Receiver<LogLine> {
        self.function(function)
            .tx
            .get_or_init(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    /// Deletes a function's log (when the function is deleted).
    pub fn remove(&self, function: &str) {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(function);
        let path = self.path(function);
        let _ = fs::remove_file(rotated(&path));
        let _ = fs::remove_file(path);
    }
}

/// The server's log store, installed once at start. Backends write
/// handler output through [`record`] rather than holding the store, so that
/// every place that captures output (wasm pipes, container init messages)
/// reaches it without plumbing; with none installed (unit tests), output
/// goes only to the server's own log.
static STORE: std::sync::OnceLock<(Arc<LogStore>, SyncSender<Chunk>)> = std::sync::OnceLock::new();

/// Installs the store [`record`] writes to and starts its writer thread;
/// the first call wins.
pub fn install(store: Arc<LogStore>) -> io::Result<()> {
    if STORE.get().is_some() {
        return Ok(());
    }
    let queue = store.start_writer()?;
    let _ = STORE.set((store, queue));
    Ok(())
}

/// Records handler output (see the module's introduction: rate-limited,
/// written by the store's thread) and mirrors it to the server's log at
/// debug level.
pub fn record(function: &str, instance: &str, stream: &str, text: &str) {
    // Nothing written: nothing to wake the writer thread for (a guest that
    // prints nothing used to send two empty chunks per request).
    if text.is_empty() {
        return;
    }
    if tracing::enabled!(target: "wisp::function", tracing::Level::DEBUG) {
        for line in text.lines().filter(|l| !l.is_empty()) {
            tracing::debug!(target: "wisp::function", function, instance, stream, "{}", escape_controls(line));
        }
    }
    let Some((store, queue)) = STORE.get() else {
        return;
    };
    if !store.admit(function, text) {
        return;
    }
    let chunk = Chunk {
        function: function.to_owned(),
        instance: instance.to_owned(),
        stream: stream.to_owned(),
        text: text.to_owned(),
    };
    if let Err(TrySendError::Full(chunk) | TrySendError::Disconnected(chunk)) =
        queue.try_send(chunk)
    {
        let lines = chunk.text.lines().filter(|l| !l.trim().is_empty()).count();
        store.function(function).count_dropped(lines);
    }
}

impl FunctionLog {
    fn count_dropped(&self, lines: usize) {
        let lines = lines as u64;
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        self.unreported.fetch_add(lines, Ordering::Relaxed);
    }
}

/// `text` with every control character escaped (`\n`, `\u{1b}`, …), for
/// handler output shown on the server's log or an operator's terminal: a
/// function must not be able to forge log lines or send escape sequences
/// to the terminal (the NDJSON files keep the bytes as written, escaped by
/// JSON).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Now as RFC 3339 UTC with milliseconds.
fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), Some(now.subsec_millis()))
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp, with
/// milliseconds when given.
pub fn rfc3339(secs: u64, millis: Option<u32>) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = millis.map_or_else(String::new, |ms| format!(".{ms:03}"));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-11-29T10:00:00Z`,
/// `2026-11-29t10:00:00.5+01:00`) into milliseconds since the Unix epoch;
/// `None` if it is not one. Fractions past milliseconds are cut, a leap
/// second counts as the second before it.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let kept = &text[start..at.min(start + 3)];
        millis = kept.parse::<i64>().ok()? * 10_i64.pow(3 - kept.len() as u32);
    }
    let offset_minutes = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Mode of every log file: the server's user only.
const LOG_FILE_MODE: u32 = 0o600;

/// Opens a log file for appending, making it 0600 if it is new.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain text ü"), "plain text ü");
        assert_eq!(
            escape_controls("a\x1b]0;title\x07b\r\nFAKE\tc"),
            "a\\u{1b}]0;title\\u{7}b\\r\\nFAKE\\tc"
        );
        assert!(
            !escape_controls("\x1b[2J\u{9b}")
                .chars()
                .any(char::is_control)
        );
    }

    use super::*;

    #[test]
    fn lines_are_kept_rotated_and_tailed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), 4096).unwrap();
        let mut rx = store.follow("f");
        store.append("f", "i1", "stderr", "first\n\nsecond\n");
        assert_eq!(rx.try_recv().unwrap().text, "first");
        let tail = store.tail("f", Some(1)).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].text, "second");
        assert_eq!(tail[0].stream, "stderr");
        for i in 0..200 {
            store.append("f", "i1", "stdout", &format!("line {i}"));
        }
        let all = store.tail("f", None).unwrap();
        assert!(all.len() < 200, "bounded: {}", all.len());
        assert_eq!(all.last().unwrap().text, "line 199");
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 2 * 4096, "{on_disk} bytes");
        store.remove("f");
        assert!(store.tail("f", None).unwrap().is_empty());
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5z"), Some(1500));
        assert_eq!(
            parse_rfc3339("2000-02-29T01:00:00.123456789+01:00"),
            Some(951_782_400_123)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59-00:00"), Some(-1000));
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z"),
            Some(1_483_228_799_000)
        );
        for bad in [
            "",
            "2026-11-29",
            "2026-11-29T10:00:00",
            "2026-11-29 10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T10:00:00.Z",
            "2026-11-29T10:00:00+1:00",
            "2026-11-29T10:00:00+01:00x",
            "+026-11-29T10:00:00Z",
            "2026-11-29T10:00:00\u{e9}",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn written_timestamps_parse_back(secs in 0u64..253_402_300_800, millis in 0u32..1000) {
            let text = rfc3339(secs, Some(millis));
            let expected = i64::try_from(secs).unwrap() * 1000 + i64::from(millis);
            proptest::prop_assert_eq!(parse_rfc3339(&text), Some(expected));
            let whole = rfc3339(secs, None);
            proptest::prop_assert_eq!(parse_rfc3339(&whole), Some(expected - i64::from(millis)));
        }

        #[test]
        fn an_offset_names_the_same_instant(secs in 86_400u64..253_402_214_400, minutes in -1439i64..=1439) {
            // The local time at `minutes` east of UTC, written with its offset.
            let local = i64::try_from(secs).unwrap() + minutes * 60;
            let utc = rfc3339(u64::try_from(local).unwrap(), None);
            let sign = if minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{}{sign}{:02}:{:02}",
                utc.trim_end_matches('Z'),
                minutes.abs() / 60,
                minutes.abs() % 60
            );
            proptest::prop_assert_eq!(parse_rfc3339(&text), Some(i64::try_from(secs).unwrap() * 1000));
        }

        #[test]
        fn any_text_is_parsed_or_refused(text in "\\PC{0,40}", near in "[0-9T:.+Zz-]{15,32}") {
            let _ = parse_rfc3339(&text);
            let _ = parse_rfc3339(&near);
        }
    }
}
