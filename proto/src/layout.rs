//! How a session's chunks are cut into RaptorQ source blocks and symbols.
//!
//! Both ends derive the same blocks from the chunk lengths, the symbol size and the largest
//! block, so no block boundaries travel on the wire. A chunk of `n` symbols is cut into
//! `ceil(n / max_block_symbols)` blocks of nearly equal size (the first ones one symbol
//! longer), as RFC 6330's partition does; a block's last symbol is zero-padded to full size.

use raptorq::ObjectTransmissionInformation;

/// Default largest source block, in symbols: a 4 MiB chunk is one block. RaptorQ decodes a
/// block of this size at several hundred MB/s on one core; larger blocks resist longer
/// bursts of loss with the same repair share.
pub const DEFAULT_MAX_BLOCK_SYMBOLS: u32 = 4096;

/// Most source blocks in one chunk: a data datagram carries the block number in 8 bits.
pub const MAX_BLOCKS: u32 = 256;

/// Largest block RaptorQ allows (RFC 6330, K'max).
pub const MAX_BLOCK_SYMBOLS: u32 = 56403;

/// Why a layout was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A chunk has no bytes.
    #[error("chunk {0} is empty")]
    EmptyChunk(u32),
    /// The symbol size is zero.
    #[error("symbol size must be at least 1 byte")]
    SymbolSize,
    /// The block limit is outside 1..=56403 symbols.
    #[error("blocks must hold 1 to {MAX_BLOCK_SYMBOLS} symbols, not {0}")]
    BlockSymbols(u32),
    /// A chunk needs more than [`MAX_BLOCKS`] blocks.
    #[error("chunk {0} is too large for this symbol size")]
    ChunkTooLarge(u32),
    /// More than `u32::MAX - 1` chunks.
    #[error("too many chunks")]
    TooManyChunks,
}

/// One source block of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// First byte of the block in its chunk.
    pub offset: usize,
    /// Bytes of the chunk in the block (the last symbol may be partly padding).
    pub len: usize,
    /// Source symbols (K).
    pub symbols: u32,
}

/// The shape of a session: chunk lengths and how they are coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    symbol_size: u16,
    max_block_symbols: u32,
    chunk_lens: Vec<u32>,
}

impl Layout {
    /// Checks and builds a layout.
    pub fn new(
        symbol_size: u16,
        max_block_symbols: u32,
        chunk_lens: Vec<u32>,
    ) -> Result<Self, LayoutError> {
        if symbol_size == 0 {
            return Err(LayoutError::SymbolSize);
        }
        if !(1..=MAX_BLOCK_SYMBOLS).contains(&max_block_symbols) {
            return Err(LayoutError::BlockSymbols(max_block_symbols));
        }
        if chunk_lens.len() >= u32::MAX as usize {
            return Err(LayoutError::TooManyChunks);
        }
        for (i, &len) in chunk_lens.iter().enumerate() {
            if len == 0 {
                return Err(LayoutError::EmptyChunk(i as u32));
            }
            let symbols = (len as u64).div_ceil(symbol_size as u64);
            if symbols.div_ceil(max_block_symbols as u64) > MAX_BLOCKS as u64 {
                return Err(LayoutError::ChunkTooLarge(i as u32));
            }
        }
        Ok(Self {
            symbol_size,
            max_block_symbols,
            chunk_lens,
        })
    }

    /// Bytes per symbol.
    pub fn symbol_size(&self) -> u16 {
        self.symbol_size
    }

    /// Largest block in symbols.
    pub fn max_block_symbols(&self) -> u32 {
        self.max_block_symbols
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        // `new` keeps the count below `u32::MAX`.
        self.chunk_lens.len() as u32
    }

    /// Every chunk's length.
    pub fn chunk_lens(&self) -> &[u32] {
        &self.chunk_lens
    }

    /// Bytes of chunk `i`.
    pub fn chunk_len(&self, i: u32) -> usize {
        self.chunk_lens[i as usize] as usize
    }

    /// Total bytes of all chunks.
    pub fn total_bytes(&self) -> u64 {
        self.chunk_lens.iter().map(|&l| l as u64).sum()
    }

    /// The source blocks of chunk `i`.
    pub fn blocks(&self, i: u32) -> Vec<Block> {
        let t = self.symbol_size as usize;
        let len = self.chunk_len(i);
        let symbols = len.div_ceil(t) as u32;
        let n = symbols.div_ceil(self.max_block_symbols);
        let (small, extra) = (symbols / n, symbols % n);
        let mut offset = 0;
        (0..n)
            .map(|b| {
                let k = small + u32::from(b < extra);
                let start = offset;
                offset = (offset + k as usize * t).min(len);
                Block {
                    offset: start,
                    len: offset - start,
                    symbols: k,
                }
            })
            .collect()
    }

    /// RaptorQ parameters for one block of `symbols` symbols.
    pub(crate) fn oti(&self, symbols: u32) -> ObjectTransmissionInformation {
        ObjectTransmissionInformation::new(
            symbols as u64 * self.symbol_size as u64,
            self.symbol_size,
            1,
            1,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_chunk() {
        let l = Layout::new(1000, 3, vec![1, 999, 1000, 1001, 7500, 10_000]).unwrap();
        for i in 0..l.chunks() {
            let blocks = l.blocks(i);
            let mut at = 0;
            for b in &blocks {
                assert_eq!(b.offset, at);
                assert!(b.symbols >= 1 && b.symbols <= 3);
                assert!(b.len <= b.symbols as usize * 1000);
                assert!(b.len > (b.symbols as usize - 1) * 1000);
                at += b.len;
            }
            assert_eq!(at, l.chunk_len(i), "chunk {i}");
        }
        assert_eq!(l.blocks(4).len(), 3);
        let ks: Vec<u32> = l.blocks(4).iter().map(|b| b.symbols).collect();
        assert_eq!(ks, [3, 3, 2]);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert_eq!(
            Layout::new(1000, 8, vec![5, 0]),
            Err(LayoutError::EmptyChunk(1))
        );
        assert_eq!(Layout::new(0, 8, vec![5]), Err(LayoutError::SymbolSize));
        assert_eq!(
            Layout::new(8, 0, vec![5]),
            Err(LayoutError::BlockSymbols(0))
        );
        assert_eq!(
            Layout::new(1, 1, vec![70_000]),
            Err(LayoutError::ChunkTooLarge(0))
        );
    }
}
