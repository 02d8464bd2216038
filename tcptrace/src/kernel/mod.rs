//! The kernel side, seen from the agent: loading the programs (offsets from BTF), the ring
//! buffers they write, decoding their records, and the kernel log.

pub mod btf;
pub mod decode;
pub mod error;
pub mod loader;
pub mod log;
pub mod ring;
