//! Which `PORT_COUNTERS` slot each port counts into, and which `PORT_SLOTS` index publishes it
//! to the programs (they look a packet's port up by `ifindex & SLOT_MASK`, one array read).

use std::collections::{HashMap, HashSet, VecDeque};

pub(super) struct Slots {
    /// `PORT_SLOTS` size - 1.
    pub mask: u32,
    /// ifindex -> slot.
    pub of: HashMap<u32, u32>,
    /// `PORT_SLOTS` indexes in use.
    taken: HashSet<u32>,
    /// Oldest freed first: a slot is reused as late as possible, so a packet that raced its
    /// port's detach lands on a slot nobody reads.
    free: VecDeque<u32>,
}

impl Slots {
    pub fn new(max_ports: u32) -> Self {
        Self {
            mask: slot_table_len(max_ports) - 1,
            of: HashMap::new(),
            taken: HashSet::new(),
            free: (0..max_ports).collect(),
        }
    }

    /// A slot for `ifindex`, unless its table index is another port's: (index, slot).
    pub fn claim(&mut self, ifindex: u32) -> Option<(u32, u32)> {
        let index = ifindex & self.mask;
        if self.taken.contains(&index) {
            return None;
        }
        let slot = self.free.pop_front()?;
        self.of.insert(ifindex, slot);
        self.taken.insert(index);
        Some((index, slot))
    }

    /// Frees the slot of `ifindex`: its table index, if it had one.
    pub fn release(&mut self, ifindex: u32) -> Option<u32> {
        let slot = self.of.remove(&ifindex)?;
        self.free.push_back(slot);
        self.taken.remove(&(ifindex & self.mask));
        Some(ifindex & self.mask)
    }
}

/// `PORT_SLOTS` length for `max_ports`: a power of two, twice as many as ports, so that two
/// live ports rarely share an index (ifindexes mostly grow one by one).
fn slot_table_len(max_ports: u32) -> u32 {
    max_ports.max(1).next_power_of_two().saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_to_ports_with_a_free_index_and_come_back_oldest_first() {
        let mut s = Slots::new(2);
        assert_eq!(s.mask, 3, "twice the ports, a power of two");
        assert_eq!(s.claim(5), Some((1, 0)));
        // 9 & 3 == 1 is taken by ifindex 5: the hash it is.
        assert_eq!(s.claim(9), None);
        assert_eq!(s.claim(6), Some((2, 1)));
        // No slot left.
        assert_eq!(s.claim(7), None);
        assert_eq!(s.release(5), Some(1));
        assert_eq!(s.release(5), None);
        assert_eq!(s.claim(9), Some((1, 0)));
        assert_eq!(slot_table_len(1024), 2048);
        assert_eq!(slot_table_len(1000), 2048);
        assert_eq!(slot_table_len(0), 2);
    }
}
