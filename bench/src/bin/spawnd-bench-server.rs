//! `spawnd-bench-server`: the tiny test server every spawner launches in the benchmarks.
//!
//! It listens on the port of `JUPYTERHUB_SERVICE_URL` (how JupyterHub ≥ 2 tells a single-user
//! server where to listen), or on the port given as its first argument, and answers every
//! connection with a minimal HTTP 200. Without a port it just waits. It keeps the default
//! signal dispositions, so it exits on the first SIGINT or SIGTERM, like a server that shuts
//! down at once.

use std::io::Write;
use std::net::TcpListener;

/// `http://127.0.0.1:PORT/user/x/` → (`127.0.0.1`, PORT).
fn parse_service_url(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() || host == "0.0.0.0" {
        "127.0.0.1"
    } else {
        host
    };
    Some((host.to_string(), port.parse().ok()?))
}

fn main() {
    let from_arg = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<u16>().ok())
        .map(|p| ("127.0.0.1".to_string(), p));
    let target = from_arg.or_else(|| {
        std::env::var("JUPYTERHUB_SERVICE_URL")
            .ok()
            .and_then(|u| parse_service_url(&u))
    });
    let Some((host, port)) = target else {
        loop {
            std::thread::park();
        }
    };
    let listener = match TcpListener::bind((host.as_str(), port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spawnd-bench-server: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_service_url;

    #[test]
    fn service_urls() {
        assert_eq!(
            parse_service_url("http://127.0.0.1:41234/user/a/"),
            Some(("127.0.0.1".to_string(), 41234))
        );
        assert_eq!(
            parse_service_url("http://0.0.0.0:80"),
            Some(("127.0.0.1".to_string(), 80))
        );
        assert_eq!(parse_service_url("http://host/no-port"), None);
    }
}
