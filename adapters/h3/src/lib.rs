//! HTTP/3 (quinn + h3) served from an inherited UDP socket, upgraded with no request lost.
//!
//! QUIC runs every connection of every worker over one UDP socket, which the master binds
//! once (`einhorn-master -b 0.0.0.0:443,udp`) and every generation of workers inherits. A
//! datagram is read by whichever process reads first, so a new worker would see packets of
//! connections it does not know and, as any QUIC server does, answer with a stateless reset:
//! the old worker's clients would be cut. This crate routes instead.
//!
//! - **Connection IDs name their worker.** Each ID carries the owning worker's tag, sealed
//!   with a key from the [key ring](graceful_listener::keyring) every generation shares: any
//!   worker reads the owner of any datagram, no observer can.
//! - **A relay between workers.** A worker that reads a datagram owned by another hands it
//!   over a local Unix datagram socket (in the abstract namespace, checked to come from the
//!   same user), with the client's address and ECN bits; the owner answers by the shared
//!   socket itself.
//! - **New clients are validated first.** A client's first Initial gets a Retry whose
//!   connection ID names the worker that sent it, so the rest of its handshake finds that
//!   worker whichever process reads it; the Retry token's key is shared too.
//! - **The drain.** On SIGUSR2 a worker sends GOAWAY on each connection, finishes each
//!   request in flight, closes, and exits by the drain deadline at the latest. Once another
//!   worker serves, it stops reading the shared socket and gets its datagrams by the relay;
//!   the relay to it ends when it exits.
//! - **Shared secrets.** The stateless-reset key and the token key come from the ring too, so
//!   no generation can send a valid-looking reset for another's connection by mistake, and
//!   address-validation tokens survive upgrades.
//!
//! The ring is the master's (einhorn-master, `EINHORN_KEYS_FD`) or a key file the operator
//! names; a worker with a ring of its own (under another manager, without a key file) serves
//! but cannot be upgraded without cutting its connections.
//!
//! # Example
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let hello = tower::service_fn(|_req: http::Request<einhorn_h3::RequestBody>| async {
//!         Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from("hello\n"))))
//!     });
//!     // einhorn-master -b 127.0.0.1:8443,udp -- ./app
//!     einhorn_h3::run(hello, 0)
//!         .tls(einhorn_h3::tls_config("cert.pem", "key.pem")?)
//!         .await?;
//!     Ok(())
//! }
//! ```

mod body;
mod cid;
mod frame;
mod packet;
mod relay;
mod run;
mod serve;
mod socket;

pub use body::RequestBody;
pub use graceful_listener::{RunError, RunReport};
pub use run::{H3Run, H3Service, run};

/// An error from a service or a body, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS configuration for HTTP/3 from a PEM certificate chain and key: ALPN `h3`, session
/// tickets from the shared key ring.
///
/// # Errors
/// A [`graceful_listener::TlsError`] naming the file at fault.
///
/// # Example
/// ```no_run
/// let tls = einhorn_h3::tls_config("/etc/app/cert.pem", "/etc/app/key.pem")?;
/// # Ok::<(), graceful_listener::TlsError>(())
/// ```
pub fn tls_config(
    cert: impl AsRef<std::path::Path>,
    key: impl AsRef<std::path::Path>,
) -> Result<std::sync::Arc<rustls::ServerConfig>, graceful_listener::TlsError> {
    graceful_listener::tls::server_config(cert, key, &[b"h3"])
}

/// The `Alt-Svc` value an HTTP/1 or HTTP/2 listener sends to tell clients that HTTP/3 is
/// served on UDP `port` of the same host: `h3=":PORT"; ma=86400`.
///
/// # Example
/// ```
/// assert_eq!(einhorn_h3::alt_svc(8443), "h3=\":8443\"; ma=86400");
/// ```
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400"))
        .expect("digits and ASCII make a valid header value")
}
