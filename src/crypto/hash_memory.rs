//! A hash thread's argon2 working memory, kept between hashes and, on Linux, backed by
//! transparent huge pages where the kernel allows them.
//!
//! Argon2 reads 1 KiB blocks from all over its 19 MiB, so with 4 KiB pages nearly every
//! reference block is a TLB miss: the 4,864 pages are more than the CPU's second-level
//! TLB holds. With 2 MiB pages the whole area takes ten entries. Most distributions leave
//! transparent huge pages to `madvise` (`/sys/kernel/mm/transparent_hugepage/enabled`),
//! so the memory asks for them before it is first touched. Where huge pages are off, or
//! none is free, the advice is a hint the kernel ignores and nothing changes.

use argon2::Block;

/// The huge page size on x86-64 and on arm64 with 4 KiB pages.
const HUGE_PAGE: usize = 2 << 20;

#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    /// `count` blocks of working memory; the first call, and any call for more blocks than
    /// before, allocates.
    pub fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            // Replaced rather than grown: the advice must reach the pages before the zeroing
            // below first touches them. The old buffer goes first, so that two never coexist.
            self.blocks = Vec::new();
            self.blocks.reserve_exact(count);
            advise_huge_pages(&self.blocks);
            self.blocks.resize(count, Block::new());
        }
        &mut self.blocks[..count]
    }
}

/// The whole huge pages inside `start..start + len`, as (address, length); `None` when
/// the range holds none.
fn whole_huge_pages(start: usize, len: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(HUGE_PAGE)?;
    let end = (start.checked_add(len)? / HUGE_PAGE) * HUGE_PAGE;
    (end > first).then(|| (first, end - first))
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(allocation: &Vec<Block>) {
    let start = allocation.as_ptr() as usize;
    let len = allocation.capacity() * std::mem::size_of::<Block>();
    let Some((address, len)) = whole_huge_pages(start, len) else {
        return;
    };
    // SAFETY: the range lies inside `allocation`'s buffer, which this thread owns, and it
    // is page-aligned as madvise requires. MADV_HUGEPAGE changes neither the contents nor
    // the validity of any byte; it only tells the kernel how to back the range. A failure
    // (a kernel without transparent huge pages) leaves the memory as it was.
    unsafe {
        libc::madvise(address as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_allocation: &Vec<Block>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_huge_pages_inside_the_range_are_advised() {
        let mib = 1 << 20;
        // 19 MiB starting just past a boundary: the 8 whole pages after it.
        assert_eq!(
            whole_huge_pages(HUGE_PAGE + 16, 19 * mib),
            Some((2 * HUGE_PAGE, 8 * HUGE_PAGE))
        );
        // Starting on a boundary, the range's own first page counts.
        assert_eq!(
            whole_huge_pages(4 * HUGE_PAGE, 19 * mib),
            Some((4 * HUGE_PAGE, 9 * HUGE_PAGE))
        );
        assert_eq!(whole_huge_pages(HUGE_PAGE + 16, HUGE_PAGE), None);
        assert_eq!(whole_huge_pages(usize::MAX - 10, 5), None);
    }

    /// The kernel's answer to the advice: the huge pages backing the mapping that holds
    /// `address`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn huge_pages_kib_at(address: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let header = line.split_whitespace().next().and_then(|range| {
                let (start, end) = range.split_once('-')?;
                Some((
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                ))
            });
            // A mapping's header line begins with its address range; its fields follow.
            if let Some((start, end)) = header {
                inside = (start..end).contains(&address);
            } else if inside {
                if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                    return kib.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_memory_is_backed_by_huge_pages_where_the_kernel_allows_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(mode.contains("[madvise]") || mode.contains("[always]")) {
            eprintln!("transparent huge pages are off here ({mode:?}): nothing to check");
            return;
        }
        let mut memory = HashMemory::default();
        let blocks = memory.blocks(crate::crypto::password::MEMORY_KIB as usize);
        let address = blocks.as_ptr() as usize + blocks.len() * 512;
        let huge = huge_pages_kib_at(address).expect("the memory's mapping is in smaps");
        // 19 MiB hold at least eight whole 2 MiB pages wherever they start.
        assert!(
            huge >= 8 * 2048,
            "{huge} KiB of huge pages behind argon2's memory (THP mode {mode:?})"
        );
    }

    #[test]
    fn memory_is_zeroed_sized_and_kept() {
        let mut memory = HashMemory::default();
        let first = memory.blocks(3000).as_ptr();
        assert_eq!(memory.blocks(3000).len(), 3000);
        assert_eq!(memory.blocks(10).len(), 10);
        assert_eq!(memory.blocks(3000).as_ptr(), first, "kept between hashes");
        let grown = memory.blocks(5000);
        assert_eq!(grown.len(), 5000);
        assert!(grown
            .iter()
            .all(|block| block.as_ref().iter().all(|&word| word == 0)));
    }
}
