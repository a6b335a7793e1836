//! A hash thread's argon2 working memory, kept between hashes and, on Linux, backed by
//! transparent huge pages where the kernel allows them.
//!
//! Argon2 reads 1 KiB blocks from all over its 19 MiB. With 4 KiB pages that is 4,864
//! pages, more than the second-level TLB covers, so most reference blocks miss it; with
//! 2 MiB pages the area takes ten entries. Distributions that leave transparent huge pages
//! to `madvise` (`/sys/kernel/mm/transparent_hugepage/enabled`; Debian and Ubuntu) give
//! them only to memory that asks, and the kernel backs a range with huge pages when it is
//! first touched. So the memory is a mapping of its own, aligned to 2 MiB and advised
//! before anything touches it: memory from the allocator may have been touched before (a
//! freed 19 MiB buffer of argon2's own, reused) and would stay in 4 KiB pages until
//! khugepaged came by. Where THP is `always` (RHEL, Fedora) the mapping gets huge pages
//! anyway; where it is `never`, or none is free, nothing changes but the alignment.
//!
//! The area holds the last hash's password-derived blocks until the next hash overwrites
//! them, so it is also left out of core dumps (`MADV_DONTDUMP`), and unmapped pages go
//! back to the kernel, which zeroes them before any reuse.

use argon2::Block;

/// The huge page size on x86-64 (and on arm64 with 4 KiB base pages).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE: usize = 2 << 20;

#[derive(Default)]
pub struct HashMemory {
    area: Option<Area>,
}

impl HashMemory {
    /// `count` blocks of working memory; the first call, and any call for more blocks than
    /// before, makes a new area (the old one goes first, so two never coexist). Argon2
    /// writes every block before it reads it, so what a block holds does not matter.
    pub fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.area.as_ref().is_some_and(|area| area.len() < count) {
            self.area = None;
        }
        let area = self.area.get_or_insert_with(|| Area::new(count));
        &mut area.blocks_mut()[..count]
    }
}

/// `len` bytes rounded up to whole huge pages; `None` on overflow.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn whole_huge_pages(len: usize) -> Option<usize> {
    len.checked_next_multiple_of(HUGE_PAGE)
}

/// The blocks: in a mapping of their own where the kernel gives one, else on the heap.
enum Area {
    #[cfg(target_os = "linux")]
    Mapped(linux::Mapping),
    Heap(Vec<Block>),
}

impl Area {
    fn new(count: usize) -> Area {
        #[cfg(target_os = "linux")]
        if let Some(mapping) = linux::Mapping::new(count) {
            return Area::Mapped(mapping);
        }
        Area::Heap(vec![Block::new(); count])
    }

    fn len(&self) -> usize {
        match self {
            #[cfg(target_os = "linux")]
            Area::Mapped(mapping) => mapping.count,
            Area::Heap(blocks) => blocks.len(),
        }
    }

