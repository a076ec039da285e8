//! How the model's weights are held in memory: the file read into
//! anonymous memory backed by huge pages (or mapped as it is), TQ1_0
//! matrices rewritten as TQ2_0 blocks at load, TQ2_0 and I2_S matrices
//! regrouped for the AVX-512 kernels (`kernels::group_tq2`) into one
//! arena (`Arena`), and Q6_K output matrices' blocks permuted for them
//! (`kernels::permute_q6k`).

use std::collections::HashMap;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};

use crate::gguf::{Gguf, TensorType};
use crate::linear::Mapped;

/// How a TQ1_0 file's matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tq1Layout {
    /// Rewritten at load as TQ2_0 blocks of the same codes and scales
    /// (`quant::tq1_0_to_tq2_0`): 66 bytes per 256 weights instead of 54
    /// (a 2B4T-shaped model's layers: 440 -> 537 MB resident), decoded by
    /// the TQ2_0 kernels. Extracting five base-3 digits from a byte costs
    /// more arithmetic than the bytes it saves take to read: TQ1_0 decoding
    /// is compute-bound on every CPU measured (AVX-512 at 55-58% of the
    /// bandwidth ceiling), TQ2_0 is not (81-85%). Same logits, bit for bit.
    Unpacked,
    /// As the file holds them: the least memory, the slowest decoding.
    Packed,
}

impl Default for Tq1Layout {
    /// Unpacked where the file copy's pages can be given back once
    /// rewritten (`release`: Unix), so memory grows by the 12 bytes per
    /// block only; elsewhere the whole packed copy would stay resident
    /// beside the unpacked one, so TQ1_0 stays packed.
    fn default() -> Tq1Layout {
        if cfg!(unix) {
            Tq1Layout::Unpacked
        } else {
            Tq1Layout::Packed
        }
    }
}

impl Tq1Layout {
    /// `BITNET_TQ1=packed` or `unpacked`; the default otherwise.
    pub fn from_env() -> Tq1Layout {
        match std::env::var("BITNET_TQ1").map(|v| v.to_ascii_lowercase()).as_deref() {
            Ok("packed") => Tq1Layout::Packed,
            Ok("unpacked") => Tq1Layout::Unpacked,
            _ => Tq1Layout::default(),
        }
    }
}

/// The file's bytes for the model to read its tensors from:
/// `BITNET_WEIGHTS=mmap` maps the file; otherwise `read_into_huge_pages`.
pub fn load_file(file: std::fs::File) -> std::io::Result<Mmap> {
    if std::env::var("BITNET_WEIGHTS").is_ok_and(|v| v == "mmap") {
        // SAFETY: the file is opened read-only; a concurrent writer could
        // change bytes under us, which at worst gives wrong numbers (every
        // range was bounds-checked against the length when parsing).
        unsafe { Mmap::map(&file) }
    } else {
        read_into_huge_pages(file)
    }
}

/// Anonymous memory for weights, backed by transparent huge pages where
/// the kernel gives them.
pub(crate) fn huge_page_buffer(len: usize) -> std::io::Result<MmapMut> {
    let m = MmapMut::map_anon(len.max(1))?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    Ok(m)
}

/// The file read into huge-page-backed anonymous memory. Decoding streams
/// every weight once per token; with 4 KiB file pages the hardware
/// prefetcher stops at each page boundary and the TLB misses every 4 KiB,
/// which costs a measurable share of the bandwidth (`BITNET_WEIGHTS=mmap`
/// keeps the file mapping, for comparison). Read with read(2), so the page
/// cache is not also counted in this process's RSS: resident memory stays
/// one copy of the weights.
fn read_into_huge_pages(mut file: std::fs::File) -> std::io::Result<Mmap> {
    use std::io::Read;
    let len = file.metadata()?.len() as usize;
    let mut m = huge_page_buffer(len)?;
    let mut done = 0;
    while done < len {
        let n = file.read(&mut m[done..len])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the model file shrank while loading"));
        }
        done += n;
    }
    m.make_read_only()
}

