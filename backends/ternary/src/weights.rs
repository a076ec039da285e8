//! How the model's weights are held in memory: the file read into
//! anonymous memory backed by huge pages (or mapped as it is), TQ1_0
//! matrices rewritten as TQ2_0 blocks at load, TQ2_0 matrices
//! regrouped for the AVX-512 kernels (`kernels::group_tq2`), and Q6_K
//! output matrices' blocks permuted for them (`kernels::permute_q6k`).

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
pub unsafe fn regroup_tq2(src: &Mapped, rows: usize, blocks: usize) -> std::io::Result<Mapped> {
    use crate::kernels::{group_bytes, group_tq2};
    // SAFETY: the caller's promise.
    unsafe { regroup(src, rows, blocks * 66, group_bytes(blocks), |src, dst| group_tq2(src, blocks, dst)) }
}

/// Whether the model regroups its I2_S matrices of `cols` columns at
/// load: as `regroups_tq2`, where the kernels read that layout
/// (`kernels::i2s_grouping`).
pub fn regroups_i2s(cols: usize) -> bool {
    cfg!(unix) && crate::kernels::i2s_grouping(cols)
}

/// An I2_S matrix (`rows` rows of `blocks` 256-weight blocks, as the file
/// holds them) regrouped for the AVX-512 kernels (`kernels::group_i2s`)
/// into a huge-page buffer of its own, as `regroup_tq2`.
///
/// # Safety
/// As `regroup_tq2`'s.
pub unsafe fn regroup_i2s(src: &Mapped, rows: usize, blocks: usize) -> std::io::Result<Mapped> {
    use crate::kernels::{group_i2s, i2s_group_bytes};
    // SAFETY: the caller's promise.
    unsafe { regroup(src, rows, blocks * 64, i2s_group_bytes(blocks), |src, dst| group_i2s(src, blocks, dst)) }
}

/// `rows` rows of `row_bytes` bytes into groups of 16 rows of
/// `group_bytes` bytes each, `group(rows, dst)` writing up to 64 groups at
/// a time, on the pool (2B4T's layers are 0.5 GB); then `src`'s pages are
/// given back.
///
/// # Safety
/// As `regroup_tq2`'s.
unsafe fn regroup(
    src: &Mapped,
    rows: usize,
    row_bytes: usize,
    group_bytes: usize,
    group: impl Fn(&[u8], &mut [u8]) + Sync,
) -> std::io::Result<Mapped> {
    use crate::kernels::GROUP_ROWS;
    let bytes = src.bytes();
    assert_eq!(bytes.len(), rows * row_bytes, "matrix bytes");
    let len = rows.div_ceil(GROUP_ROWS) * group_bytes;
    let mut out = huge_page_buffer(len)?;
    let chunk = 64 * group_bytes;
    crate::pool::for_each_chunk_mut(&mut out[..len], chunk, |at, dst| {
        let first = at / chunk * 64 * GROUP_ROWS;
        let n = (rows - first).min(64 * GROUP_ROWS);
        group(&bytes[first * row_bytes..(first + n) * row_bytes], dst);
    });
    let (map, start, src_len) = src.source();
    // SAFETY: the caller's promise: nothing reads these bytes again.
    unsafe { release(map, start, src_len) };
    Ok(Mapped::new(Arc::new(out.make_read_only()?), 0, len))
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
    let (map, start, src_len) = src.source();
    // SAFETY: the caller's promise: nothing reads these bytes again.
    unsafe { release(map, start, src_len) };
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
