//! Ports for instances, from `server.http_apps.ports`: each instance holds
//! one for its life (a restart keeps it); a new generation takes fresh ones
//! while the old one still serves on its own.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Ports held by instances of this process.
static HELD: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Where the next search starts, so a freed port is not reused at once (a
/// client may still hold a connection to the instance that had it). The
/// first search starts at an offset from the process id: two servers on
/// one machine (with the same range) rarely try the same port at once.
static NEXT: Mutex<Option<u32>> = Mutex::new(None);

/// A port held until dropped.
#[derive(Debug)]
pub struct PortLease(u16);

impl PortLease {
    pub fn port(&self) -> u16 {
        self.0
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.remove(&self.0);
        }
    }
}

/// A port of `range` (inclusive) that no instance holds and nothing
/// listens on now.
pub fn take((start, end): (u16, u16)) -> Option<PortLease> {
    let mut held = HELD.lock().ok()?;
    let mut next = NEXT.lock().ok()?;
    let count = u32::from(end) - u32::from(start) + 1;
    let first = *next.get_or_insert_with(|| std::process::id().wrapping_mul(7919));
    for step in 0..count {
        let offset = first.wrapping_add(step) % count;
        let port = (u32::from(start) + offset) as u16;
        if held.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.insert(port);
        *next = Some((offset + 1) % count);
        return Some(PortLease(port));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three consecutive ports nothing listens on now (tests running beside
    /// this one take ports too).
    fn free_range() -> (u16, u16) {
        (20_000..60_000u16)
            .step_by(97)
            .find(|&base| {
                (base..base + 3)
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
            })
            .map(|base| (base, base + 2))
            .expect("three free ports")
    }

    #[test]
    fn ports_are_held_until_dropped() {
        let range = free_range();
        let a = take(range).unwrap();
        let b = take(range).unwrap();
        assert_ne!(a.port(), b.port());
        let c = take(range).unwrap();
        assert!(take(range).is_none(), "all three are held");
        let freed = b.port();
        drop(b);
        assert_eq!(take(range).map(|p| p.port()), Some(freed));
        drop((a, c));
    }
}
