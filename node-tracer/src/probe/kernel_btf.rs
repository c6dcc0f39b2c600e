//! The few facts the drop and retransmit programs need from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): the names of `enum skb_drop_reason`, the byte offsets of the
//! fields they follow, and the shape of a tracepoint's arguments.
//!
//! aya-obj parses BTF, but keeps types' members and enum values crate-private in the version we
//! pin (0.3), so this is a small reader of its own for the kinds the format defines
//! (`include/uapi/linux/btf.h`): it walks the type section once and looks things up by name.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF (bad magic or a truncated header)")]
    NotBtf,
    #[error("BTF type section is truncated or holds an unknown kind {0}")]
    Malformed(u32),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// One type: its fixed header and where its trailing records start.
#[derive(Debug, Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u8,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_ty: u32,
    /// Offset of the trailing records in `Btf::types`.
    extra: usize,
}

/// A parsed BTF blob (little-endian, as on the hosts we run on).
pub struct Btf {
    types_data: Vec<u8>,
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_sys() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(BtfError::NotBtf);
        }
        let field = |i: usize| u32_at(data, 8 + 4 * i).ok_or(BtfError::NotBtf);
        let hdr_len = u32_at(data, 4).ok_or(BtfError::NotBtf)? as usize;
        let (type_off, type_len, str_off, str_len) = (
            field(0)? as usize,
            field(1)? as usize,
            field(2)? as usize,
            field(3)? as usize,
        );
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::NotBtf)
                .map(<[u8]>::to_vec)
        };
        let types_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let types = Self::walk(&types_data)?;
        Ok(Self {
            types_data,
            strings,
            types,
        })
    }

    fn walk(d: &[u8]) -> Result<Vec<Type>, BtfError> {
        let void = Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_ty: 0,
            extra: 0,
        };
        let mut types = vec![void];
        let mut at = 0;
        while at < d.len() {
            let bad = BtfError::Malformed(0);
            let (Some(name_off), Some(info), Some(size_or_ty)) =
                (u32_at(d, at), u32_at(d, at + 4), u32_at(d, at + 8))
            else {
                return Err(bad);
            };
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let extra = at + 12;
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12
                | 16 | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Malformed(u32::from(other))),
            };
            at = extra + trailing;
            if at > d.len() {
                return Err(bad);
            }
            types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_ty,
                extra,
            });
        }
        Ok(types)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn word(&self, at: usize) -> u32 {
        u32_at(&self.types_data, at).unwrap_or(0)
    }

    fn find(&self, kinds: &[u8], name: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    /// Follows typedefs and qualifiers to the type beneath.
    fn strip(&self, mut id: usize) -> Option<usize> {
        for _ in 0..32 {
            let t = self.types.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_ty as usize;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// The values of enum `name` (`ENUM` or `ENUM64`), by variant name.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let id = self
            .find(&[KIND_ENUM, KIND_ENUM64], name)
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let t = self.types[id];
        Ok((0..t.vlen)
            .map(|i| {
                if t.kind == KIND_ENUM {
                    let at = t.extra + 8 * i;
                    // Signed or not, the values we read are small and non-negative.
                    (
                        self.name(self.word(at)).to_string(),
                        u64::from(self.word(at + 4)),
                    )
                } else {
                    let at = t.extra + 12 * i;
                    let v = u64::from(self.word(at + 4)) | (u64::from(self.word(at + 8)) << 32);
                    (self.name(self.word(at)).to_string(), v)
                }
            })
            .collect())
    }

    /// Byte offset of the member `path` (e.g. `["ns", "inum"]`) in struct `name`, looking through
    /// anonymous structs and unions the way C does (`sk_buff.dev` lives in one).
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{name}.{}", path.join(".")));
        let mut id = self
            .find(&[KIND_STRUCT, KIND_UNION], name)
            .ok_or_else(missing)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (off, ty) = self.member_in(id, field, 0).ok_or_else(missing)?;
            total += off;
            if i + 1 < path.len() {
                id = self.strip(ty).ok_or_else(missing)?;
            }
        }
        Ok(total / 8)
    }

    /// (bit offset, type id) of `field` in struct/union `id`, searching anonymous members.
    fn member_in(&self, id: usize, field: &str, depth: u32) -> Option<(u32, usize)> {
        let t = self.types.get(id)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen {
            let at = t.extra + 12 * i;
            let (name_off, ty, raw) = (self.word(at), self.word(at + 4), self.word(at + 8));
            // With kind_flag, the high 8 bits are a bitfield's size.
            let off = if t.kind_flag { raw & 0x00ff_ffff } else { raw };
            if name_off == 0 {
                let inner = self.strip(ty as usize)?;
                if let Some((o, found)) = self.member_in(inner, field, depth + 1) {
                    return Some((off + o, found));
                }
            } else if self.name(name_off) == field {
                return Some((off, ty as usize));
            }
        }
        None
    }

    /// Parameters of a tracepoint as the kernel hands them to a `tp_btf` program: those of the
    /// `btf_trace_<name>` typedef's prototype, less its leading `void *` context.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<usize, BtfError> {
        let missing = || BtfError::Missing(format!("tracepoint {tracepoint}"));
        let id = self
            .find(&[KIND_TYPEDEF], &format!("btf_trace_{tracepoint}"))
            .ok_or_else(missing)?;
        let ptr = self.types[id].size_or_ty as usize;
        let proto = self
            .types
            .get(ptr)
            .filter(|t| t.kind == KIND_PTR)
            .ok_or_else(missing)?;
        let f = self
            .types
            .get(proto.size_or_ty as usize)
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or_else(missing)?;
        Ok(f.vlen.saturating_sub(1))
    }
}

/// Label values of `enum skb_drop_reason`, by value: `SKB_DROP_REASON_NETFILTER_DROP` becomes
/// `netfilter_drop`, `SKB_CONSUMED` `consumed`. Markers that are no reason (`…_MAX`,
/// `…_SUBSYS_MASK`) are left out.
pub fn drop_reason_names(btf: &Btf) -> Result<BTreeMap<u32, String>, BtfError> {
    let mut out = BTreeMap::new();
    for (name, value) in btf.enum_values("skb_drop_reason")? {
        if let Some(label) = reason_label(&name)
            && let Ok(v) = u32::try_from(value)
        {
            out.entry(v).or_insert(label);
        }
    }
    Ok(out)
}

/// `SKB_DROP_REASON_NO_SOCKET` -> `no_socket`; `None` for markers.
pub fn reason_label(variant: &str) -> Option<String> {
    let short = variant
        .strip_prefix("SKB_DROP_REASON_")
        .or_else(|| variant.strip_prefix("SKB_"))
        .unwrap_or(variant);
    if short.is_empty() || short == "MAX" || short.ends_with("SUBSYS_MASK") {
        return None;
    }
    Some(short.to_ascii_lowercase())
}

#[cfg(test)]
#[path = "kernel_btf_tests.rs"]
mod tests;
