//! The kernel's BTF blob (/sys/kernel/btf/vmlinux): parsing and the struct sock lookups.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = tcptrace::kernel::btf::Btf::parse(data) {
        let _ = btf.sock_offsets();
        let _ = btf.typedef_id("btf_trace_inet_sock_set_state");
        let _ = btf.typedef_ids_blob(&["btf_trace_inet_sock_set_state"]);
    }
});
