use super::*;

/// Builds a BTF blob by hand: types are (name, info, size_or_ty, trailing words).
#[derive(Default)]
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Blob {
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
        let off = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_ty: u32, extra: &[u32]) {
        let n = self.s(name);
        for w in [n, (kind << 24) | vlen, size_or_ty]
            .iter()
            .chain(extra.iter())
        {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let tl = u32::try_from(self.types.len()).unwrap();
        let sl = u32::try_from(self.strings.len()).unwrap();
        for w in [24, 0, tl, tl, sl] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

fn sample() -> Btf {
    let mut b = Blob::new();
    // 1: int
    b.ty("int", 1, 0, 4, &[32]);
    // 2: enum skb_drop_reason { SKB_NOT_DROPPED_YET = 0, SKB_CONSUMED = 1,
    //    SKB_DROP_REASON_NETFILTER_DROP = 5, SKB_DROP_REASON_MAX = 6 }
    let names: Vec<u32> = [
        "SKB_NOT_DROPPED_YET",
        "SKB_CONSUMED",
        "SKB_DROP_REASON_NETFILTER_DROP",
        "SKB_DROP_REASON_MAX",
    ]
    .iter()
    .map(|n| b.s(n))
    .collect();
    b.ty(
        "skb_drop_reason",
        6,
        4,
        4,
        &[names[0], 0, names[1], 1, names[2], 5, names[3], 6],
    );
    // 3: struct inner { int a; int dev; } (size 8)
    let (a, dev) = (b.s("a"), b.s("dev"));
    b.ty("inner", 4, 2, 8, &[a, 1, 0, dev, 1, 32]);
    // 4: union (anonymous) { struct inner; }
    b.ty("", 5, 1, 8, &[0, 3, 0]);
    // 5: struct sk_buff { int x; <anonymous union at 64 bits>; }
    let x = b.s("x");
    b.ty("sk_buff", 4, 2, 16, &[x, 1, 0, 0, 4, 64]);
    // 6: typedef inner_t -> inner; 7: struct outer { int y; inner_t in; }
    b.ty("inner_t", 8, 0, 3, &[]);
    let (y, inn) = (b.s("y"), b.s("in"));
    b.ty("outer", 4, 2, 12, &[y, 1, 0, inn, 6, 32]);
    // 8: func_proto (void *, int, int); 9: ptr -> 8; 10: typedef btf_trace_x -> 9
    b.ty("", 13, 3, 0, &[0, 0, 0, 1, 0, 1]);
    b.ty("", 2, 0, 8, &[]);
    b.ty("btf_trace_x", 8, 0, 9, &[]);
    // 11: enum64 e64 { BIG = 1 << 40 }
    let big = b.s("BIG");
    b.ty("e64", 19, 1, 8, &[big, 0, 1 << 8]);
    Btf::parse(&b.bytes()).unwrap()
}

#[test]
fn labels_drop_the_prefix_and_lower_case() {
    assert_eq!(
        reason_label("SKB_DROP_REASON_NETFILTER_DROP").as_deref(),
        Some("netfilter_drop")
    );
    assert_eq!(reason_label("SKB_CONSUMED").as_deref(), Some("consumed"));
    assert_eq!(
        reason_label("SKB_NOT_DROPPED_YET").as_deref(),
        Some("not_dropped_yet")
    );
    assert_eq!(reason_label("SKB_DROP_REASON_MAX"), None);
    assert_eq!(reason_label("SKB_DROP_REASON_SUBSYS_MASK"), None);
    assert_eq!(reason_label("OTHER_THING").as_deref(), Some("other_thing"));
}

#[test]
fn hand_built_enum_gives_names_by_value() {
    let names = drop_reason_names(&sample()).unwrap();
    assert_eq!(names.get(&5).map(String::as_str), Some("netfilter_drop"));
    assert_eq!(names.get(&1).map(String::as_str), Some("consumed"));
    assert!(!names.values().any(|n| n == "max"), "{names:?}");
    assert_eq!(
        sample().enum_values("e64").unwrap(),
        vec![("BIG".to_string(), 1 << 40)]
    );
}

#[test]
fn members_are_found_through_anonymous_unions_and_typedefs() {
    let btf = sample();
    assert_eq!(btf.member_offset("sk_buff", &["dev"]).unwrap(), 8 + 4);
    assert_eq!(btf.member_offset("sk_buff", &["x"]).unwrap(), 0);
    assert_eq!(btf.member_offset("outer", &["in", "dev"]).unwrap(), 4 + 4);
    assert!(matches!(
        btf.member_offset("sk_buff", &["nope"]),
        Err(BtfError::Missing(_))
    ));
    assert_eq!(btf.tracepoint_args("x").unwrap(), 2);
}

#[test]
fn a_btf_without_the_enum_says_so() {
    let mut b = Blob::new();
    b.ty("int", 1, 0, 4, &[32]);
    let btf = Btf::parse(&b.bytes()).unwrap();
    let err = drop_reason_names(&btf).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the kernel's BTF has no enum skb_drop_reason"
    );
}

#[test]
fn garbage_is_refused_not_panicked_on() {
    assert!(matches!(Btf::parse(b""), Err(BtfError::NotBtf)));
    assert!(matches!(
        Btf::parse(&[0x9f, 0xeb, 1]),
        Err(BtfError::NotBtf)
    ));
    let mut blob = sample_bytes_truncated();
    blob.truncate(blob.len() - 3);
    assert!(Btf::parse(&blob).is_err());
}

fn sample_bytes_truncated() -> Vec<u8> {
    let mut b = Blob::new();
    b.ty("int", 1, 0, 4, &[32]);
    b.ty("s", 4, 3, 4, &[0, 1, 0]);
    b.bytes()
}

/// The running kernel's own BTF: the names and offsets the programs rely on exist.
#[test]
fn the_running_kernels_btf_has_what_the_programs_need() {
    let btf = Btf::from_sys().expect("/sys/kernel/btf/vmlinux (kernel built with BTF)");
    let names = drop_reason_names(&btf).unwrap();
    assert_eq!(names.get(&1).map(String::as_str), Some("consumed"));
    assert_eq!(names.get(&2).map(String::as_str), Some("not_specified"));
    for want in ["netfilter_drop", "no_socket", "ip_inhdr", "tc_ingress"] {
        assert!(names.values().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(names.values().all(|n| n == &n.to_ascii_lowercase()));
    // sk_buff.dev shares a union with dev_scratch inside an anonymous struct.
    let dev = btf.member_offset("sk_buff", &["dev"]).unwrap();
    assert!(dev > 0 && dev < 64, "{dev}");
    assert!(btf.member_offset("net", &["ns", "inum"]).unwrap() > 0);
    assert!(
        btf.member_offset("sock_common", &["skc_net", "net"])
            .is_ok()
    );
    assert_eq!(btf.tracepoint_args("kfree_skb").unwrap(), 4);
    assert!(btf.tracepoint_args("tcp_retransmit_skb").unwrap() >= 2);
    assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
}
