//! Just enough of a BTF reader to find where struct members live in the running kernel.
//!
//! Rust eBPF programs carry no CO-RE relocations, so the program cannot ask the kernel to fix
//! up field offsets at load time. Instead the agent reads `/sys/kernel/btf/vmlinux`, resolves
//! the offsets of the `struct sock` fields the program reads, and hands them to the program as
//! load-time globals (see `tcptrace_common::SockOffsets`).
//!
//! Hand-written because the BTF crates decode every type of the kernel's ~130k up front: aya's
//! own `Btf::from_sys_fs()` peaks at ~25 MB and the other BTF crates measured 20-40 MB, where
//! this index over the borrowed blob keeps the agent's startup peak at ~8.5 MB above the blob.

use std::collections::HashMap;

use tcptrace_common::SockOffsets;

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error(
        "BTF member `{strukt}.{member}` is {bits} bits wide where tcptrace reads {want}: this kernel is not supported yet"
    )]
    Width {
        strukt: String,
        member: String,
        bits: u32,
        want: u32,
    },
}

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset from the start of the enclosing struct, in bits.
    bit_offset: u32,
    /// Bitfield width in bits, 0 when the member is not a bitfield.
    bitfield_size: u32,
}

/// One type record, read on demand from the blob.
#[derive(Debug, Clone, Copy)]
struct Type<'a> {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// Size in bytes for INT/STRUCT/UNION/ENUM, the referenced type id for modifiers.
    size_or_type: u32,
    /// The member records of a STRUCT/UNION (12 bytes each), empty otherwise.
    members: &'a [u8],
}

impl Type<'_> {
    fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.chunks_exact(12).map(|m| {
            let word = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
            let offset = word(8);
            let (bit_offset, bitfield_size) = if self.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Member {
                name: word(0),
                type_id: word(4),
                bit_offset,
                bitfield_size,
            }
        })
    }
}

/// A BTF blob, borrowed: an index of where each type record starts and the structs by name.
/// Records are decoded when asked for, so reading the kernel's ~130k types costs half a
/// megabyte of index instead of a decoded copy of everything.
pub struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    /// Byte offset of type `id` in `types_data`; index 0 (the implicit `void`) is unused.
    offsets: Vec<u32>,
    structs_by_name: HashMap<&'a str, u32>,
}

/// Where a member lives, relative to the start of the outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLocation {
    pub bit_offset: u32,
    /// Width in bits (the bitfield width, or the member type's size × 8).
    pub bits: u32,
}

impl FieldLocation {
    pub fn byte_offset(&self) -> u32 {
        self.bit_offset / 8
    }
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

/// Bytes of kind-specific data after a type's 12-byte header.
fn trailing_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        0..=KIND_ENUM64 => 0,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

impl<'a> Btf<'a> {
    /// Indexes a little-endian BTF blob (what `/sys/kernel/btf/vmlinux` holds on x86_64 and
    /// arm64).
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;

        let mut btf = Self {
            types_data,
            strings,
            offsets: vec![0],
            structs_by_name: HashMap::new(),
        };
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let end = at + 12 + trailing_len(kind, (info & 0xffff) as usize)?;
            if end > types_data.len() {
                return Err(BtfError::Malformed("type section ends mid-type"));
            }
            let id = btf.offsets.len() as u32;
            btf.offsets.push(at as u32);
            if kind == KIND_STRUCT && name != 0 {
                // Keep the first definition: a name is unique among vmlinux structs.
                btf.structs_by_name.entry(btf.string(name)).or_insert(id);
            }
            at = end;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &'a str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<Type<'a>> {
        if id == 0 {
            return None;
        }
        let at = *self.offsets.get(id as usize)? as usize;
        let word = |i: usize| u32_at(self.types_data, at + i).ok();
        let info = word(4)?;
        let kind = (info >> 24) & 0x1f;
        let members = if matches!(kind, KIND_STRUCT | KIND_UNION) {
            let n = (info & 0xffff) as usize;
            self.types_data.get(at + 12..at + 12 + n * 12)?
        } else {
            &[]
        };
        Some(Type {
            name: word(0)?,
            kind,
            kind_flag: info >> 31 == 1,
            size_or_type: word(8)?,
            members,
        })
    }

