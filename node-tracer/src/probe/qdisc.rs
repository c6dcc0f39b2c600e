//! The netlink-mode chores aya does not do for us: counting the filters left on a clsact qdisc,
//! deleting the qdisc once nothing uses it, and removing the filters a dead agent left behind
//! (and only those).

use futures::TryStreamExt as _;
use netlink_packet_route::tc::TcHandle;

use crate::error::{Error, Result};

/// Filters attached under the clsact qdisc of `iface`, both directions.
pub fn filters_on(iface: &str) -> Result<usize> {
    on_link(iface, |handle, index, iface| async move {
        // The kernel answers with one message per filter chain head as well; only messages
        // carrying a filter kind are filters.
        let n = list_filters(&handle, index, &iface)
            .await?
            .iter()
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, netlink_packet_route::tc::TcAttribute::Kind(_)))
            })
            .count();
        Ok(n)
    })
}

/// Removes the cls_bpf filters on `iface` running a program named in `names` that no live
/// process holds: what a killed agent left. A filter whose program a live process holds belongs
/// to a running agent (a second instance, or the old one during a rolling update) and stays.
/// Returns how many were removed.
pub fn remove_orphan_filters(iface: &str, names: &'static [&'static str]) -> Result<usize> {
    use futures::StreamExt as _;
    use netlink_packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcFilterBpfOption, TcOption},
    };
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};

    on_link(iface, move |mut handle, index, iface| async move {
        // Scanning every process's fds takes tens of milliseconds on a busy node: only when a
        // filter of ours is actually there (after a crash), not on every attach.
        let mut held: Option<std::collections::HashSet<u32>> = None;
        let mut removed = 0;
        for m in list_filters(&handle, index, &iface).await? {
            let (mut name, mut id) = (None, None);
            for a in &m.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                            _ => {}
                        }
                    }
                }
            }
            let (Some(name), Some(id)) = (name, id) else {
                continue;
            };
            if !names.contains(&name.as_str())
                || held.get_or_insert_with(held_programs).contains(&id)
            {
                continue;
            }
            // The listed header names exactly this filter: parent, priority and handle.
            let mut del = netlink_packet_route::tc::TcMessage::default();
            del.header = m.header.clone();
            let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(del));
            msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let mut resp = handle.request(msg).map_err(|source| Error::Tc {
                what: "delete filter",
                interface: iface.clone(),
                source,
            })?;
            while let Some(r) = resp.next().await {
                if let NetlinkPayload::Error(e) = r.payload
                    && e.code.is_some()
                {
                    return Err(Error::TcRefused {
                        program: name.clone(),
                        interface: iface,
                        source: e.to_io(),
                    });
                }
            }
            removed += 1;
        }
        Ok(removed)
    })
}

/// Every filter message under the clsact qdisc of `index`, ingress then egress.
async fn list_filters(
    handle: &rtnetlink::Handle,
    index: i32,
    iface: &str,
) -> Result<Vec<netlink_packet_route::tc::TcMessage>> {
    let mut out = Vec::new();
    for egress in [false, true] {
        let mut req = handle.traffic_filter(index).get();
        req = if egress { req.egress() } else { req.ingress() };
        let found: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Tc {
                what: "list filters",
                interface: iface.to_owned(),
                source,
            })?;
        out.extend(found);
    }
    Ok(out)
}

/// Ids of the BPF programs some live process holds (a program or link fd).
fn held_programs() -> std::collections::HashSet<u32> {
    node_tracer_sys::held::held_bpf_objects(None)
        .into_iter()
        .filter_map(|h| h.prog_id)
        .collect()
}

/// Deletes the clsact qdisc of `iface`.
pub fn delete_clsact(iface: &str) -> Result<()> {
    on_link(iface, |handle, index, iface| async move {
        let mut req = handle.qdisc().del(index);
        let m = req.message_mut();
        m.header.parent = TcHandle {
            major: 0xffff,
            minor: 0xfff1,
        };
        m.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        req.execute().await.map_err(|source| Error::Tc {
            what: "delete clsact",
            interface: iface,
            source,
        })
    })
}

fn ifindex(iface: &str) -> Result<i32> {
    node_tracer_sys::netdev::ifindex_of(iface)
        .map(|i| i as i32)
        .ok_or_else(|| Error::NoSuchInterface(iface.to_string()))
}

/// Runs `work` with a fresh netlink handle and the ifindex and name of `iface`, to completion.
fn on_link<T, F, Fut>(iface: &str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle, i32, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let index = ifindex(iface)?;
    let iface = iface.to_string();
    block_on(async move {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("netlink socket", e))?;
        tokio::spawn(conn);
        work(handle, index, iface).await
    })
}

/// Runs a netlink exchange to completion from synchronous code, on a thread of its own so it
/// works whether or not the caller is inside a tokio runtime.
fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?
            .block_on(fut)
    })
    .join()
    .map_err(|_| Error::NetlinkThreadPanicked)?
}
