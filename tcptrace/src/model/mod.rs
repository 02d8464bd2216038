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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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

/// A map keyed by socket cookie.
pub type CookieMap<V> = HashMap<u64, V, BuildHasherDefault<CookieHasher>>;
