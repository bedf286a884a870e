//! A client for the `custom-server` example's line echo.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connect or an echo may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A line-echo client on one connection: each line `X` comes back as `pid=<pid> X`.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    /// Connects to `addr`.
    ///
    /// # Panics
    /// When the connection fails.
    pub fn connect(addr: SocketAddr) -> EchoClient {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        EchoClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends `line`; returns the pid that echoed it.
    ///
    /// # Panics
    /// When the echo fails or is not `pid=<pid> <line>`.
    pub fn echo(&mut self, line: &str) -> i32 {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("read echo");
        let rest = reply
            .strip_prefix("pid=")
            .unwrap_or_else(|| panic!("bad echo {reply:?}"));
        let (pid, echoed) = rest.trim_end().split_once(' ').expect("pid and line");
        assert_eq!(echoed, line);
        pid.parse().expect("numeric pid")
    }

    /// Reads until end of file; returns whether the server closed the connection cleanly.
    pub fn sees_close(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.reader.read_line(&mut rest), Ok(0))
    }
}
