//! Builds the eBPF object from `tcptrace-ebpf` with the nightly toolchain (aya-build) so the
//! agent can embed it with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    // The shared types are compiled into the eBPF object too.
    println!("cargo:rerun-if-changed=../tcptrace-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tcptrace-ebpf",
            root_dir: "../tcptrace-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
