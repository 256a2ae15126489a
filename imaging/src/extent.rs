//! Used-extent maps: sorted, merged, non-overlapping byte ranges.
//!
//! Readers add ranges in any order; [`ExtentMap::normalize`] sorts and merges them. The map is
//! stored run-length style in the manifest (`[start, len]` pairs).

use serde::{Deserialize, Serialize};

/// One byte range `start..start+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// Number of bytes; never 0 in a normalized map.
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A set of byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExtentMap {
    extents: Vec<Extent>,
}

impl ExtentMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `start..start+len` (saturating at `u64::MAX`). Call [`Self::normalize`] afterwards
    /// when ranges were added out of order; [`Self::push`] merges with the last range at once.
    pub fn push(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let len = len.min(u64::MAX - start);
        if let Some(last) = self.extents.last_mut() {
            if start >= last.start && start <= last.end() {
                let end = last.end().max(start + len);
                last.len = end - last.start;
                return;
            }
        }
        self.extents.push(Extent { start, len });
    }

    /// Sorts and merges overlapping or touching ranges.
    pub fn normalize(&mut self) {
        if self.is_normalized() {
            return;
        }
        let mut v = std::mem::take(&mut self.extents);
        v.sort_unstable();
        for e in v {
            self.push(e.start, e.len);
        }
    }

    /// Whether the ranges are sorted, non-empty and neither overlap nor touch.
    pub fn is_normalized(&self) -> bool {
        self.extents.iter().all(|e| e.len > 0)
            && self.extents.windows(2).all(|w| w[0].end() < w[1].start)
    }

    /// The union of `self` and `other`.
    pub fn union(&self, other: &Self) -> Self {
        let mut m = Self {
            extents: self.extents.iter().chain(&other.extents).copied().collect(),
        };
        m.normalize();
        m
    }

    /// Moves every range by `delta` bytes.
    pub fn shifted(&self, delta: u64) -> Self {
        Self {
            extents: self
                .extents
                .iter()
                .map(|e| Extent {
                    start: e.start + delta,
                    len: e.len,
                })
                .collect(),
        }
    }

    /// The ranges, sorted.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.extents.iter().copied()
    }

    /// The number of ranges.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// Whether there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// One past the last byte covered (0 when empty).
    pub fn end(&self) -> u64 {
        self.extents.last().map_or(0, Extent::end)
    }

    /// The ranges clipped to `start..end`, in order.
    pub fn clip(&self, start: u64, end: u64) -> impl Iterator<Item = Extent> + '_ {
        // First extent that ends after `start`.
        let first = self.extents.partition_point(|e| e.end() <= start);
        self.extents[first..]
            .iter()
            .take_while(move |e| e.start < end)
            .map(move |e| {
                let s = e.start.max(start);
                let t = e.end().min(end);
                Extent {
                    start: s,
                    len: t - s,
                }
            })
    }

    /// Whether any byte of `start..end` is covered.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        self.clip(start, end).next().is_some()
    }

    /// Whether every byte of `start..end` is covered.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let mut pos = start;
        for e in self.clip(start, end) {
            if e.start > pos {
                return false;
            }
            pos = e.end();
        }
        pos >= end
    }

    /// The parts of `start..end` this map does not cover.
    pub fn gaps(&self, start: u64, end: u64) -> Self {
        let mut out = Self::new();
        let mut pos = start;
        for e in self.clip(start, end) {
            out.push(pos, e.start - pos);
            pos = e.end();
        }
        if pos < end {
            out.push(pos, end - pos);
        }
        out
    }

    /// Adds one range per set bit of `bitmap` (bit `i` of byte `i/8`, least significant first),
    /// each `unit` bytes long, starting at `base + (first_index + i) * unit`, for the first
    /// `count` bits only. Bits past `count` are ignored.
    pub fn push_bitmap(
        &mut self,
        bitmap: &[u8],
        count: u64,
        first_index: u64,
        unit: u64,
        base: u64,
    ) {
        let count = count.min(bitmap.len() as u64 * 8);
        let mut i = 0u64;
        while i < count {
            let byte = bitmap[(i / 8) as usize];
            // Skip whole empty or full bytes quickly.
            if i % 8 == 0 && i + 8 <= count && (byte == 0 || byte == 0xff) {
                if byte == 0xff {
                    self.push(base + (first_index + i) * unit, 8 * unit);
                }
                i += 8;
                continue;
            }
            if byte & (1 << (i % 8)) != 0 {
                self.push(base + (first_index + i) * unit, unit);
            }
            i += 1;
        }
    }
}

impl FromIterator<Extent> for ExtentMap {
    fn from_iter<T: IntoIterator<Item = Extent>>(iter: T) -> Self {
        let mut m = Self {
            extents: iter.into_iter().collect(),
        };
        m.normalize();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_merges_and_normalize_sorts() {
        let mut m = ExtentMap::new();
        m.push(10, 5);
        m.push(15, 5);
        m.push(0, 3);
        m.push(2, 3);
        m.normalize();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Extent { start: 0, len: 5 }, Extent { start: 10, len: 10 }]
        );
        assert_eq!(m.total(), 15);
        assert_eq!(m.end(), 20);
        assert!(m.is_normalized());
    }

    #[test]
    fn clip_covers_gaps() {
        let m: ExtentMap = [Extent { start: 0, len: 10 }, Extent { start: 20, len: 10 }]
            .into_iter()
            .collect();
        assert_eq!(m.clip(5, 25).map(|e| e.len).sum::<u64>(), 10);
        assert!(m.covers(2, 8));
        assert!(!m.covers(8, 22));
        assert!(m.intersects(9, 20));
        assert!(!m.intersects(10, 20));
        assert_eq!(
            m.gaps(0, 40).iter().collect::<Vec<_>>(),
            vec![Extent { start: 10, len: 10 }, Extent { start: 30, len: 10 }]
        );
    }

    #[test]
    fn bitmap_bits() {
        let mut m = ExtentMap::new();
        // bits 0,1 set; byte 1 full; bit 17 set but count stops at 17.
        m.push_bitmap(&[0b0000_0011, 0xff, 0b0000_0010], 17, 0, 4096, 1000);
        m.normalize();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![
                Extent {
                    start: 1000,
                    len: 2 * 4096
                },
                Extent {
                    start: 1000 + 8 * 4096,
                    len: 8 * 4096
                }
            ]
        );
    }
}
