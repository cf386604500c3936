//! Admission: how many connections a listener holds, in all and per client
//! address, so that one peer opening connections in a loop spends its own
//! share and not the file descriptors and memory everyone else needs.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use crate::core::lock;

/// A listener's connection bounds and the connections it holds.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    /// `None`: no bound per client (the outbound side, whose one client is
    /// the local app).
    max_per_client: Option<usize>,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_client: Option<usize>) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_client,
            held: Mutex::new(Held::default()),
        })
    }

    /// A place for a connection from `client`, or the bound it would cross
    /// (a metric label).
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, &'static str> {
        let mut held = lock(&self.held);
        if held.total >= self.max_total {
            return Err("connection_limit");
        }
        if let Some(max) = self.max_per_client {
            let n = held.per_client.entry(client).or_default();
            if *n >= max {
                return Err("client_connection_limit");
            }
            *n += 1;
        }
        held.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            client,
        })
    }

    /// Connections held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.held).total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut held = lock(&a.held);
        held.total -= 1;
        if a.max_per_client.is_some()
            && let Some(n) = held.per_client.get_mut(&self.client)
        {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_all_and_per_client_and_gives_places_back() {
        let a = Admission::new(3, Some(2));
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), "client_connection_limit");
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), "connection_limit");
        drop(x1);
        assert_eq!(a.held(), 2);
        let _y2 = a.admit(y).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), "connection_limit");
        drop(_y2);
        drop(_y1);
        drop(_x2);
        assert_eq!(a.held(), 0);
        assert!(lock(&a.held).per_client.is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn without_a_client_bound_only_the_total_counts() {
        let a = Admission::new(2, None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let _c = (a.admit(ip).unwrap(), a.admit(ip).unwrap());
        assert_eq!(a.admit(ip).unwrap_err(), "connection_limit");
        assert!(lock(&a.held).per_client.is_empty());
    }
}
