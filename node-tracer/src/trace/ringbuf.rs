//! The real [`EventSource`]: the programs' `EVENTS` ring buffer, read when epoll says it is
//! readable (no polling interval, no busy loop).

use std::{future::Future, pin::Pin};

use aya::maps::{MapData, RingBuf};
use node_tracer_common::IcmpEvent;
use tokio::io::unix::AsyncFd;

use super::EventSource;
use crate::error::{Error, Result};

pub struct RingBufSource {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl RingBufSource {
    /// `lost` reads the programs' count of events dropped because the ring was full.
    pub fn new(ring: RingBuf<MapData>, lost: Box<dyn Fn() -> u64 + Send + Sync>) -> Result<Self> {
        // SAFETY: the RingBuf owns its map fd and mmap for as long as the AsyncFd owns it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::io("register the event ring buffer with epoll", e.into()))?;
        Ok(Self { ring, lost })
    }
}

impl EventSource for RingBufSource {
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>> {
        Box::pin(async move {
            loop {
                // The epoll registration failing ends the source: the trace stops with what it
                // has, and says why here.
                let mut guard = match self.ring.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        log::warn!("waiting on the event ring buffer: {e}; the trace ends");
                        return None;
                    }
                };
                if let Some(ev) = read_one(guard.get_inner_mut()) {
                    return Some(ev);
                }
                guard.clear_ready();
            }
        })
    }

    fn try_next(&mut self) -> Option<IcmpEvent> {
        read_one(self.ring.get_mut())
    }

    fn lost(&self) -> u64 {
        (self.lost)()
    }
}

/// The next whole event in the ring, skipping records too short to be one; `None` when empty.
fn read_one(ring: &mut RingBuf<MapData>) -> Option<IcmpEvent> {
    loop {
        let item = ring.next()?;
        if item.len() < std::mem::size_of::<IcmpEvent>() {
            continue;
        }
        // SAFETY: the item holds at least one IcmpEvent written by the program; read_unaligned
        // copies it out of the ring without alignment assumptions.
        return Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<IcmpEvent>()) });
    }
}