/// Every TQ1_0 matrix of `gguf` (2-D, rows a whole number of blocks,
/// inside `map`) rewritten as TQ2_0 blocks into one new huge-page buffer,
/// by tensor name; a matrix left out is one its loader rejects. The pages
/// of `map` that held them are then given back to the system (on Unix),
/// so resident memory grows by the difference, not by a second copy.
///
/// # Safety
/// Nothing may read the bytes of the rewritten tensors in `map` after
/// this returns (the model builds those matrices from the new buffer):
/// in an anonymous `map` they read as zeros.
pub unsafe fn unpack_tq1(gguf: &Gguf, map: &Mmap) -> std::io::Result<HashMap<String, Mapped>> {
    // (name, start in map, TQ1_0 bytes, start in the new buffer)
    let mut parts = Vec::new();
    let mut total = 0usize;
    for t in &gguf.tensors {
        let start = gguf.data_offset.checked_add(t.offset).and_then(|s| usize::try_from(s).ok());
        let (Some(start), Ok(elements)) = (start, usize::try_from(t.elements())) else {
            continue;
        };
        if t.ty != TensorType::TQ1_0 || t.dims.len() != 2 || !t.dims[0].is_multiple_of(256) {
            continue;
        }
        let len = elements / 256 * 54;
        if start.checked_add(len).is_none_or(|end| end > map.len()) || t.size.is_some_and(|s| s < len as u64) {
            continue;
        }
        parts.push((t.name.clone(), start, len, total));
        total += len / 54 * 66;
    }
    if parts.is_empty() {
        return Ok(HashMap::new());
    }
    let mut out = huge_page_buffer(total)?;
    for (_, start, len, at) in &parts {
        let src = &map[*start..start + len];
        // Chunks of whole blocks on the pool: 2 G weights take a second on
        // one thread.
        crate::pool::for_each_chunk_mut(&mut out[*at..at + len / 54 * 66], 66 << 10, |first, chunk| {
            let b = first / 66;
            crate::quant::tq1_0_to_tq2_0(&src[b * 54..(b + chunk.len() / 66) * 54], chunk);
        });
        // Each matrix's source pages go as soon as it is rewritten: the
        // peak stays near the final size, not a second copy of them all.
        // SAFETY: the caller's promise: nothing reads these bytes again.
        unsafe { release(map, *start, *len) };
    }
    let out = Arc::new(out.make_read_only()?);
    Ok(parts.into_iter().map(|(name, _, len, at)| (name, Mapped::new(out.clone(), at, len / 54 * 66))).collect())
}

/// One huge-page buffer holding the matrices regrouped at load, end to
/// end. Each in a buffer of its own, most of 2B4T's matrices (0.4-1.6
/// MB) were too small for a 2 MB page and read from 4 KiB pages: a
/// decoding step's products read 14% slower on one thread and 13% on two
/// (`kernels` bench, `cores`), where one buffer of them all is backed by
/// huge pages throughout. Its size is a bound reckoned from the file's
/// header (`regrouped_bound`): address space only until written.
#[derive(Debug)]
pub struct Arena {
    raw: Arc<memmap2::MmapRaw>,
    next: std::sync::Mutex<usize>,
}

/// Where each arena allocation starts: a page, so no two matrices share one.
const ARENA_ALIGN: usize = 4096;

impl Arena {
    pub fn new(capacity: usize) -> std::io::Result<Arena> {
        let raw = memmap2::MmapRaw::from(huge_page_buffer(capacity)?);
        Ok(Arena { raw: Arc::new(raw), next: std::sync::Mutex::new(0) })
    }

