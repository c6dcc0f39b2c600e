//! `--write FILE.pcapng`: the traced frames as pcapng (draft-ietf-opsawg-pcapng), one interface
//! per veth named after the veth and its pod, so Wireshark and tshark show pod names where
//! tcpdump would show only `veth1234`. Written by hand: four block types, little-endian.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use node_tracer_common::{DIR_INGRESS, IcmpEvent, SNAP_LEN};

use crate::model::Port;

const BT_SHB: u32 = 0x0A0D_0D0A;
const BT_IDB: u32 = 0x0000_0001;
const BT_EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
/// `epb_flags` direction bits (0-1): the host veth's point of view, as a capture on it would be.
const EPB_INBOUND: u32 = 0b01;
const EPB_OUTBOUND: u32 = 0b10;

/// Writes a pcapng section; interfaces are described lazily, as veths first appear.
pub struct PcapngWriter<W: Write> {
    w: W,
    /// ifindex -> pcapng interface id (the order the IDBs were written).
    interfaces: HashMap<u32, u32>,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts the file: writes the section header block.
    pub fn new(mut w: W) -> io::Result<Self> {
        let mut body = Vec::with_capacity(32);
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes()); // major
        body.extend_from_slice(&0u16.to_le_bytes()); // minor
        // Section length unknown: we stream.
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        push_option(
            &mut body,
            SHB_USERAPPL,
            concat!("node-tracer ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        push_option(&mut body, OPT_END, &[]);
        write_block(&mut w, BT_SHB, &body)?;
        Ok(Self {
            w,
            interfaces: HashMap::new(),
        })
    }

    /// Writes one traced frame (`cap_len` bytes of it, `len` on the wire) at wall-clock `ts`,
    /// describing its veth first if this is the veth's first packet. `port` names it.
    pub fn write_event(
        &mut self,
        ev: &IcmpEvent,
        ts: SystemTime,
        port: Option<&Port>,
    ) -> io::Result<()> {
        let id = match self.interfaces.get(&ev.ifindex) {
            Some(&id) => id,
            None => self.add_interface(ev.ifindex, port)?,
        };
        let data = &ev.data[..usize::from(ev.cap_len).min(SNAP_LEN)];
        // Nanoseconds (if_tsresol 9); a time before the epoch cannot be stored and becomes 0.
        let ns = ts
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let flags = if ev.dir == DIR_INGRESS {
            EPB_INBOUND
        } else {
            EPB_OUTBOUND
        };

        let mut body = Vec::with_capacity(32 + data.len());
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ns as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        // The wire length is never below what we captured, whatever the event says.
        body.extend_from_slice(&ev.len.max(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        pad4(&mut body);
        push_option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
        push_option(&mut body, OPT_END, &[]);
        write_block(&mut self.w, BT_EPB, &body)
    }

    fn add_interface(&mut self, ifindex: u32, port: Option<&Port>) -> io::Result<u32> {
        let id = self.interfaces.len() as u32;
        let (name, description) = interface_strings(ifindex, port);
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes()); // reserved
        body.extend_from_slice(&(SNAP_LEN as u32).to_le_bytes());
        push_option(&mut body, IF_NAME, name.as_bytes());
        push_option(&mut body, IF_DESCRIPTION, description.as_bytes());
        push_option(&mut body, IF_TSRESOL, &[9]);
        push_option(&mut body, OPT_END, &[]);
        write_block(&mut self.w, BT_IDB, &body)?;
        self.interfaces.insert(ifindex, id);
        Ok(id)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// `if_name` ("veth1234 (default/web-1)") and `if_description` of a veth.
fn interface_strings(ifindex: u32, port: Option<&Port>) -> (String, String) {
    let Some(port) = port else {
        return (
            format!("if{ifindex}"),
            format!("host veth ifindex {ifindex}, not (yet) known"),
        );
    };
    let mut description = format!(
        "host veth {} ifindex {}, {}",
        port.name,
        port.ifindex,
        port.mode.as_str()
    );
    if let Some(master) = &port.master {
        let _ = write!(description, " on {master}");
    }
    if let Some(peer) = &port.peer {
        let _ = write!(
            description,
            ", peer {}",
            peer.name.as_deref().unwrap_or("?")
        );
        if !peer.addresses.is_empty() {
            let _ = write!(description, " {}", peer.addresses.join(" "));
        }
    }
    let name = match &port.pod {
        Some(pod) => {
            let _ = write!(
                description,
                ", pod {} (uid {}, from {})",
                pod.qualified_name(),
                pod.uid,
                pod.source.as_str()
            );
            format!("{} ({})", port.name, pod.qualified_name())
        }
        None => port.name.clone(),
    };
    (name, description)
}

/// Appends an option: code, length, value padded to 32 bits. Values longer than an option can
/// hold are cut (only descriptions could be, and never are in practice).
fn push_option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX) - 3)];
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    pad4(body);
}

