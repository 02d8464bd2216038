//! What tcptrace knows about sockets, independent of where it learned it: TCP states and
//! endpoints, transitions, filters, the live socket table, connection stories, socket ids, owners.

pub mod cgroup;
pub mod connections;
pub mod filter;
pub mod owners;
pub mod snapshot;
pub mod socket_ids;
pub mod sockets;
pub mod tcp;
pub mod transition;

use std::hash::{BuildHasherDefault, Hasher};

use indexmap::IndexMap;

/// Socket cookies are small sequential integers: a multiplicative hash spreads them well and
/// costs one multiply (SipHash costs ~20 ns per lookup on the hot path).
#[derive(Default)]
pub struct CookieHasher(u64);

impl Hasher for CookieHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ self.0)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

/// A map keyed by socket cookie. An [`IndexMap`]: its entries live packed in a `Vec` (whose
/// unused capacity is never touched, so never resident) behind a table of 8-byte indices,
/// where a `HashMap` spreads whole entries over a table up to half empty. Measured with
/// `cargo xtask bench --rounds 0 --held 500000` (a million live sockets under `serve`): agent
/// peak RSS 341 MB with `HashMap`, 266 MB with `IndexMap` (each entry also keeps its 8-byte
/// hash). Remove with `swap_remove` (O(1); order is not used).
pub type CookieMap<V> = IndexMap<u64, V, BuildHasherDefault<CookieHasher>>;
