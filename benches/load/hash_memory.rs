//! `cargo bench --bench load -- --hash-memory [--runs N]`: what huge pages are worth to
//! argon2. Each core's thread hashes with gatehouse's parameters in turns in a plain
//! `Vec<Block>` (what the hash threads used before) and in gatehouse's `HashMemory` (a
//! mapping of its own, advised to be backed by transparent huge pages), three hashes a
//! turn, N pairs of turns (40 unless `--runs` says), and prints each thread's mean time per
//! hash in each and the median of the pairs' time ratios. A pair of turns takes about a
//! tenth of a second, so both see the same machine: the ratio holds on a host whose speed
//! drifts by 20% between runs of the load benchmark.

use std::time::Instant;

use argon2::Block;
use gatehouse::crypto::hash_memory::HashMemory;
use gatehouse::crypto::password::{self, ITERATIONS, MEMORY_KIB, PARALLELISM};

const HASHES_PER_TURN: usize = 3;

pub fn compare(threads: usize, rounds: usize) -> Result<(), String> {
    let blocks = password::hasher().params().block_count();
    println!(
        "argon2id m={MEMORY_KIB} KiB t={ITERATIONS} p={PARALLELISM} on {threads} thread(s), \
         {rounds} turns each way; transparent huge pages: {}",
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_else(|_| "unknown".to_owned())
            .trim()
    );
    let results: Vec<(f64, f64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let argon2 = password::hasher();
                    let mut plain = vec![Block::new(); blocks];
                    let mut advised = HashMemory::default();
                    let turn = |memory: &mut [Block]| {
                        let mut out = [0u8; 32];
                        let started = Instant::now();
                        for _ in 0..HASHES_PER_TURN {
                            argon2
                                .hash_password_into_with_memory(
                                    b"correct horse battery staple",
                                    b"a salt of sixteen",
                                    &mut out,
                                    &mut *memory,
                                )
                                .expect("argon2 with gatehouse's parameters");
                        }
                        started.elapsed().as_secs_f64() * 1000.0 / HASHES_PER_TURN as f64
                    };
                    // One turn each to fault the memory in.
                    turn(&mut plain);
                    turn(advised.blocks(blocks));
                    let (mut plain_ms, mut advised_ms, mut ratios) = (0.0, 0.0, Vec::new());
                    for round in 0..rounds {
                        // Alternating which goes first, so neither always follows the other.
                        let (p, a) = if round % 2 == 0 {
                            let p = turn(&mut plain);
                            (p, turn(advised.blocks(blocks)))
                        } else {
                            let a = turn(advised.blocks(blocks));
                            (turn(&mut plain), a)
                        };
                        plain_ms += p;
                        advised_ms += a;
                        ratios.push(a / p);
                    }
                    ratios.sort_by(f64::total_cmp);
                    (
                        plain_ms / rounds as f64,
                        advised_ms / rounds as f64,
                        ratios[rounds / 2],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a hash thread failed".to_owned()))
            .collect::<Result<_, String>>()
    })?;
    for (plain, advised, ratio) in results {
        println!(
            "  mean per hash: plain Vec {plain:.2} ms, HashMemory {advised:.2} ms; median of \
             the pairs' time ratios HashMemory/plain {ratio:.3}"
        );
    }
    Ok(())
}