    /// The value of `member` in `enum name` (a plain 32-bit enum), e.g. `SOCK_DONE` in
    /// `enum sock_flags`.
    pub fn enum_value(&self, name: &str, member: &str) -> Option<i64> {
        (1..self.offsets.len() as u32).find_map(|id| {
            let at = *self.offsets.get(id as usize)? as usize;
            let info = u32_at(self.types_data, at + 4).ok()?;
            if (info >> 24) & 0x1f != KIND_ENUM
                || self.string(u32_at(self.types_data, at).ok()?) != name
            {
                return None;
            }
            // struct btf_enum { __u32 name_off; __s32 val; }, vlen of them.
            (0..(info & 0xffff) as usize).find_map(|i| {
                let entry = at + 12 + i * 8;
                let entry_name = self.string(u32_at(self.types_data, entry).ok()?);
                (entry_name == member)
                    .then(|| {
                        u32_at(self.types_data, entry + 4)
                            .ok()
                            .map(|v| i64::from(v as i32))
                    })
                    .flatten()
            })
        })
    }

    /// The id of `typedef name`, e.g. `btf_trace_inet_sock_set_state` (the type a
    /// `tp_btf` program names as its attach target).
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        (1..self.offsets.len() as u32).find(|&id| {
            self.ty(id)
                .is_some_and(|t| t.kind == KIND_TYPEDEF && self.string(t.name) == name)
        })
    }

