//! A relay for a lab or a private network: `iroh-relay` on one IP address,
//! with a self-signed certificate and QUIC address discovery (which tells
//! each endpoint the public address its NAT gives it, so that peers can
//! punch holes), every client allowed.
//!
//! ```sh
//! cargo run --release -p peermq-iroh --example relay -- 10.0.0.1 /tmp/relay.pem
//! ```
//!
//! It writes its certificate to the file named (give it to the nodes with
//! `--relay-ca`), prints its URL on the first line of stdout, and runs
//! until killed. Ports: HTTPS on 3443 (the relay), HTTP on 3340 (the
//! captive-portal probe), QUIC on 7842 (address discovery, where
//! endpoints look for it).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const HTTPS_PORT: u16 = 3443;
const HTTP_PORT: u16 = 3340;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ip, cert_path] = args.as_slice() else {
        fail("usage: relay IP CERT_FILE (the address to serve on, where to write the certificate)");
    };
    let ip: IpAddr = ip
        .parse()
        .unwrap_or_else(|_| fail(&format!("`{ip}` is not an IP address")));

    let cert = rcgen::generate_simple_self_signed(vec![ip.to_string()])
        .unwrap_or_else(|e| fail(&format!("cannot make a certificate: {e}")));
    std::fs::write(cert_path, cert.cert.pem())
        .unwrap_or_else(|e| fail(&format!("cannot write {cert_path}: {e}")));
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| {
        b.with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
    })
    .unwrap_or_else(|e| fail(&format!("cannot set up TLS: {e}")));

    let mut relay = RelayConfig::new(SocketAddr::new(ip, HTTP_PORT));
    relay.tls = Some(TlsConfig::new(
        SocketAddr::new(ip, HTTPS_PORT),
        CertConfig::Manual { server_config: tls },
    ));
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    config.quic = Some(QuicConfig::new(SocketAddr::new(
        ip,
        iroh_relay::defaults::DEFAULT_RELAY_QUIC_PORT,
    )));
    let server = Server::spawn(config)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot start the relay: {e}")));
    println!("https://{}/", SocketAddr::new(ip, HTTPS_PORT));
    std::future::pending::<()>().await;
    drop(server);
}

fn fail(message: &str) -> ! {
    eprintln!("relay: {message}");
    std::process::exit(2);
}
