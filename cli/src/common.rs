//! What both programs, `peermq` and `hypem`, share: how a command-line
//! mistake is reported, and how a host name becomes an address.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

/// Reports a command-line mistake in one line (clap's own report spans
/// several, with its tips joined on), with exit code 2 and a pointer to
/// `help`; help and version go to stdout with 0.
pub fn usage_error(e: &clap::Error, help: &str) -> ExitCode {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // The program alone: the help is the most useful answer.
        let _ = e.print();
        return ExitCode::from(2);
    }
    let rendered = e.render().to_string();
    let mut lines = rendered.lines();
    let mut message: Vec<&str> = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        message.push(line.trim());
    }
    let tips: Vec<&str> = lines
        .filter_map(|l| l.trim().strip_prefix("tip:"))
        .map(str::trim)
        .collect();
    let joined = message.join(" ");
    let mut text = joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string();
    for tip in tips {
        text.push_str("; ");
        text.push_str(tip);
    }
    eprintln!("error: {text}; see `{help}`");
    ExitCode::from(2)
}

/// The address `host` and `port` name, resolving a host name. IPv4 comes
/// first when a name has both: nodes listen on 127.0.0.1 by default, and
/// `localhost` would otherwise often resolve to `::1`, where none listens.
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| {
            format!("cannot resolve host `{host}`; give an IP address such as 127.0.0.1 or 0.0.0.0")
        })?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next().with_context(|| {
        format!("host `{host}` resolves to no address; give an IP address such as 127.0.0.1")
    })
}

/// Checks a `HOST:PORT` given on the command line.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    const HINT: &str = "expected HOST:PORT, such as 127.0.0.1:4000 or example.org:4000 (an IPv6 address in brackets: [::1]:4000)";
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("port 0 cannot be dialed; {HINT}"))
        } else {
            Ok(s.to_string())
        };
    }
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0) =>
        {
            Ok(s.to_string())
        }
        _ => Err(HINT.to_string()),
    }
}
