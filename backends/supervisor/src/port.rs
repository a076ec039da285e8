//! Choosing a port for a server. Binding :0 and passing the number on is racy
//! (someone may take it before the child binds), so the supervisor also
//! retries on the child's bind failure. Ports from 49152 up are avoided:
//! Windows reserves ranges there (Hyper-V, WSL) and binds fail at random.

use std::net::{Ipv4Addr, TcpListener};

pub const LOWEST: u16 = 20000;
/// Exclusive.
pub const HIGHEST: u16 = 49152;

/// A port in [LOWEST, HIGHEST) that was free on 127.0.0.1 a moment ago.
pub fn pick() -> std::io::Result<u16> {
    let span = u32::from(HIGHEST - LOWEST);
    let mut last = None;
    for _ in 0..64 {
        let r = getrandom::u32().map_err(|e| std::io::Error::other(e.to_string()))?;
        let port = LOWEST + (r % span) as u16;
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_free_ports_below_the_windows_reserved_range() {
        for _ in 0..50 {
            let p = pick().unwrap();
            assert!((LOWEST..HIGHEST).contains(&p));
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
        }
    }
}