    /// A small BTF blob in which each `typedef` of `names` has the same id as here and every
    /// type before it is a nameless placeholder. Attaching a `tp_btf` program needs only the
    /// id of its `btf_trace_*` typedef; handing aya this instead of the whole kernel BTF saves
    /// it decoding ~130k types (some 30 MB at peak). Names this BTF lacks are left out.
    pub fn typedef_ids_blob(&self, names: &[&str]) -> Vec<u8> {
        let found: Vec<(u32, &str)> = names
            .iter()
            .filter_map(|&n| Some((self.typedef_id(n)?, n)))
            .collect();
        let last = found.iter().map(|&(id, _)| id).max().unwrap_or(0);
        let mut strings = vec![0u8];
        let mut types = Vec::with_capacity(last as usize * 12);
        for id in 1..=last {
            let (name, info) = match found.iter().find(|&&(i, _)| i == id) {
                Some(&(_, n)) => {
                    let at = strings.len() as u32;
                    strings.extend_from_slice(n.as_bytes());
                    strings.push(0);
                    (at, KIND_TYPEDEF << 24)
                }
                None => (0, KIND_PTR << 24),
            };
            for word in [name, info, 0] {
                types.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]); // version 1, no flags
        let (types_len, strings_len) = (types.len() as u32, strings.len() as u32);
        for word in [24, 0, types_len, types_len, strings_len] {
            blob.extend_from_slice(&u32::to_le_bytes(word));
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type<'a>> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    fn type_bits(&self, id: u32) -> u32 {
        match self.resolve(id) {
            Some(ty) if matches!(ty.kind, KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM) => {
                // A malformed blob may claim any size (found by fuzzing).
                ty.size_or_type.saturating_mul(8)
            }
            _ => 0,
        }
    }

    /// Finds `name` among the members of `ty`, looking through anonymous structs and unions
    /// (as C does). Returns the bit offset relative to `ty`.
    fn find_member(&self, ty: &Type<'a>, name: &str, depth: u32) -> Option<Member> {
        if depth > 8 {
            return None;
        }
        if let Some(m) = ty
            .members()
            .find(|m| m.name != 0 && self.string(m.name) == name)
        {
            return Some(m);
        }
        for m in ty.members().filter(|m| m.name == 0) {
            let inner = self.resolve(m.type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member(&inner, name, depth + 1)
            {
                return Some(Member {
                    bit_offset: m.bit_offset.saturating_add(found.bit_offset),
                    ..found
                });
            }
        }
        None
    }

    /// Locates a member path such as `__sk_common.skc_family` inside `struct strukt`.
    pub fn field(&self, strukt: &str, path: &str) -> Result<FieldLocation, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut ty = self.ty(id).ok_or(BtfError::Malformed("dangling type id"))?;
        let mut bit_offset = 0;
        let mut bits = 0;
        for (i, part) in path.split('.').enumerate() {
            let member = self
                .find_member(&ty, part, 0)
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_owned(),
                    member: path.split('.').take(i + 1).collect::<Vec<_>>().join("."),
                })?;
            bit_offset = member.bit_offset.saturating_add(bit_offset);
            bits = if member.bitfield_size != 0 {
                member.bitfield_size
            } else {
                self.type_bits(member.type_id)
            };
            if let Some(next) = self.resolve(member.type_id) {
                ty = next;
            }
        }
        Ok(FieldLocation { bit_offset, bits })
    }

    /// Resolves every `struct sock` field the eBPF program reads. The fields it reads with
    /// plain loads (`TcpSock` in the eBPF crate) are checked to be as wide as those loads: the
    /// verifier refuses a load wider than its member, which would fail the whole program.
    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        let loaded = |path: &str, want: u32| self.loaded("sock", path, want);
        // An optional field of another width is left out, like a missing one.
        let optional_loaded =
            |strukt: &str, path: &str, want: u32| match self.loaded(strukt, path, want) {
                Ok(off) => Ok(off),
                Err(BtfError::NoMember { .. } | BtfError::NoStruct(_) | BtfError::Width { .. }) => {
                    Ok(SockOffsets::ABSENT)
                }
                Err(e) => Err(e),
            };
        // Kernels built without IPv6 have no skc_v6_* members; the program then reads IPv4 only.
        let optional = |path: &str| match self.field("sock", path) {
            Ok(f) => Ok(f.byte_offset()),
            Err(BtfError::NoMember { .. }) => Ok(SockOffsets::ABSENT),
            Err(e) => Err(e),
        };
        // sk_cgrp_data.cgroup since Linux 5.15; before, the union member `val` holds the
        // pointer or, with low bits set, net_prio/net_cls data (`sock_cgroup_ptr()`).
        let (cgroup, cgroup_tagged) = match optional("sk_cgrp_data.cgroup")? {
            SockOffsets::ABSENT => match optional("sk_cgrp_data.val")? {
                SockOffsets::ABSENT => (SockOffsets::ABSENT, false),
                val => (val, true),
            },
            direct => (direct, false),
        };
        Ok(SockOffsets {
            family: loaded("__sk_common.skc_family", 16)?,
            num: loaded("__sk_common.skc_num", 16)?,
            dport: loaded("__sk_common.skc_dport", 16)?,
            rcv_saddr: loaded("__sk_common.skc_rcv_saddr", 32)?,
            daddr: loaded("__sk_common.skc_daddr", 32)?,
            v6_rcv_saddr: optional_loaded("sock", "__sk_common.skc_v6_rcv_saddr", 128)?,
            v6_daddr: optional_loaded("sock", "__sk_common.skc_v6_daddr", 128)?,
            // Without CONFIG_NET_NS possible_net_t is empty and there is one namespace.
            net: optional("__sk_common.skc_net.net")?,
            net_inum: self.optional_field("net", "ns.inum")?,
            cgroup,
            cgroup_kn: self.optional_field("cgroup", "kn")?,
            kn_id: self.optional_field("kernfs_node", "id")?,
            inet_sport: optional_loaded("inet_sock", "inet_sport", 16)?,
            cookie: optional("__sk_common.skc_cookie")?,
            cgroup_tagged: u32::from(cgroup_tagged),
            state: optional("__sk_common.skc_state")?,
            bind_node: optional("__sk_common.skc_bind_node")?,
            accept_tail: self
                .optional_field("inet_connection_sock", "icsk_accept_queue.rskq_accept_tail")?,
            req_sk: self.optional_field("request_sock", "sk")?,
            snt_synack: self.optional_field("tcp_request_sock", "snt_synack")?,
            bytes_acked: optional_loaded("tcp_sock", "bytes_acked", 64)?,
            bytes_received: optional_loaded("tcp_sock", "bytes_received", 64)?,
            total_retrans: optional_loaded("tcp_sock", "total_retrans", 32)?,
            srtt_us: optional_loaded("tcp_sock", "srtt_us", 32)?,
            mdev_us: optional_loaded("tcp_sock", "mdev_us", 32)?,
            sk_flags: optional_loaded("sock", "__sk_common.skc_flags", 64)?,
            sock_done_bit: self
                .enum_value("sock_flags", "SOCK_DONE")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(SockOffsets::ABSENT),
        })
    }

    /// Byte offset of `strukt.path` when the member is `want` bits wide; `BtfError::Width`
    /// when it is not.
    fn loaded(&self, strukt: &str, path: &str, want: u32) -> Result<u32, BtfError> {
        let f = self.field(strukt, path)?;
        if f.bits != want {
            return Err(BtfError::Width {
                strukt: strukt.to_owned(),
                member: path.to_owned(),
                bits: f.bits,
                want,
            });
        }
        Ok(f.byte_offset())
    }

    /// Byte offset of `strukt.path`, or [`SockOffsets::ABSENT`] when this kernel lacks it.
    fn optional_field(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        match self.field(strukt, path) {
            Ok(f) => Ok(f.byte_offset()),
            Err(BtfError::NoMember { .. } | BtfError::NoStruct(_)) => Ok(SockOffsets::ABSENT),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from raw type records and a string table.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn int(&mut self, name: &str, bytes: u32) {
            let n = self.s(name);
            self.push(&[n, KIND_INT << 24, bytes, bytes * 8]);
        }

        /// members: (name, type id, bit offset, bitfield size)
        fn strukt(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) {
            let n = self.s(name);
            let kind_flag = u32::from(members.iter().any(|m| m.3 != 0));
            self.push(&[
                n,
                (kind_flag << 31) | (kind << 24) | members.len() as u32,
                size,
            ]);
            for &(mname, ty, off, bits) in members {
                let mn = self.s(mname);
                self.push(&[mn, ty, (bits << 24) | off]);
            }
        }

        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [24u32, 0, self.types.len() as u32, self.types.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature `struct sock` shaped like the kernel's: anonymous unions, nested structs and
    /// (optionally) a bitfield member, the pre-5.6 `sk_protocol`.
    fn mini_sock(protocol_bitfield: bool, ipv6: bool) -> Vec<u8> {
        mini_sock_with(protocol_bitfield, ipv6, false)
    }

    /// `mini_sock`, optionally with a pre-5.15 `sk_cgrp_data` (`union { ...; u64 val; }`) at
    /// byte 0x2a0.
    fn mini_sock_with(protocol_bitfield: bool, ipv6: bool, cgroup_val: bool) -> Vec<u8> {
        let mut b = Builder::new();
        b.int("u16", 2); // 1
        b.int("u32", 4); // 2
        // 3: anonymous struct { skc_daddr; skc_rcv_saddr; }
        b.strukt(
            KIND_STRUCT,
            "",
            8,
            &[("skc_daddr", 2, 0, 0), ("skc_rcv_saddr", 2, 32, 0)],
        );
        // 4: anonymous union { u64-ish skc_addrpair; struct 3 }
        b.strukt(
            KIND_UNION,
            "",
            8,
            &[("skc_addrpair", 2, 0, 0), ("", 3, 0, 0)],
        );
        // 5: anonymous struct { skc_dport; skc_num; }
        b.strukt(
            KIND_STRUCT,
            "",
            4,
            &[("skc_dport", 1, 0, 0), ("skc_num", 1, 16, 0)],
        );
        // 6: anonymous union { skc_portpair; struct 5 }
        b.strukt(
            KIND_UNION,
            "",
            4,
            &[("skc_portpair", 2, 0, 0), ("", 5, 0, 0)],
        );
        // 7: struct in6_addr (16 bytes)
        b.strukt(KIND_STRUCT, "in6_addr", 16, &[("s6_addr32", 2, 0, 0)]);
        // 8: struct sock_common
        let mut common = vec![("", 4, 0, 0), ("", 6, 96, 0), ("skc_family", 1, 128, 0)];
        if ipv6 {
            common.push(("skc_v6_daddr", 7, 448, 0));
            common.push(("skc_v6_rcv_saddr", 7, 576, 0));
        }
        b.strukt(KIND_STRUCT, "sock_common", 88, &common);
        // 9: typedef to check resolution through typedefs
        let n = b.s("sock_common_t");
        b.push(&[n, KIND_TYPEDEF << 24, 8]);
        // 10: u64, 11: anonymous union { u64 val; }, 12: struct sock_cgroup_data
        b.int("u64", 8);
        b.strukt(KIND_UNION, "", 8, &[("val", 10, 0, 0)]);
        b.strukt(KIND_STRUCT, "sock_cgroup_data", 8, &[("", 11, 0, 0)]);
        // 13: struct sock
        let mut sock = if protocol_bitfield {
            vec![
                ("__sk_common", 9, 0, 0),
                ("sk_userlocks", 2, 0x200 * 8 + 4, 4),
                ("sk_protocol", 2, 0x200 * 8 + 8, 8),
            ]
        } else {
            vec![("__sk_common", 9, 0, 0), ("sk_protocol", 1, 0x20c * 8, 0)]
        };
        if cgroup_val {
            sock.push(("sk_cgrp_data", 12, 0x2a0 * 8, 0));
        }
        b.strukt(KIND_STRUCT, "sock", 800, &sock);
        b.build()
    }

    #[test]
    fn resolves_sock_fields_through_anonymous_members_and_typedefs() {
        let blob = mini_sock(false, true);
        let btf = Btf::parse(&blob).unwrap();
        let off = btf.sock_offsets().unwrap();
        assert_eq!(
            off,
            SockOffsets {
                family: 16,
                num: 14,
                dport: 12,
                rcv_saddr: 4,
                daddr: 0,
                v6_rcv_saddr: 72,
                v6_daddr: 56,
                ..SockOffsets::UNRESOLVED
            }
        );
    }

    #[test]
    fn a_directly_loaded_field_of_another_width_is_refused_or_left_out() {
        let btf_blob = mini_sock(false, true);
        let btf = Btf::parse(&btf_blob).unwrap();
        // skc_family is a u16: a 32-bit load of it would fail the whole program.
        assert!(matches!(
            btf.loaded("sock", "__sk_common.skc_family", 32),
            Err(BtfError::Width {
                bits: 16,
                want: 32,
                ..
            })
        ));
        assert_eq!(btf.loaded("sock", "__sk_common.skc_family", 16), Ok(16));
    }

    #[test]
    fn a_bitfield_member_has_its_own_width_and_bit_offset() {
        // The width check relies on it: a member that became a bitfield is refused.
        let blob = mini_sock(true, true);
        let btf = Btf::parse(&blob).unwrap();
        let f = btf.field("sock", "sk_protocol").unwrap();
        assert_eq!((f.bit_offset, f.bits), (0x200 * 8 + 8, 8));
        assert!(matches!(
            btf.loaded("sock", "sk_protocol", 16),
            Err(BtfError::Width { bits: 8, .. })
        ));
    }

    #[test]
    fn pre_5_15_cgroup_data_is_read_as_a_tagged_value() {
        let off = Btf::parse(&mini_sock_with(true, true, true))
            .unwrap()
            .sock_offsets()
            .unwrap();
        assert_eq!((off.cgroup, off.cgroup_tagged), (0x2a0, 1));
        let off = Btf::parse(&mini_sock(true, true))
            .unwrap()
            .sock_offsets()
            .unwrap();
        assert_eq!((off.cgroup, off.cgroup_tagged), (SockOffsets::ABSENT, 0));
    }

    #[test]
    fn kernel_without_ipv6_marks_v6_fields_absent() {
        let blob = mini_sock(false, false);
        let btf = Btf::parse(&blob).unwrap();
        let off = btf.sock_offsets().unwrap();
        assert_eq!(off.v6_daddr, SockOffsets::ABSENT);
        assert_eq!(off.v6_rcv_saddr, SockOffsets::ABSENT);
        assert_eq!(off.family, 16);
    }

    #[test]
    fn missing_member_names_the_path() {
        let blob = mini_sock(false, true);
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(
            btf.field("sock", "__sk_common.skc_nope"),
            Err(BtfError::NoMember {
                strukt: "sock".into(),
                member: "__sk_common.skc_nope".into()
            })
        );
        assert_eq!(
            btf.field("socket", "x"),
            Err(BtfError::NoStruct("socket".into()))
        );
    }

    /// Fuzzing found it: a member type claiming a size near u32::MAX overflowed its bit count.
    #[test]
    fn absurd_sizes_and_offsets_are_not_a_panic() {
        let crash: &[u8] = &[
            159, 235, 254, 7, 0, 0, 0, 0, 1, 0, 0, 0, 112, 0, 0, 0, 0, 0, 0, 0, 121, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 115, 111, 99, 107, 0, 0, 128, 0, 0, 0, 91, 1, 14, 159, 16, 1, 0, 0, 0, 1,
            0, 0, 0, 30, 0, 0, 0, 4, 0, 0, 4, 0, 255, 0, 99, 107, 0, 0, 0, 1, 0, 0, 0, 112, 0, 0,
            0, 0, 0, 0, 0, 121, 0, 0, 0, 0, 0, 0, 0, 0, 0, 115, 111, 99, 107, 0, 0, 128, 0, 0, 0,
            91, 116, 116, 116, 116, 116, 115, 107, 95, 112, 114, 111, 116, 111, 99, 111, 108, 0,
            116, 116, 116, 116,
        ];
        if let Ok(btf) = Btf::parse(crash) {
            let _ = btf.sock_offsets();
        }
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(Btf::parse(&[1, 2, 3]).is_err());
        let mut blob = mini_sock(false, true);
        assert!(Btf::parse(&blob[..30]).is_err());
        blob[0] = 0;
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn parses_the_running_kernels_btf() {
        // tcptrace requires a BTF kernel, so its tests do too.
        let data = std::fs::read(VMLINUX_BTF).expect("this kernel exposes BTF");
        let btf = Btf::parse(&data).unwrap();
        let off = btf.sock_offsets().unwrap();
        // skc_daddr opens struct sock_common on every kernel since 2.6.
        assert_eq!(off.daddr, 0);
        assert_eq!(off.rcv_saddr, 4);
        assert!(off.family > off.num);
        assert_ne!(off.net, SockOffsets::ABSENT, "skc_net.net");
        assert_ne!(off.net_inum, SockOffsets::ABSENT, "net.ns.inum");
        assert_ne!(off.cgroup, SockOffsets::ABSENT, "sk_cgrp_data.cgroup");
        assert_eq!(off.cgroup_tagged, 0, "a 5.15+ kernel has the plain pointer");
        assert_ne!(off.cookie, SockOffsets::ABSENT, "skc_cookie");
        assert_ne!(off.cgroup_kn, SockOffsets::ABSENT, "cgroup.kn");
        assert_ne!(off.kn_id, SockOffsets::ABSENT, "kernfs_node.id");
        // struct inet_sock starts with its struct sock.
        assert!(off.inet_sport != SockOffsets::ABSENT && off.inet_sport > off.family);
        // What finds a child's listener and its request's SYN-ACK time.
        assert_eq!(off.state, off.family + 2, "skc_state follows skc_family");
        assert!(off.bind_node != SockOffsets::ABSENT && off.bind_node < off.cookie);
        assert!(off.accept_tail != SockOffsets::ABSENT && off.accept_tail > off.inet_sport);
        assert_ne!(off.req_sk, SockOffsets::ABSENT, "request_sock.sk");
        assert_ne!(
            off.snt_synack,
            SockOffsets::ABSENT,
            "tcp_request_sock.snt_synack"
        );
        // What a connection carried, read at its close, and whether the peer's FIN came:
        // enum sock_flags { SOCK_DEAD, SOCK_DONE, ... } since Linux 2.6.
        assert_eq!(off.sock_done_bit, 1);
        assert_ne!(off.sk_flags, SockOffsets::ABSENT, "skc_flags");
        for (name, o) in [
            ("bytes_acked", off.bytes_acked),
            ("bytes_received", off.bytes_received),
            ("total_retrans", off.total_retrans),
            ("srtt_us", off.srtt_us),
            ("mdev_us", off.mdev_us),
        ] {
            assert!(
                o != SockOffsets::ABSENT && o > off.accept_tail,
                "tcp_sock.{name}"
            );
        }
    }

    #[test]
    fn typedef_ids_blob_keeps_the_kernels_ids_for_aya() {
        let data = std::fs::read(VMLINUX_BTF).expect("this kernel exposes BTF");
        let btf = Btf::parse(&data).unwrap();
        let names = [
            "btf_trace_inet_sock_set_state",
            "btf_trace_tcp_receive_reset",
        ];
        let full = aya::Btf::parse(&data, aya::Endianness::default()).unwrap();
        let blob = btf.typedef_ids_blob(&[names[0], names[1], "btf_trace_no_such_thing"]);
        let small = aya::Btf::parse(&blob, aya::Endianness::default()).unwrap();
        for name in names {
            let id = full
                .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Typedef)
                .unwrap();
            assert_eq!(btf.typedef_id(name), Some(id), "{name}");
            let got = small.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Typedef);
            assert_eq!(got.unwrap(), id, "{name}");
        }
        assert!(btf.typedef_id("btf_trace_no_such_thing").is_none());
        assert!(blob.len() < data.len() / 2, "{} bytes", blob.len());
    }
}
