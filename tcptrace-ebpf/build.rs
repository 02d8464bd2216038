//! Rebuild the eBPF object when the `bpf-linker` binary changes: cargo cannot track it as a
//! dependency, and an object linked by a stale linker is a confusing failure.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
