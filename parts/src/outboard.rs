//! Verified ranged reads of a part. A part id is the blake3 hash of the file, and blake3 is a
//! tree hash: the id is the root of a binary tree over the file's 1 KiB chunks. The *outboard*
//! of a part keeps that tree's inner hashes down to groups of 16 KiB (64 bytes per group, about
//! 0.4% of the part). With it, any byte range rounded out to whole groups is checked against
//! the part id alone: the group's bytes hash to a leaf, the leaf and the outboard's hashes
//! along the path hash to the root. A flipped byte anywhere in the range, or in the outboard
//! itself, makes the root differ. The outboard needs no trust and no record of its own: it is
//! stored next to the part's object and checked by every read that uses it.

use std::ops::Range;

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{ReadAt, encode_ranges_validated};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use bytes::Bytes;

use crate::{PartError, PartId};

/// The unit of verification: ranged reads are rounded out to whole groups of this many bytes.
pub const VERIFIED_BLOCK_BYTES: u64 = 16 * 1024;
const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

/// A part's outboard: its size and the inner hashes of its blake3 tree, in pre-order.
#[derive(Clone, Debug)]
pub struct PartOutboard {
    outboard: PreOrderMemOutboard<Bytes>,
}

impl PartOutboard {
    /// Hashes a whole part: its id, and the outboard's bytes (what is stored next to the object).
    pub fn compute(part: &[u8]) -> (PartId, Bytes) {
        let outboard = PreOrderMemOutboard::create(part, BLOCK_SIZE);
        (PartId::from_hash(outboard.root), Bytes::from(outboard.data))
    }

    /// The outboard of part `id` of `size` bytes, from stored bytes. Refused when their length
    /// is not the tree's; whether they are right shows when a range is checked.
    pub fn new(id: &PartId, size: u64, hashes: Bytes) -> Result<Self, PartError> {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        if hashes.len() as u64 != tree.outboard_size() {
            return Err(PartError::BadOutboard {
                part: *id,
                reason: format!("{} bytes for a {size}-byte part, expected {}", hashes.len(), tree.outboard_size()),
            });
        }
        let root = bao_tree::blake3::Hash::from_bytes(*id.as_bytes());
        Ok(PartOutboard { outboard: PreOrderMemOutboard { root, tree, data: hashes } })
    }

    pub fn id(&self) -> PartId {
        PartId::from_hash(self.outboard.root)
    }

    pub fn size(&self) -> u64 {
        self.outboard.tree.size()
    }

    /// `range` rounded out to whole verification groups, and cut at the end of the part.
    pub fn aligned(&self, range: Range<u64>) -> Range<u64> {
        let start = range.start - range.start % VERIFIED_BLOCK_BYTES;
        let end = range.end.div_ceil(VERIFIED_BLOCK_BYTES).saturating_mul(VERIFIED_BLOCK_BYTES);
        start.min(self.size())..end.min(self.size())
    }

    /// Checks that `data`, read from the part at the aligned offset `start`, is the part's:
    /// Ok only if every group it covers hashes up to the part id through the outboard.
    pub fn verify(&self, start: u64, data: &[u8]) -> Result<(), PartError> {
        let end = start + data.len() as u64;
        if !start.is_multiple_of(VERIFIED_BLOCK_BYTES)
            || (!end.is_multiple_of(VERIFIED_BLOCK_BYTES) && end != self.size())
        {
            return Err(PartError::Unverified {
                part: self.id(),
                range: start..end,
                reason: "the range is not aligned to whole verification groups".into(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let ranges = ChunkRanges::from(ChunkNum::chunks(start)..ChunkNum::chunks(end));
        encode_ranges_validated(Window { start, data }, &self.outboard, &ranges, std::io::sink())
            .map_err(|e| PartError::Unverified { part: self.id(), range: start..end, reason: e.to_string() })
    }
}

/// The bytes of one window of a part, as bao-tree's validating encoder reads them.
struct Window<'a> {
    start: u64,
    data: &'a [u8],
}

impl ReadAt for Window<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = pos
            .checked_sub(self.start)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| *o <= self.data.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "outside the bytes read"))?;
        let available = &self.data[offset..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_root_is_the_part_id_and_the_outboard_is_small() {
        for size in [0, 1, 1024, 16 * 1024, 16 * 1024 + 1, 1_000_000] {
            let bytes = part(size);
            let (id, hashes) = PartOutboard::compute(&bytes);
            assert_eq!(id, PartId::of_bytes(&bytes), "size {size}");
            assert!(hashes.len() as u64 <= size as u64 / VERIFIED_BLOCK_BYTES * 64, "size {size}: {}", hashes.len());
            assert!(PartOutboard::new(&id, size as u64, hashes).is_ok());
        }
    }

    #[test]
    fn any_aligned_range_verifies_and_any_flipped_byte_is_caught() {
        let bytes = part(1_000_000);
        let (id, hashes) = PartOutboard::compute(&bytes);
        let outboard = PartOutboard::new(&id, bytes.len() as u64, hashes.clone()).unwrap();
        for wanted in [0..10, 5_000..40_000, 999_990..1_000_000, 0..1_000_000, 500_000..500_001] {
            let range = outboard.aligned(wanted.clone());
            assert!(range.start <= wanted.start && range.end >= wanted.end);
            let data = &bytes[range.start as usize..range.end as usize];
            outboard.verify(range.start, data).unwrap_or_else(|e| panic!("{wanted:?}: {e}"));
            let mut flipped = data.to_vec();
            let at = flipped.len() / 2;
            flipped[at] ^= 1;
            assert!(outboard.verify(range.start, &flipped).is_err(), "a flipped byte in {wanted:?}");
        }
        let range = outboard.aligned(100_000..100_100);
        let shifted = &bytes[range.start as usize + 1..range.end as usize + 1];
        assert!(outboard.verify(range.start, shifted).is_err(), "bytes from another offset");
        assert!(outboard.verify(1, &bytes[1..VERIFIED_BLOCK_BYTES as usize]).is_err(), "unaligned");

        let mut bad_hashes = hashes.to_vec();
        bad_hashes[hashes.len() / 3] ^= 1;
        let bad = PartOutboard::new(&id, bytes.len() as u64, Bytes::from(bad_hashes)).unwrap();
        let caught = (0..bytes.len() as u64).step_by(VERIFIED_BLOCK_BYTES as usize).any(|start| {
            let range = bad.aligned(start..start + 1);
            bad.verify(range.start, &bytes[range.start as usize..range.end as usize]).is_err()
        });
        assert!(caught, "a flipped byte in the outboard fails the ranges that use it");
        let wrong_id = PartOutboard::new(&PartId::of_bytes(b"x"), bytes.len() as u64, hashes.clone()).unwrap();
        assert!(wrong_id.verify(0, &bytes[..VERIFIED_BLOCK_BYTES as usize]).is_err(), "another part's id");
        assert!(PartOutboard::new(&id, bytes.len() as u64 + 100_000, hashes).is_err(), "wrong length");
    }
}
