//! How a long-running command's node reaches peers: the transport (TCP or
//! iroh), the Mainline DHT, and iroh's relays.

use std::sync::Arc;

use peermq_dht::{Dht, DhtConfig};
use peermq_iroh::{Iroh, RelayCertificates, RelayUrl, Relays};
use peermq_tokio::Builder;

use crate::common::parse_host_port;

/// The transports a node may use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP: peers on this machine, the LAN, or at an address that accepts
    /// inbound connections.
    Tcp,
    /// iroh: QUIC with hole punching through NATs and relays when no
    /// direct path exists; peers are reached by key.
    Iroh,
}

/// Which relays iroh uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayChoice {
    /// n0's public relays.
    Default,
    /// No relay.
    Off,
    /// One's own relay.
    Url(RelayUrl),
}

/// Parses `--relay`: `default`, `none`, or an http(s) URL.
pub fn parse_relay(s: &str) -> Result<RelayChoice, String> {
    match s {
        "default" => Ok(RelayChoice::Default),
        "none" | "off" => Ok(RelayChoice::Off),
        url if url.starts_with("http://") || url.starts_with("https://") => url
            .parse::<RelayUrl>()
            .map(RelayChoice::Url)
            .map_err(|e| format!("`{url}` is not a relay URL ({e}); give https://HOST[:PORT]/, `default` or `none`")),
        other => Err(format!(
            "`{other}` is not a relay URL; give https://HOST[:PORT]/ (your own iroh-relay), `default` (n0's public relays) or `none`"
        )),
    }
}

/// Reads `--relay-ca`: a PEM file of certificates.
pub fn parse_relay_ca(path: &str) -> Result<RelayCertificates, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    RelayCertificates::from_pem(&pem).map_err(|e| format!("`{path}`: {e}"))
}

/// The network options every command takes (used by `listen` and
/// `connect`, the commands that keep connections).
#[derive(clap::Args, Clone, Debug)]
pub struct NetworkArgs {
    /// How connections travel: `tcp`, or `iroh` (QUIC with hole punching
    /// and relays, so peers behind NATs reach each other by key).
    #[arg(long, global = true, env = "PEERMQ_TRANSPORT", value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Find peers by key on the BitTorrent Mainline DHT, and publish this
    /// node's addresses (and relay, with iroh) there, signed by its key.
    /// `PEERMQ_DHT` takes 1/0, true/false, yes/no or on/off.
    #[arg(long, global = true, env = "PEERMQ_DHT", value_parser = clap::builder::BoolishValueParser::new())]
    pub dht: bool,
    /// A DHT node to join through (HOST:PORT) instead of the public
    /// bootstrap nodes, for a test or private network; repeat, or separate
    /// with commas, for several.
    #[arg(long = "bootstrap", global = true, env = "PEERMQ_BOOTSTRAP", value_name = "HOST:PORT", value_delimiter = ',', value_parser = parse_host_port)]
    pub bootstrap: Vec<String>,
    /// With iroh: the relay for when no direct path exists: a URL (your
    /// own iroh-relay), `default` (n0's public relays, which forward
    /// encrypted packets and see only who talks to whom), or `none`.
    #[arg(long, global = true, env = "PEERMQ_RELAY", value_name = "URL", value_parser = parse_relay, default_value = "default")]
    pub relay: RelayChoice,
    /// With iroh: also trust the certificates in this PEM file for the
    /// relay's TLS (a relay of your own with a self-signed certificate or
    /// a private CA).
    #[arg(long = "relay-ca", global = true, env = "PEERMQ_RELAY_CA", value_name = "FILE", value_parser = parse_relay_ca)]
    pub relay_ca: Option<RelayCertificates>,
}

impl NetworkArgs {
    /// Where `listen` binds when not told: every interface when these
    /// options are for reaching peers elsewhere (iroh, the DHT), else
    /// this machine only.
    pub fn default_host(&self) -> &'static str {
        if self.transport == TransportKind::Iroh || self.dht {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        }
    }

    /// `builder` set up to reach peers as these options say.
    pub fn apply(&self, mut builder: Builder) -> Builder {
        let mut config = DhtConfig::default();
        if !self.bootstrap.is_empty() {
            config = config.bootstrap(self.bootstrap.clone());
            // Test and private networks often live on one machine.
            config = config.loopback(true);
        }
        let dht = self.dht;
        match self.transport {
            TransportKind::Tcp => {
                if dht {
                    builder =
                        builder.discovery_for(move |key| Ok(Dht::new(key, config)? as Arc<_>));
                }
            }
            TransportKind::Iroh => {
                let relays = match &self.relay {
                    RelayChoice::Default => Relays::Default,
                    RelayChoice::Off => Relays::Disabled,
                    RelayChoice::Url(url) => Relays::Custom(vec![url.clone()]),
                };
                let roots = self.relay_ca.clone().unwrap_or_default();
                builder = builder.transport_for(move |key| {
                    let mut iroh = Iroh::new().relays(relays).relay_certificates(roots);
                    if dht {
                        iroh = iroh.dht(Dht::new(key, config)?);
                    }
                    iroh.transport(key)
                });
            }
        }
        builder
    }
}
