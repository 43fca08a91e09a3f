//! Bounded real traffic between namespace pods, and waiting for the agent's record of it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::Agent;
use super::netns::Pod;

/// One echo connection from `from` to `to` (run inside the pods' namespaces).
pub fn one_connection(from: &Pod, to: &Pod, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = to.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        tx.send(()).ok();
        if let Ok(mut c) = accept_within(&listener, Duration::from_secs(5)) {
            let mut buf = [0u8; 5];
            if c.read_exact(&mut buf).is_ok() {
                let _ = c.write_all(&buf);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    let ok = from
        .run(move || {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(2))).ok();
            c.write_all(b"hello").ok()?;
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).ok()
        })
        .join()
        .unwrap();
    assert!(ok.is_some(), "connection to {addr} failed");
    server.join().unwrap();
}

/// Accepts one connection, giving up after `timeout` (a client that failed never comes). The
/// connection is blocking, with `timeout` as its read and write timeouts.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    let accepted = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {timeout:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    accepted.set_nonblocking(false)?;
    accepted.set_read_timeout(Some(timeout))?;
    accepted.set_write_timeout(Some(timeout))?;
    Ok(accepted)
}

/// The agent's records so far of connections to `dst`.
pub fn records_to(agent: &Agent, dst: SocketAddr) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["dst"]["ip"] == dst.ip().to_string() && r["dst"]["port"] == dst.port())
        .collect()
}

/// The flow record of the connection to `dst` made after `skip` records to it were written.
pub fn wait_record(agent: &Agent, dst: SocketAddr, skip: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = records_to(agent, dst);
        if records.len() > skip {
            return records[skip].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow record #{skip} to {dst}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP connection from `local` (bound with SO_REUSEADDR: the port is used again as soon as
/// its previous connection is closed) to `to`.
pub fn connect_from(local: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(local) = local else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a descriptor this function owns (TcpStream takes it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let (l, t) = (sockaddr(local), sockaddr(to));
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
            || libc::bind(fd, (&raw const l).cast::<libc::sockaddr>(), len) != 0
            || libc::connect(fd, (&raw const t).cast::<libc::sockaddr>(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Makes `close` abort the connection with a RST (SO_LINGER 0): no TIME_WAIT on either end,
/// so the client's port can be used again at once.
pub fn abort_on_close(c: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<libc::c_void>(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