    /// `len` zeroed bytes of the arena, filled by `fill`, then read-only
    /// for good; None (nothing called) when the arena has no room left.
    pub fn place(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<Mapped> {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = next.next_multiple_of(ARENA_ALIGN);
            if start.checked_add(len).is_none_or(|end| end > self.raw.len()) {
                return None;
            }
            *next = start + len;
            start
        };
        // SAFETY: start..start + len is inside the mapping (checked) and
        // handed out once (the bump under the lock), so this is its only
        // reference; anonymous memory reads as zeros until written.
        fill(unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr().add(start), len) });
        // SAFETY: filled above, and never written again (no other
        // allocation overlaps it).
        Some(unsafe { Mapped::in_arena(self.raw.clone(), start, len) })
    }

    /// Bytes handed out so far, alignment included.
    pub fn used(&self) -> usize {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An upper bound of the bytes the matrices of `gguf` that may be
/// regrouped take regrouped (every 2-D I2_S, TQ2_0 and TQ1_0 tensor whose
/// rows are whole 256-weight blocks, as TQ2_0's 66 bytes per block, rows
/// up to whole groups, each from a fresh page): the `Arena` to reserve.
pub fn regrouped_bound(gguf: &Gguf) -> usize {
    let mut total = 0usize;
    for t in &gguf.tensors {
        if !matches!(t.ty, TensorType::I2S | TensorType::TQ2_0 | TensorType::TQ1_0)
            || t.dims.len() != 2
            || !t.dims[0].is_multiple_of(256)
        {
            continue;
        }
        let (Ok(cols), Ok(rows)) = (usize::try_from(t.dims[0]), usize::try_from(t.dims[1])) else { continue };
        let bytes = rows
            .checked_next_multiple_of(crate::kernels::GROUP_ROWS)
            .and_then(|r| r.checked_mul(cols / 256 * 66))
            .and_then(|b| b.checked_add(ARENA_ALIGN));
        total = total.saturating_add(bytes.unwrap_or(usize::MAX));
    }
    total
}

/// Whether the model regroups its TQ2_0 matrices at load: where the
/// kernels read that layout (`kernels::tq2_grouping`) and the pages of the
/// file's copy can be given back (`release`: Unix). Elsewhere both copies
/// would stay resident, so the file's layout stays (as `Tq1Layout` does).
pub fn regroups_tq2() -> bool {
    cfg!(unix) && crate::kernels::tq2_grouping()
}

/// A TQ2_0 matrix (`rows` rows of `blocks` blocks, as the file holds
/// them) regrouped for the AVX-512 kernels (`kernels::group_tq2`) into a
/// huge-page buffer of its own; the pages that held `src` are then given
/// back (on Unix), so memory grows by the padding only. It costs load
/// time: on the 2-core VM a 2B4T-shaped TQ2_0 file loaded in 3.8 s before
/// and 4.6-6.6 s with it, most of that the kernel zeroing the new pages.
///
/// # Safety
/// Nothing may read `src`'s bytes after this returns (in anonymous memory
/// they read as zeros): the model reads the matrix from the new buffer.
pub unsafe fn regroup_tq2(src: &Mapped, rows: usize, blocks: usize, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    use crate::kernels::{group_bytes, group_tq2};
    // SAFETY: the caller's promise.
    unsafe { regroup(src, rows, blocks * 66, group_bytes(blocks), arena, |src, dst| group_tq2(src, blocks, dst)) }
}

/// Whether the model regroups its I2_S matrices of `cols` columns at
/// load: as `regroups_tq2`, where the kernels read that layout
/// (`kernels::i2s_grouping`).
pub fn regroups_i2s(cols: usize) -> bool {
    cfg!(unix) && crate::kernels::i2s_grouping(cols)
}

/// An I2_S matrix (`rows` rows of `blocks` 256-weight blocks, as the file
/// holds them) regrouped for the AVX-512 kernels (`kernels::group_i2s`),
/// as `regroup_tq2`.
///
/// # Safety
/// As `regroup_tq2`'s.
pub unsafe fn regroup_i2s(src: &Mapped, rows: usize, blocks: usize, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    use crate::kernels::{group_i2s, i2s_group_bytes};
    // SAFETY: the caller's promise.
    unsafe { regroup(src, rows, blocks * 64, i2s_group_bytes(blocks), arena, |src, dst| group_i2s(src, blocks, dst)) }
}

/// `rows` rows of `row_bytes` bytes into groups of 16 rows of
/// `group_bytes` bytes each, in `arena` (a huge-page buffer of their own
/// when there is none or it is full), `group(rows, dst)` writing up to
/// 64 groups at a time, on the pool (2B4T's layers are 0.5 GB); then
/// `src`'s pages are given back.
///
/// # Safety
/// As `regroup_tq2`'s.
unsafe fn regroup(
    src: &Mapped,
    rows: usize,
    row_bytes: usize,
    group_bytes: usize,
    arena: Option<&Arena>,
    group: impl Fn(&[u8], &mut [u8]) + Sync,
) -> std::io::Result<Mapped> {
    use crate::kernels::GROUP_ROWS;
    let bytes = src.bytes();
    assert_eq!(bytes.len(), rows * row_bytes, "matrix bytes");
    let len = rows.div_ceil(GROUP_ROWS) * group_bytes;
    let chunk = 64 * group_bytes;
    let fill = |out: &mut [u8]| {
        crate::pool::for_each_chunk_mut(out, chunk, |at, dst| {
            let first = at / chunk * 64 * GROUP_ROWS;
            let n = (rows - first).min(64 * GROUP_ROWS);
            group(&bytes[first * row_bytes..(first + n) * row_bytes], dst);
        })
    };
    let placed = match arena.and_then(|a| a.place(len, fill)) {
        Some(m) => m,
        None => {
            let mut out = huge_page_buffer(len)?;
            fill(&mut out[..len]);
            Mapped::new(Arc::new(out.make_read_only()?), 0, len)
        }
    };
    if let Some((map, start, src_len)) = src.source() {
        // SAFETY: the caller's promise: nothing reads these bytes again.
        unsafe { release(map, start, src_len) };
    }
    Ok(placed)
}

/// Whether the model permutes its Q6_K output matrix's blocks at load:
/// where the kernels read them so (`kernels::q6k_permuting`) and the
/// file copy's pages can be given back (Unix), as `regroups_tq2`.
pub fn permutes_q6k() -> bool {
    cfg!(unix) && crate::kernels::q6k_permuting()
}

/// A Q6_K matrix with each block's values permuted for the AVX-512
/// kernels (`kernels::permute_q6k`) into a huge-page buffer of its own;
/// the pages that held `src` are then given back (on Unix), so memory
/// stays one copy.
///
/// # Safety
/// Nothing may read `src`'s bytes after this returns (in anonymous memory
/// they read as zeros): the model reads the matrix from the new buffer.
pub unsafe fn permute_q6k(src: &Mapped) -> std::io::Result<Mapped> {
    use crate::kernels::Q6K_BLOCK;
    let bytes = src.bytes();
    assert!(bytes.len().is_multiple_of(Q6K_BLOCK), "whole Q6_K blocks");
    let mut out = huge_page_buffer(bytes.len())?;
    // 1,024 blocks a task, on the pool: 2B4T's output matrix is 269 MB.
    crate::pool::for_each_chunk_mut(&mut out[..bytes.len()], 1024 * Q6K_BLOCK, |at, dst| {
        crate::kernels::permute_q6k(&bytes[at..at + dst.len()], dst);
    });
    if let Some((map, start, src_len)) = src.source() {
        // SAFETY: the caller's promise: nothing reads these bytes again.
        unsafe { release(map, start, src_len) };
    }
    Ok(Mapped::new(Arc::new(out.make_read_only()?), 0, bytes.len()))
}

/// Give back the whole pages inside `map[start..start + len]`.
///
/// # Safety
/// Nothing reads those bytes afterwards (anonymous memory reads as zeros).
unsafe fn release(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 {
            return;
        }
        // memmap2 widens a range to the page below its start: give it one
        // that starts and ends on page boundaries, inside this tensor.
        let base = map.as_ptr() as usize;
        let first = (base + start).next_multiple_of(page) - base;
        let end = (base + start + len) / page * page - base;
        // Darwin's MADV_DONTNEED is only a hint; MADV_FREE_REUSABLE is
        // what its malloc gives memory back with (off the footprint at once).
        #[cfg(target_vendor = "apple")]
        let advice = memmap2::UncheckedAdvice::FreeReusable;
        #[cfg(not(target_vendor = "apple"))]
        let advice = memmap2::UncheckedAdvice::DontNeed;
        if end > first {
            // SAFETY: the caller's promise; the range is inside map.
            let _ = unsafe { map.unchecked_advise_range(advice, first, end - first) };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_places_are_page_aligned_disjoint_and_keep_their_bytes_until_it_is_full() {
        let arena = Arena::new(5 * ARENA_ALIGN).unwrap();
        let a = arena.place(100, |b| b.fill(1)).unwrap();
        let b = arena.place(ARENA_ALIGN + 1, |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8)).unwrap();
        assert!(a.source().is_none() && b.source().is_none(), "arena bytes are not the file's");
        for m in [&a, &b] {
            assert!((m.bytes().as_ptr() as usize).is_multiple_of(ARENA_ALIGN));
        }
        assert_eq!(b.bytes().as_ptr() as usize - a.bytes().as_ptr() as usize, ARENA_ALIGN);
        assert!(a.bytes().iter().all(|&x| x == 1) && a.len() == 100);
        assert!(b.bytes().iter().enumerate().all(|(i, &x)| x == i as u8));
        assert_eq!(arena.used(), 2 * ARENA_ALIGN + 1);
        // Freshly placed bytes start zeroed; a place past the end calls nothing.
        let c = arena.place(ARENA_ALIGN, |b| assert!(b.iter().all(|&x| x == 0))).unwrap();
        assert!(arena.place(ARENA_ALIGN + 1, |_| panic!("no room, so no fill")).is_none());
        assert!(arena.place(ARENA_ALIGN, |b| b[0] = 9).is_some());
        assert!(arena.place(1, |_| panic!("full")).is_none());
        assert_eq!(c.bytes().len(), ARENA_ALIGN);
        // Clones outlive the arena's handle: the mapping is shared.
        let kept = b.clone();
        drop((arena, a, b, c));
        assert_eq!(kept.bytes()[300], 300u16 as u8);
    }

    #[test]
    fn regrouping_into_the_arena_or_a_buffer_of_its_own_gives_the_same_bytes() {
        let (rows, blocks) = (37, 2);
        let file: Vec<u8> = (0..rows * blocks * 64).map(|i| (i * 31 + i / 7) as u8).collect();
        let held = |bytes: &[u8]| {
            let mut m = MmapMut::map_anon(bytes.len()).unwrap();
            m.copy_from_slice(bytes);
            Mapped::new(Arc::new(m.make_read_only().unwrap()), 0, bytes.len())
        };
        let arena = Arena::new(1 << 20).unwrap();
        // SAFETY: the sources are private copies, never read again.
        let (own, placed) = unsafe {
            (
                regroup_i2s(&held(&file), rows, blocks, None).unwrap(),
                regroup_i2s(&held(&file), rows, blocks, Some(&arena)).unwrap(),
            )
        };
        assert!(own.source().is_some() && placed.source().is_none());
        assert_eq!(own.bytes(), placed.bytes());
        assert_eq!(placed.len(), crate::kernels::i2s_grouped_len(rows, blocks));
        // A full arena falls back to a buffer of its own.
        let small = Arena::new(64).unwrap();
        // SAFETY: as above.
        let fallback = unsafe { regroup_i2s(&held(&file), rows, blocks, Some(&small)).unwrap() };
        assert!(fallback.source().is_some() && small.used() == 0);
        assert_eq!(fallback.bytes(), own.bytes());
    }

    #[test]
    fn the_arena_bound_covers_every_ternary_matrix_regrouped_and_nothing_else() {
        use crate::writer::{random_model_as, Shape, TernaryFormat};
        for format in [TernaryFormat::I2S, TernaryFormat::TQ2_0, TernaryFormat::TQ1_0, TernaryFormat::F16] {
            let bytes = random_model_as(&Shape::default_model(), 7, format);
            let g = Gguf::parse(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
            // Each ternary matrix as TQ2_0 regrouped (the larger layout).
            let ternary: Vec<usize> = g
                .tensors
                .iter()
                .filter(|t| t.dims.len() == 2 && t.ty != TensorType::F16 && t.ty != TensorType::F32)
                .map(|t| crate::kernels::grouped_len(t.dims[1] as usize, t.dims[0] as usize / 256))
                .collect();
            let bound = regrouped_bound(&g);
            let least: usize = ternary.iter().sum();
            // F16 files have no ternary matrix: nothing to reserve.
            assert_eq!(ternary.is_empty(), format == TernaryFormat::F16);
            assert!(least <= bound && bound <= least + ternary.len() * ARENA_ALIGN, "{format:?}: {bound}");
        }
    }
}