    fn blocks_mut(&mut self) -> &mut [Block] {
        match self {
            #[cfg(target_os = "linux")]
            Area::Mapped(mapping) => mapping.blocks_mut(),
            Area::Heap(blocks) => blocks,
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ptr::NonNull;

    use argon2::Block;

    use super::{whole_huge_pages, HUGE_PAGE};

    /// A private anonymous mapping of `count` blocks starting on a huge page boundary,
    /// owned by this value alone and unmapped when it drops.
    pub struct Mapping {
        start: NonNull<Block>,
        pub count: usize,
    }

    impl Mapping {
        /// Maps at least `count` blocks (whole huge pages of them), advised to be backed by
        /// huge pages and left out of core dumps; `None` for no blocks or if the kernel
        /// refuses the mapping.
        pub fn new(count: usize) -> Option<Mapping> {
            let block = std::mem::size_of::<Block>();
            let len = whole_huge_pages(count.checked_mul(block)?)?;
            if len == 0 {
                return None;
            }
            // mmap promises only 4 KiB alignment: one huge page more is mapped, and what
            // lies before the first boundary and after the area is unmapped again.
            let mapped_len = len.checked_add(HUGE_PAGE)?;
            // SAFETY: a new private anonymous mapping at an address the kernel chooses
            // aliases nothing; its pages read as zeros.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    mapped_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let Some(whole) = NonNull::new(base as *mut Block) else {
                // SAFETY: the mapping just made, all of it; nothing refers to it.
                unsafe { libc::munmap(base, mapped_len) };
                return None;
            };
            // From here on, returning drops `mapping`, which unmaps what is still mapped.
            let mut mapping = Mapping {
                start: whole,
                count: mapped_len / block,
            };
            let base = base as usize;
            let start = base.next_multiple_of(HUGE_PAGE);
            let before = start - base;
            if before > 0 {
                // SAFETY: `base..start` is the head of the mapping, page-aligned (both are),
                // outside the area kept, and nothing refers to it.
                if unsafe { libc::munmap(base as *mut libc::c_void, before) } != 0 {
                    return None;
                }
                mapping.start = NonNull::new(start as *mut Block)?;
                mapping.count -= before / block;
            }
            let after = mapping.count * block - len;
            if after > 0 {
                // SAFETY: the tail past `start + len`, page-aligned, outside the area kept,
                // and nothing refers to it.
                if unsafe { libc::munmap((start + len) as *mut libc::c_void, after) } != 0 {
                    return None;
                }
                mapping.count = len / block;
            }
            // SAFETY: `start..start + len` is the area kept, page-aligned. Neither advice
            // changes a byte or the mapping, only how the kernel backs it and whether a core
            // dump holds it (no password-derived blocks in dumps); if either fails (a kernel
            // without THP) the area is ordinary memory.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTDUMP);
            }
            Some(mapping)
        }

        pub fn blocks_mut(&mut self) -> &mut [Block] {
            // SAFETY: `start..start + count` is this mapping's, readable and writable, and
            // lives as long as `self`; `&mut self` makes this the only reference to it. It
            // is aligned for `Block` (2 MiB), and zeroed or written pages are valid Blocks
            // (arrays of u64).
            unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.count) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the range is exactly what `new` kept mapped, and no slice of it
            // outlives `self`.
            unsafe {
                libc::munmap(
                    self.start.as_ptr() as *mut libc::c_void,
                    self.count * std::mem::size_of::<Block>(),
                );
            }
        }
    }

    // SAFETY: the mapping is owned memory, like a Vec's buffer; the raw pointer only
    // keeps the compiler from seeing that.
    unsafe impl Send for Mapping {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_whole_huge_pages() {
        let mib = 1 << 20;
        assert_eq!(whole_huge_pages(19 * mib), Some(20 * mib));
        assert_eq!(whole_huge_pages(4 * mib), Some(4 * mib));
        assert_eq!(whole_huge_pages(1), Some(HUGE_PAGE));
        assert_eq!(whole_huge_pages(0), Some(0));
        assert_eq!(whole_huge_pages(usize::MAX - 10), None);
    }

    #[test]
    fn memory_is_sized_kept_and_grown() {
        let mut memory = HashMemory::default();
        let first = memory.blocks(3000).as_ptr();
        assert_eq!(memory.blocks(3000).len(), 3000);
        assert_eq!(memory.blocks(10).len(), 10);
        assert_eq!(memory.blocks(3000).as_ptr(), first, "kept between hashes");
        memory.blocks(3000)[0].as_mut()[0] = 7;
        let grown = memory.blocks(5000);
        assert_eq!(grown.len(), 5000);
        grown[4999].as_mut()[127] = 9;
        assert_eq!(grown[4999].as_ref()[127], 9);
        assert!(
            grown[0].as_ref().iter().all(|&word| word == 0),
            "a new area"
        );
        assert_eq!(memory.blocks(0).len(), 0);
    }

    /// The VmFlags of the mapping that holds `address`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn vm_flags_at(address: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            // A mapping's header line begins with its address range; its fields follow.
            let range = line.split_whitespace().next().and_then(|range| {
                let (start, end) = range.split_once('-')?;
                Some((
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                ))
            });
            if let Some((start, end)) = range {
                inside = (start..end).contains(&address);
            } else if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_owned());
                }
            }
        }
        None
    }

    /// Whether the kernel gave huge pages depends on its mode and on free memory; what
    /// this code controls is that the memory is a 2 MiB-aligned mapping that asked (`hg`).
    /// Alignment and the core-dump advice hold on any Linux kernel; only the request for
    /// huge pages needs one built with them.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_memory_is_aligned_asks_for_huge_pages_and_stays_out_of_core_dumps() {
        let mut memory = HashMemory::default();
        let blocks = memory.blocks(crate::crypto::password::MEMORY_KIB as usize);
        let start = blocks.as_ptr() as usize;
        assert_eq!(start % HUGE_PAGE, 0, "aligned to a huge page");
        let flags = vm_flags_at(start + blocks.len() * 512).expect("the mapping is in smaps");
        let has = |wanted: &str| flags.split_whitespace().any(|flag| flag == wanted);
        assert!(has("dd"), "kept out of core dumps: VmFlags {flags}");
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            assert!(has("hg"), "advised MADV_HUGEPAGE: VmFlags {flags}");
        } else {
            eprintln!("this kernel has no transparent huge pages: `hg` not checked");
        }
    }
}
