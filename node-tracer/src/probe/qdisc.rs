//! The two netlink-mode chores aya does not do for us: counting the filters left on a clsact
//! qdisc, and deleting the qdisc once nothing uses it.

use futures::TryStreamExt as _;
use netlink_packet_route::tc::TcHandle;

use crate::error::{Error, Result};

/// Filters attached under the clsact qdisc of `iface`, both directions.
pub fn filters_on(iface: &str) -> Result<usize> {
    let index = ifindex(iface)?;
    let iface = iface.to_string();
    block_on(async move {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("netlink socket", e))?;
        tokio::spawn(conn);
        let mut n = 0;
        for egress in [false, true] {
            let mut req = handle.traffic_filter(index).get();
            req = if egress { req.egress() } else { req.ingress() };
            let found: Vec<_> = req
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::Netlink(format!("list filters on {iface}: {e}")))?;
            // The kernel answers with one message per filter chain head as well; only messages
            // carrying a filter kind are filters.
            n += found
                .iter()
                .filter(|m| {
                    m.attributes
                        .iter()
                        .any(|a| matches!(a, netlink_packet_route::tc::TcAttribute::Kind(_)))
                })
                .count();
        }
        Ok(n)
    })
}

/// Deletes the clsact qdisc of `iface`.
pub fn delete_clsact(iface: &str) -> Result<()> {
    let index = ifindex(iface)?;
    let iface = iface.to_string();
    block_on(async move {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("netlink socket", e))?;
        tokio::spawn(conn);
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
        req.execute()
            .await
            .map_err(|e| Error::Netlink(format!("delete clsact on {iface}: {e}")))
    })
}

fn ifindex(iface: &str) -> Result<i32> {
    let c = std::ffi::CString::new(iface).map_err(|_| Error::NoSuchInterface(iface.to_string()))?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(Error::NoSuchInterface(iface.to_string()))
    } else {
        Ok(i as i32)
    }
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
    .map_err(|_| Error::Netlink("netlink thread panicked".into()))?
}
