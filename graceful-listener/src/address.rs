//! [`Address`]: where a listener accepts, or where a connection comes from. A plain value, at
//! the bottom of the crate: the sockets below the listeners and the listeners both name it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The address of either end of a connection, or of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket address: its path, `None` when unnamed (as client ends usually are).
    Unix(Option<PathBuf>),
}

impl Address {
    /// The TCP address, if this is one.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(addr) => Some(*addr),
            Address::Unix(_) => None,
        }
    }

    pub(crate) fn from_unix(addr: &tokio::net::unix::SocketAddr) -> Address {
        Address::Unix(addr.as_pathname().map(PathBuf::from))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Address::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}
