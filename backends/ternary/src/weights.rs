//! How the model's weights are held in memory: the file read into
//! anonymous memory backed by huge pages (or mapped as it is), except the
//! ternary and Q6_K matrices, read from the file into one arena (`Arena`)
//! as they are or rewritten: TQ1_0 as TQ2_0 blocks, TQ2_0 and I2_S
//! regrouped for the AVX-512 kernels (`kernels::group_tq2`), Q6_K output
//! matrices' blocks permuted for them (`kernels::permute_q6k`).

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
    /// Unpacked: memory grows by the 12 bytes per block only (the file's
    /// copy is read a run of rows at a time, never held whole).
    fn default() -> Tq1Layout {
        Tq1Layout::Unpacked
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

/// The model file at load. Its bytes are read into anonymous memory
/// backed by huge pages (`BITNET_WEIGHTS=mmap` maps the file instead),
/// except the matrices that go to the arena (`goes_to_arena`: the
/// ternary ones and Q6_K), which stay in the file until the loader reads
/// them a run of rows at a time (`Rows`), rewritten or as they are. Their
/// pages in the buffer are never touched, so they never become resident
/// and nothing has to be given back: resident memory stays one copy of
/// the weights on every OS. (Reading the whole file and giving the
/// rewritten matrices' pages back afterwards worked on Unix only, so
/// elsewhere the matrices were kept as the file holds them: on Windows the
/// AVX-512 kernels ran the file layouts, prompts at half the speed.)
#[derive(Debug)]
pub struct ModelFile {
    file: std::fs::File,
    map: Arc<Mmap>,
    /// Byte ranges not read into `map` (sorted, disjoint): zeros there.
    in_file: Vec<std::ops::Range<usize>>,
}

/// Whether a tensor of type `ty` is read into the arena rather than held
/// in the file's buffer: the types the loader rewrites for some kernels
/// (regrouped, unpacked, permuted), and on other machines places in the
/// arena as they are, so small matrices share its huge pages.
pub fn goes_to_arena(ty: TensorType) -> bool {
    matches!(ty, TensorType::I2S | TensorType::TQ2_0 | TensorType::TQ1_0 | TensorType::Q6K)
}

impl ModelFile {
    /// Hold `file`, whose header is `gguf`: every byte but the tensors
    /// that go to the arena.
    pub fn load(file: std::fs::File, gguf: &Gguf) -> std::io::Result<ModelFile> {
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        let mut in_file: Vec<std::ops::Range<usize>> = gguf
            .tensors
            .iter()
            .filter(|t| goes_to_arena(t.ty))
            .filter_map(|t| {
                let start = usize::try_from(gguf.data_offset.checked_add(t.offset)?).ok()?.min(len);
                let end = start.saturating_add(usize::try_from(t.size?).ok()?).min(len);
                (end > start).then_some(start..end)
            })
            .collect();
        in_file.sort_by_key(|r| r.start);
        // Ranges of a parsed header never overlap; merge them in case.
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(in_file.len());
        for r in in_file {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let map = if std::env::var("BITNET_WEIGHTS").is_ok_and(|v| v == "mmap") {
            // SAFETY: the file is opened read-only; a concurrent writer could
            // change bytes under us, which at worst gives wrong numbers (every
            // range was bounds-checked against the length when parsing).
            unsafe { Mmap::map(&file)? }
        } else {
            let mut m = huge_page_buffer(len)?;
            let mut at = 0;
            for r in merged.iter().chain(std::iter::once(&(len..len))) {
                read_exact_at(&file, &mut m[at..r.start], at as u64)?;
                at = r.end;
            }
            m.make_read_only()?
        };
        Ok(ModelFile { file, map: Arc::new(map), in_file: merged })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether any of `start..end` was left in the file.
    fn left_in_file(&self, start: usize, end: usize) -> bool {
        let i = self.in_file.partition_point(|r| r.end <= start);
        self.in_file.get(i).is_some_and(|r| r.start < end)
    }

    /// Bytes `start..start + len`: borrowed from the buffer, or read from
    /// the file where any of them were left there.
    pub fn bytes(&self, start: usize, len: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        let end = self.end(start, len)?;
        if !self.left_in_file(start, end) {
            return Ok(std::borrow::Cow::Borrowed(&self.map[start..end]));
        }
        let mut v = vec![0u8; len];
        self.read_at(start, &mut v)?;
        Ok(std::borrow::Cow::Owned(v))
    }

    /// Bytes `start..start + len` as the model holds them: a view of the
    /// buffer, or, where any were left in the file, read into `arena` (a
    /// buffer of their own when there is none or it is full).
    pub fn held(&self, start: usize, len: usize, arena: Option<&Arena>) -> std::io::Result<Mapped> {
        let end = self.end(start, len)?;
        if len == 0 || !self.left_in_file(start, end) {
            return Ok(Mapped::new(self.map.clone(), start, len));
        }
        let rows = Rows::new(self, start, len, 1, false)?;
        place(&rows, arena)
    }

    /// Fill `buf` with the bytes from `start`: from the buffer or the file.
    fn read_at(&self, start: usize, buf: &mut [u8]) -> std::io::Result<()> {
        let end = self.end(start, buf.len())?;
        if self.left_in_file(start, end) {
            read_exact_at(&self.file, buf, start as u64)
        } else {
            buf.copy_from_slice(&self.map[start..end]);
            Ok(())
        }
    }

    fn end(&self, start: usize, len: usize) -> std::io::Result<usize> {
        start.checked_add(len).filter(|&end| end <= self.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a tensor past the end of the model file")
        })
    }
}

/// `buf.len()` bytes of `file` from `offset`, without moving its cursor
/// (the pool's threads read parts of one file at once).
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(file, buf, offset);
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(file, buf, offset);
        match n {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the model file shrank while loading",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A matrix as the loader reads it to hold it: `items` runs of
/// `item_bytes` (rows, or Q6_K blocks) from `start` in the model file,
/// read a run of items at a time, so the file's copy is never whole in
/// memory. With `tq1`, TQ1_0 rows (54 bytes a block) handed on as the
/// TQ2_0 rows of the same codes (66).
pub struct Rows<'a> {
    file: &'a ModelFile,
    start: usize,
    items: usize,
    item_bytes: usize,
    tq1: bool,
}

impl<'a> Rows<'a> {
    pub fn new(file: &'a ModelFile, start: usize, items: usize, item_bytes: usize, tq1: bool) -> std::io::Result<Self> {
        if tq1 && !item_bytes.is_multiple_of(54) {
            return Err(std::io::Error::other("TQ1_0 rows of whole blocks"));
        }
        file.end(start, items.checked_mul(item_bytes).ok_or_else(|| std::io::Error::other("matrix too large"))?)?;
        Ok(Rows { file, start, items, item_bytes, tq1 })
    }

    /// Bytes of an item as handed on.
    pub fn out_item_bytes(&self) -> usize {
        if self.tq1 {
            self.item_bytes / 54 * 66
        } else {
            self.item_bytes
        }
    }

    /// `f` on items `first..first + n` as handed on, read into this
    /// thread's scratch buffer (kept from run to run: a fresh buffer each
    /// run had its pages faulted in and zeroed again, most of a load's time
    /// on this VM).
    fn with<R>(&self, first: usize, n: usize, f: impl FnOnce(&[u8]) -> R) -> std::io::Result<R> {
        assert!(first + n <= self.items, "items past the matrix");
        let (raw_len, out_len) = (n * self.item_bytes, n * self.out_item_bytes());
        let extra = if self.tq1 { out_len } else { 0 };
        crate::pool::with_scratch::<u8, _>(raw_len + extra, |buf| {
            let (raw, tq2) = buf.split_at_mut(raw_len);
            self.file.read_at(self.start + first * self.item_bytes, raw)?;
            if !self.tq1 {
                return Ok(f(raw));
            }
            crate::quant::tq1_0_to_tq2_0(raw, tq2);
            Ok(f(tq2))
        })
    }

    /// `out` (whole items as handed on, `first` the first of them) filled
    /// by `fill(items, out_part)` a run of `per_task` items at a time on
    /// the pool; the first read error, if any.
    fn fill_parallel(
        &self,
        out: &mut [u8],
        out_per_task: usize,
        per_task: usize,
        fill: impl Fn(&[u8], &mut [u8]) + Sync,
    ) -> std::io::Result<()> {
        let error = std::sync::Mutex::new(None);
        crate::pool::for_each_chunk_mut(out, out_per_task, |at, dst| {
            let first = at / out_per_task * per_task;
            let n = (self.items - first).min(per_task);
            if let Err(e) = self.with(first, n, |src| fill(src, dst)) {
                error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
            }
        });
        error.into_inner().unwrap_or_else(|e| e.into_inner()).map_or(Ok(()), Err)
    }
}

/// `len` bytes in `arena` (a huge-page buffer of their own when there is
/// none or it is full), written by `fill` (which may fail: nothing is
/// kept then).
fn placed(
    len: usize,
    arena: Option<&Arena>,
    fill: impl Fn(&mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<Mapped> {
    let mut result = Ok(());
    if let Some(m) = arena.and_then(|a| a.place(len, |out| result = fill(out))) {
        return result.map(|()| m);
    }
    let mut out = huge_page_buffer(len)?;
    fill(&mut out[..len])?;
    Ok(Mapped::new(Arc::new(out.make_read_only()?), 0, len))
}

/// `src`'s items as handed on (TQ1_0 unpacked), in `arena` (a buffer of
/// their own where there is none or it is full).
pub fn place(src: &Rows<'_>, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    let out_item = src.out_item_bytes();
    // Runs of about 1 MB a task, on the pool: 2B4T's matrices are 0.5 GB.
    let per_task = ((1 << 20) / out_item.max(1)).max(1);
    placed(src.items * out_item, arena, |out| {
        src.fill_parallel(out, per_task * out_item, per_task, |s, d| d.copy_from_slice(s))
    })
}

/// Anonymous memory for weights, backed by transparent huge pages where
/// the kernel gives them.
pub(crate) fn huge_page_buffer(len: usize) -> std::io::Result<MmapMut> {
    let m = MmapMut::map_anon(len.max(1))?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    Ok(m)
}

/// One huge-page buffer holding the matrices read from the file at load
/// (`goes_to_arena`), rewritten or not, end to end. Each in a buffer of
/// its own, most of 2B4T's matrices (0.4-1.6 MB) were too small for a 2
/// MB page and read from 4 KiB pages: a decoding step's products read 14%
/// slower on one thread and 13% on two (`kernels` bench, `cores`), where
/// one buffer of them all is backed by huge pages throughout. Its size is
/// a bound reckoned from the file's header (`arena_bound`): address
/// space only until written.
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

/// An upper bound of the bytes the tensors of `gguf` that go to the arena
/// (`goes_to_arena`) take there, rewritten or not: each 2-D ternary matrix
/// whose rows are whole 256-weight blocks as TQ2_0's 66 bytes per block,
/// rows up to whole groups (the largest of its layouts), every other its
/// file size; each from a fresh page. The `Arena` to reserve.
pub fn arena_bound(gguf: &Gguf) -> usize {
    let mut total = 0usize;
    for t in gguf.tensors.iter().filter(|t| goes_to_arena(t.ty)) {
        let file = t.size.and_then(|s| usize::try_from(s).ok());
        let regrouped = match (t.ty.is_ternary() && t.dims.len() == 2 && t.dims[0].is_multiple_of(256), &t.dims[..]) {
            (true, [cols, rows]) => usize::try_from(*cols).ok().zip(usize::try_from(*rows).ok()).and_then(|(c, r)| {
                r.checked_next_multiple_of(crate::kernels::GROUP_ROWS).and_then(|r| r.checked_mul(c / 256 * 66))
            }),
            _ => Some(0),
        };
        let bytes = file.zip(regrouped).map(|(f, g)| f.max(g)).and_then(|b| b.checked_add(ARENA_ALIGN));
        total = total.saturating_add(bytes.unwrap_or(usize::MAX));
    }
    total
}

/// Whether the model regroups its TQ2_0 matrices (of the file, or
/// unpacked from TQ1_0) at load: where the kernels read that layout
/// (`kernels::tq2_grouping`).
pub fn regroups_tq2() -> bool {
    crate::kernels::tq2_grouping()
}

/// A TQ2_0 matrix (`rows` rows of `blocks` blocks, as `src` hands them
/// on) regrouped for the AVX-512 kernels (`kernels::group_tq2`).
pub fn regroup_tq2(src: &Rows<'_>, rows: usize, blocks: usize, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    use crate::kernels::{group_bytes, group_tq2};
    regroup(src, rows, blocks * 66, group_bytes(blocks), arena, |src, dst| group_tq2(src, blocks, dst))
}

/// Whether the model regroups its I2_S matrices of `cols` columns at
/// load: where the kernels read that layout (`kernels::i2s_grouping`).
pub fn regroups_i2s(cols: usize) -> bool {
    crate::kernels::i2s_grouping(cols)
}

/// An I2_S matrix (`rows` rows of `blocks` 256-weight blocks, as the file
/// holds them) regrouped for the AVX-512 kernels (`kernels::group_i2s`).
pub fn regroup_i2s(src: &Rows<'_>, rows: usize, blocks: usize, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    use crate::kernels::{group_i2s, i2s_group_bytes};
    regroup(src, rows, blocks * 64, i2s_group_bytes(blocks), arena, |src, dst| group_i2s(src, blocks, dst))
}

/// `rows` rows of `row_bytes` bytes into groups of 16 rows of
/// `group_bytes` bytes each, in `arena`, `group(rows, dst)` writing about
/// 1 MB of groups at a time, on the pool (so the reads fit the threads'
/// kept scratch buffers).
fn regroup(
    src: &Rows<'_>,
    rows: usize,
    row_bytes: usize,
    group_bytes: usize,
    arena: Option<&Arena>,
    group: impl Fn(&[u8], &mut [u8]) + Sync,
) -> std::io::Result<Mapped> {
    use crate::kernels::GROUP_ROWS;
    assert!(src.items == rows && src.out_item_bytes() == row_bytes, "matrix bytes");
    let len = rows.div_ceil(GROUP_ROWS) * group_bytes;
    let groups = ((1 << 20) / (GROUP_ROWS * row_bytes).max(1)).max(1);
    placed(len, arena, |out| src.fill_parallel(out, groups * group_bytes, groups * GROUP_ROWS, &group))
}

/// Whether the model permutes its Q6_K output matrix's blocks at load:
/// where the kernels read them so (`kernels::q6k_permuting`).
pub fn permutes_q6k() -> bool {
    crate::kernels::q6k_permuting()
}

/// A Q6_K matrix (`src`: its blocks) with each block's values permuted
/// for the AVX-512 kernels (`kernels::permute_q6k`).
pub fn permute_q6k(src: &Rows<'_>, arena: Option<&Arena>) -> std::io::Result<Mapped> {
    use crate::kernels::Q6K_BLOCK;
    assert_eq!(src.out_item_bytes(), Q6K_BLOCK, "whole Q6_K blocks");
    // 1,024 blocks a task, on the pool: 2B4T's output matrix is 269 MB.
    placed(src.items * Q6K_BLOCK, arena, |out| {
        src.fill_parallel(out, 1024 * Q6K_BLOCK, 1024, crate::kernels::permute_q6k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{random_model_with, OutputMatrix, Shape, TernaryFormat};

    #[test]
    fn arena_places_are_page_aligned_disjoint_and_keep_their_bytes_until_it_is_full() {
        let arena = Arena::new(5 * ARENA_ALIGN).unwrap();
        let a = arena.place(100, |b| b.fill(1)).unwrap();
        let b = arena.place(ARENA_ALIGN + 1, |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8)).unwrap();
        assert!(a.is_in_arena() && b.is_in_arena());
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

    /// A generated model of `format` with a Q6_K output matrix of 32,768
    /// rows (6.9 MB: whole 2 MiB pages inside it) written to a file of its
    /// own: (path, its bytes, its header).
    fn model_file(name: &str, format: TernaryFormat) -> (std::path::PathBuf, Vec<u8>, Gguf) {
        let dir = std::env::temp_dir().join(format!("bitnet-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = Shape { n_vocab: Some(32768), ..Shape::default_model() };
        let bytes = random_model_with(&shape, 11, format, OutputMatrix::Q6K);
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let g = Gguf::parse(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
        (path, bytes, g)
    }

    fn range(g: &Gguf, t: &crate::gguf::TensorInfo) -> (usize, usize) {
        ((g.data_offset + t.offset) as usize, t.size.unwrap() as usize)
    }

    #[test]
    fn a_model_file_holds_every_tensor_but_those_for_the_arena_and_reads_those_from_the_file() {
        for format in [TernaryFormat::I2S, TernaryFormat::TQ2_0, TernaryFormat::TQ1_0] {
            let (path, bytes, g) = model_file(&format!("{format:?}"), format);
            let file = ModelFile::load(std::fs::File::open(&path).unwrap(), &g).unwrap();
            assert_eq!(file.len(), bytes.len());
            #[cfg(target_os = "linux")]
            {
                // Resident 4 KiB pages of the buffer within whole `window`s
                // of at..at + len, and how many windows.
                let resident = |at: usize, len: usize, window: usize| -> (usize, usize) {
                    let base = file.map.as_ptr() as usize;
                    let (first, end) = ((base + at).next_multiple_of(window), (base + at + len) / window * window);
                    if end <= first {
                        return (0, 0);
                    }
                    let mut v = vec![0u8; (end - first) / 4096];
                    // SAFETY: a page-aligned range inside the mapping, one byte per page in v.
                    assert_eq!(unsafe { libc::mincore(first as *mut libc::c_void, end - first, v.as_mut_ptr()) }, 0);
                    (v.iter().filter(|&&b| b & 1 == 1).count(), (end - first) / window)
                };
                // None of the left tensors' pages was touched (before this test reads them): whole 2 MiB
                // ones, as reading a neighbour may fault in the huge page
                // around it.
                let (touched, windows) = file
                    .in_file
                    .iter()
                    .map(|r| resident(r.start, r.len(), 2 << 20))
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                assert!(windows > 0 && touched == 0, "{format:?}: {touched} pages of the left tensors resident");
                assert!(resident(0, g.data_offset as usize, 4096).0 > 0, "the header was read");
            }
            let (mut left, mut kept) = (0, 0);
            for t in &g.tensors {
                let (start, len) = range(&g, t);
                let read = file.bytes(start, len).unwrap();
                assert_eq!(&read[..], &bytes[start..start + len], "{format:?} {}", t.name);
                // The buffer holds zeros where a tensor was left in the file.
                let in_buffer = &file.map[start..start + len];
                if goes_to_arena(t.ty) {
                    left += 1;
                    assert!(matches!(read, std::borrow::Cow::Owned(_)), "{} read from the file", t.name);
                    assert!(in_buffer.iter().all(|&b| b == 0), "{} not read into the buffer", t.name);
                    let held = file.held(start, len, None).unwrap();
                    assert!(!held.is_in_arena() && held.bytes() == &bytes[start..start + len]);
                } else {
                    kept += 1;
                    assert!(matches!(read, std::borrow::Cow::Borrowed(_)), "{} in the buffer", t.name);
                    assert_eq!(in_buffer, &bytes[start..start + len]);
                }
            }
            // Every layer matrix and the Q6_K output go to the arena; norms and the F16 embedding stay.
            assert!(left == 7 * Shape::default_model().n_layer + 1 && kept > 0, "{format:?}: {left} {kept}");
            // A range across the header and a left tensor is read whole.
            let t = g.tensors.iter().find(|t| goes_to_arena(t.ty)).unwrap();
            let (start, len) = range(&g, t);
            assert_eq!(&file.bytes(start - 10, len + 10).unwrap()[..], &bytes[start - 10..start + len]);
            assert!(file.bytes(bytes.len() - 1, 2).is_err(), "past the end");
        }
    }

    #[test]
    fn matrices_read_from_the_file_are_the_same_bytes_in_the_arena_or_a_buffer_of_their_own() {
        let (path, bytes, g) = model_file("rows", TernaryFormat::TQ1_0);
        let file = ModelFile::load(std::fs::File::open(&path).unwrap(), &g).unwrap();
        let t = g.tensors.iter().find(|t| t.ty == TensorType::TQ1_0 && t.dims[1] > 32).unwrap();
        let (start, len) = range(&g, t);
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let tq1 = Rows::new(&file, start, rows, cols / 256 * 54, true).unwrap();
        // Unpacked TQ1_0: the same codes as TQ2_0 blocks.
        let mut want = vec![0u8; len / 54 * 66];
        crate::quant::tq1_0_to_tq2_0(&bytes[start..start + len], &mut want);
        let arena = Arena::new(8 << 20).unwrap();
        let (own, placed) = (place(&tq1, None).unwrap(), place(&tq1, Some(&arena)).unwrap());
        assert!(!own.is_in_arena() && placed.is_in_arena());
        assert!(own.bytes() == want && placed.bytes() == want);
        // Regrouped from the file, as the kernels' own grouping of those rows.
        let mut grouped = vec![0u8; crate::kernels::grouped_len(rows, cols / 256)];
        crate::kernels::group_tq2(&want, cols / 256, &mut grouped);
        let (own, placed) = (
            regroup_tq2(&tq1, rows, cols / 256, None).unwrap(),
            regroup_tq2(&tq1, rows, cols / 256, Some(&arena)).unwrap(),
        );
        assert!(own.bytes() == grouped && placed.bytes() == grouped && placed.is_in_arena());
        // A full arena falls back to a buffer of its own.
        let small = Arena::new(64).unwrap();
        let fallback = regroup_tq2(&tq1, rows, cols / 256, Some(&small)).unwrap();
        assert!(!fallback.is_in_arena() && small.used() == 0 && fallback.bytes() == grouped);
        // A file cut short after the header was read: a typed error, no panic.
        drop(file);
        let file = ModelFile::load(std::fs::File::open(&path).unwrap(), &g).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(start as u64 + 100).unwrap();
        let tq1 = Rows::new(&file, start, rows, cols / 256 * 54, true).unwrap();
        let e = place(&tq1, Some(&arena)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert!(regroup_tq2(&tq1, rows, cols / 256, None).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_arena_bound_covers_every_tensor_read_from_the_file_in_its_largest_layout() {
        for format in [TernaryFormat::I2S, TernaryFormat::TQ2_0, TernaryFormat::TQ1_0, TernaryFormat::F16] {
            for output in [OutputMatrix::Tied, OutputMatrix::Q6K] {
                let bytes = random_model_with(&Shape::default_model(), 7, format, output);
                let g = Gguf::parse(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
                // Each ternary matrix as TQ2_0 regrouped (the larger layout), Q6_K as it is.
                let sizes: Vec<usize> = g
                    .tensors
                    .iter()
                    .filter_map(|t| match t.ty {
                        TensorType::Q6K => Some(t.size.unwrap() as usize),
                        ty if ty.is_ternary() => {
                            Some(crate::kernels::grouped_len(t.dims[1] as usize, t.dims[0] as usize / 256))
                        }
                        _ => None,
                    })
                    .collect();
                let bound = arena_bound(&g);
                let least: usize = sizes.iter().sum();
                // F16 files with a tied output have nothing for the arena.
                assert_eq!(sizes.is_empty(), format == TernaryFormat::F16 && output == OutputMatrix::Tied);
                assert!(least <= bound && bound <= least + sizes.len() * ARENA_ALIGN, "{format:?}: {bound}");
            }
        }
    }
}
