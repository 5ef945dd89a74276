//! BLAKE3 tree arithmetic for frames.
//!
//! A frame of a file is a complete BLAKE3 subtree when the frame size is a
//! power of two of at least 1 KiB and the frame starts at a multiple of it.
//! So each side hashes each frame exactly once, into its chaining value
//! (CV); the CV feeds the frame's MAC, and the file's BLAKE3 (the same value
//! `b3sum` prints) is assembled from the CVs without reading the file again.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt,
    Mode,
};

pub const MIN_FRAME: u64 = 1024;
pub const MAX_FRAME: u64 = 64 << 20;

/// True for the frame sizes the tree arithmetic supports.
pub fn valid_frame_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_FRAME..=MAX_FRAME).contains(&size)
}

/// True when `len` bytes starting at `offset` form a subtree of any BLAKE3
/// tree they could belong to; the hasher would panic on anything else.
pub fn valid_subtree(offset: u64, len: u64) -> bool {
    if len == 0 || offset % blake3::CHUNK_LEN as u64 != 0 {
        return false;
    }
    match blake3::hazmat::max_subtree_len(offset) {
        None => true,
        Some(max) => len <= max,
    }
}

/// The chaining value of `data` as the subtree starting at `offset`.
/// Callers check [`valid_subtree`] first.
pub fn subtree_cv(offset: u64, data: &[u8]) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Number of frames a file of `size` bytes is cut into.
pub fn frame_count(size: u64, frame_size: u64) -> u64 {
    size.div_ceil(frame_size)
}

/// Length of frame `index`.
pub fn frame_len(size: u64, frame_size: u64, index: u64) -> u64 {
    frame_size.min(size - index * frame_size)
}

/// The BLAKE3 of a file of `size` bytes (more than one frame) from the CVs
/// of its frames, in order.
pub fn root_from_cvs(cvs: &[ChainingValue], frame_size: u64, size: u64) -> blake3::Hash {
    debug_assert!(size > frame_size && cvs.len() as u64 == frame_count(size, frame_size));
    let left = left_subtree_len(size);
    let l = subtree(cvs, frame_size, 0, left);
    let r = subtree(cvs, frame_size, left, size - left);
    merge_subtrees_root(&l, &r, Mode::Hash)
}

fn subtree(cvs: &[ChainingValue], frame_size: u64, start: u64, len: u64) -> ChainingValue {
    if len <= frame_size {
        return cvs[(start / frame_size) as usize];
    }
    // Both halves start on a frame boundary: left_subtree_len is a power of
    // two no smaller than frame_size when len exceeds it.
    let left = left_subtree_len(len);
    let l = subtree(cvs, frame_size, start, left);
    let r = subtree(cvs, frame_size, start + left, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_by_frames(data: &[u8], frame_size: u64) -> blake3::Hash {
        let size = data.len() as u64;
        if size <= frame_size {
            return blake3::hash(data);
        }
        let cvs: Vec<_> = (0..frame_count(size, frame_size))
            .map(|i| {
                let off = i * frame_size;
                let len = frame_len(size, frame_size, i);
                assert!(valid_subtree(off, len));
                subtree_cv(off, &data[off as usize..(off + len) as usize])
            })
            .collect();
        root_from_cvs(&cvs, frame_size, size)
    }

    #[test]
    fn frame_cvs_assemble_to_the_plain_blake3() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for frame_size in [1024u64, 2048, 4096, 65536] {
            for size in [
                1025usize, 2047, 2048, 2049, 4096, 5000, 65536, 65537, 131072, 200_000, 300_000,
            ] {
                assert_eq!(
                    root_by_frames(&data[..size], frame_size),
                    blake3::hash(&data[..size]),
                    "frame {frame_size} size {size}"
                );
            }
        }
    }

    #[test]
    fn subtree_validity_matches_the_hasher() {
        assert!(!valid_subtree(0, 0));
        assert!(!valid_subtree(1, 10));
        assert!(valid_subtree(0, u64::MAX));
        assert!(valid_subtree(1024, 1024));
        assert!(!valid_subtree(1024, 1025));
        assert!(valid_subtree(4096, 4096));
        assert!(valid_frame_size(1 << 20));
        assert!(!valid_frame_size(1000));
        assert!(!valid_frame_size(3 << 20));
    }
}
