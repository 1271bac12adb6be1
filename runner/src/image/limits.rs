//! What one import may write into the store: [`ImportLimits`], and the
//! [`Budget`] that counts against them while the bytes stream.
//!
//! One budget covers a whole import: the files copied out of an archive
//! (or a layout directory) into staging, the regular files of every layer
//! it unpacks (their declared size, so a sparse file counts at its full
//! length, and charged before a byte is written), the bytes a layer stream
//! carries after its tar ends, and the entries of the archive and of every
//! layer. Layers and blobs the store already holds cost nothing. So an
//! upload of a few kilobytes that decompresses to gigabytes is refused
//! once the limit is crossed, never after.
//!
//! Limits: metadata (directories, the image record, layer markers) is not
//! charged in bytes, only as entries. The counters are atomic: a pull
//! downloads several layers at once against one budget.

use std::sync::atomic::{AtomicU64, Ordering};

/// Default cap on the bytes one image import writes.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 4 << 30;
/// Default cap on the entries (files, directories, links) of one image.
pub const DEFAULT_MAX_IMAGE_ENTRIES: u64 = 1_000_000;

/// Caps on one image import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Bytes written: copies into staging plus unpacked regular files.
    pub max_bytes: u64,
    /// Entries of the archive and of the layers unpacked.
    pub max_entries: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_entries: DEFAULT_MAX_IMAGE_ENTRIES,
        }
    }
}

/// An import went past one of its [`ImportLimits`]. The text names the
/// `wisp serve` setting, so whoever reads it knows what to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    #[error("the image is larger than the limit of {limit} bytes (wisp serve --max-image-size)")]
    Bytes { limit: u64 },
    #[error(
        "the image has more than the limit of {limit} entries (wisp serve --max-image-entries)"
    )]
    Entries { limit: u64 },
}

/// What one import has spent so far, against its limits.
#[derive(Debug)]
pub struct Budget {
    limits: ImportLimits,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Budget {
    pub fn new(limits: ImportLimits) -> Self {
        Budget {
            limits,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        }
    }

    /// Charges `n` bytes about to be written (or read through).
    pub fn spend_bytes(&self, n: u64) -> Result<(), OverLimit> {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > self.limits.max_bytes {
            return Err(OverLimit::Bytes {
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Charges one entry.
    pub fn spend_entry(&self) -> Result<(), OverLimit> {
        let total = self
            .entries
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if total > self.limits.max_entries {
            return Err(OverLimit::Entries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Bytes and entries charged so far.
    pub fn spent(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_until_the_limit_and_refuses_past_it() {
        let budget = Budget::new(ImportLimits {
            max_bytes: 10,
            max_entries: 2,
        });
        assert_eq!(budget.spend_bytes(4), Ok(()));
        assert_eq!(budget.spend_bytes(6), Ok(()));
        assert_eq!(budget.spend_bytes(1), Err(OverLimit::Bytes { limit: 10 }));
        assert_eq!(budget.spend_entry(), Ok(()));
        assert_eq!(budget.spend_entry(), Ok(()));
        assert_eq!(budget.spend_entry(), Err(OverLimit::Entries { limit: 2 }));
        assert_eq!(
            Budget::new(ImportLimits::default()).spend_bytes(u64::MAX),
            Err(OverLimit::Bytes {
                limit: DEFAULT_MAX_IMAGE_BYTES
            })
        );
        let text = OverLimit::Bytes { limit: 10 }.to_string();
        assert!(text.contains("10 bytes") && text.contains("--max-image-size"));
    }
}
