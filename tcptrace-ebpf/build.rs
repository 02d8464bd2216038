//! Rebuild the eBPF object when the `bpf-linker` binary changes: cargo cannot track it as a
//! dependency, and an object linked by a stale linker is a confusing failure.
//!
//! Also tells bpf-linker not to pass `-bpf-expand-memcpy-in-order` to LLVM. With it, the BPF
//! backend sets its inline limits for memset and memmove to zero, so every struct zeroing or
//! copy (an 80-byte `SockEntry`, a 16-byte comm) became a call to a byte-at-a-time loop; without
//! it they are a few 8-byte stores.
fn main() {
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