fn pad4(body: &mut Vec<u8>) {
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
}

/// Block type, total length, body, total length again (so readers can walk backwards).
fn write_block(w: &mut impl Write, block_type: u32, body: &[u8]) -> io::Result<()> {
    let total =
        u32::try_from(12 + body.len()).map_err(|_| io::Error::other("pcapng block too large"))?;
    let mut block = Vec::with_capacity(12 + body.len());
    block.extend_from_slice(&block_type.to_le_bytes());
    block.extend_from_slice(&total.to_le_bytes());
    block.extend_from_slice(body);
    block.extend_from_slice(&total.to_le_bytes());
    w.write_all(&block)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::super::decode::testframes::*;
    use super::*;
    use crate::model::{Pod, PodSource};

    fn web(ifindex: u32, name: &str, pod: &str) -> Port {
        Port {
            ifindex,
            name: name.into(),
            pod: Some(Pod {
                namespace: "default".into(),
                name: pod.into(),
                uid: "u1".into(),
                source: PodSource::Cri,
                container: None,
            }),
            ..Port::default()
        }
    }

    /// A fresh directory per test run, so parallel runs never share a file.
    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("node-tracer-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn blocks_are_aligned_and_lengths_match() {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 1, 1, &[]);
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        w.write_event(&event(5, 0, 0, &f, 4, l4), at_epoch(1), None)
            .unwrap();
        w.write_event(&event(5, 1, 0, &f, 4, l4), at_epoch(2), None)
            .unwrap();
        let bytes = w.into_inner();
        // Walk the blocks: SHB, one IDB (same veth twice), two EPBs.
        let mut off = 0;
        let mut types = Vec::new();
        while off < bytes.len() {
            let ty = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            let trailer =
                u32::from_le_bytes(bytes[off + len - 4..off + len].try_into().unwrap()) as usize;
            assert_eq!(trailer, len);
            types.push(ty);
            off += len;
        }
        assert_eq!(types, vec![BT_SHB, BT_IDB, BT_EPB, BT_EPB]);
    }

    #[test]
    fn tshark_reads_names_lengths_and_directions() {
        let Ok(out) = Command::new("tshark").arg("--version").output() else {
            panic!("tshark is required: DEBIAN_FRONTEND=noninteractive apt-get install -y tshark");
        };
        assert!(out.status.success(), "tshark --version failed");

        let dir = temp_dir("pcapng");
        let path = dir.join("trace.pcapng");
        let a = web(5, "veth1234", "web-1");
        let b = web(6, "veth5678", "web-2");
        let t0 = 1_795_381_837_000_000_000;
        let mut w = PcapngWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
        let mut want = Vec::new();
        for seq in 0..5u16 {
            let (req, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 7, seq, &[]);
            let (rep, _) = icmp4([10, 0, 0, 3], [10, 0, 0, 2], 0, 0, 7, seq, &[]);
            let t = t0 + u64::from(seq) * 1_000_000;
            for (port, dir, frame, ty) in [
                (&a, 0, &req, 8),
                (&b, 1, &req, 8),
                (&b, 0, &rep, 0),
                (&a, 1, &rep, 0),
            ] {
                let ev = event(port.ifindex, dir, t, frame, 4, l4);
                w.write_event(&ev, at_epoch(t), Some(port)).unwrap();
                want.push(format!(
                    "{} (default/{})\t{}\t98\t98\t0x0000000{}",
                    port.name,
                    port.pod.as_ref().unwrap().name,
                    ty,
                    if dir == 0 { 1 } else { 2 }
                ));
            }
        }
        // An IPv6 packet longer than the snap length: captured 128 of 200 bytes.
        let (big, l4) = icmp6(
            "fd00::2".parse().unwrap(),
            "fd00::3".parse().unwrap(),
            128,
            0,
            [0, 1, 0, 1],
            &[0; 138],
        );
        assert_eq!(big.len(), 200);
        w.write_event(&event(7, 0, 0, &big, 6, l4), at_epoch(t0), None)
            .unwrap();
        want.push("if7\t\t200\t128\t0x00000001".to_owned());
        w.flush().unwrap();
        drop(w);

        let out = Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args([
                "-T",
                "fields",
                "-e",
                "frame.interface_name",
                "-e",
                "icmp.type",
            ])
            .args([
                "-e",
                "frame.len",
                "-e",
                "frame.cap_len",
                "-e",
                "frame.packet_flags_direction",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got.len(), 21, "{stdout}");
        assert_eq!(got, want);

        // Descriptions and the wall-clock time of the first packet survive too.
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args([
                "-c",
                "1",
                "-T",
                "fields",
                "-e",
                "frame.interface_description",
                "-e",
                "frame.time_epoch",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim_end(),
            "host veth veth1234 ifindex 5, unattached, pod default/web-1 (uid u1, from cri)\t1795381837.000000000"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
