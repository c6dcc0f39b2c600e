//! Which pod owns a network namespace: CRI, CNI result cache, /run/netns, /proc.
