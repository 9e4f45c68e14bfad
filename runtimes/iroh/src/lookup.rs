//! The Mainline DHT as iroh's address lookup: iroh publishes its home
//! relay and direct addresses through it, and asks it where a key is.

use std::sync::Arc;

use iroh::address_lookup::{AddressLookup, EndpointData, EndpointInfo, Error, Item};
use iroh::{EndpointId, RelayUrl};
use n0_future::boxed::BoxStream;
use n0_future::StreamExt;
use peermq::PeerId;
use peermq_dht::{Dht, Record};

/// Where a lookup's answer came from, as iroh's logs name it.
const PROVENANCE: &str = "peermq-dht";

/// [`Dht`] seen as an iroh [`AddressLookup`].
#[derive(Debug)]
pub(crate) struct DhtLookup(pub(crate) Arc<Dht>);

impl AddressLookup for DhtLookup {
    fn publish(&self, data: &EndpointData) {
        self.0.set_record(Record {
            addrs: data.ip_addrs().copied().collect(),
            relay: data.relay_urls().next().map(|u| u.to_string()),
            mailboxes: Vec::new(),
        });
    }

    fn resolve(&self, id: EndpointId) -> Option<BoxStream<Result<Item, Error>>> {
        let dht = self.0.clone();
        let peer = PeerId(*id.as_bytes());
        let found = async move {
            let record = dht.resolve(&peer).await?;
            let mut info = EndpointInfo::new(id).with_ip_addrs(record.addrs);
            // A relay URL that does not parse is skipped, not fatal: the
            // addresses may still do.
            if let Some(url) = record.relay.and_then(|r| r.parse::<RelayUrl>().ok()) {
                info = info.with_relay_url(url);
            }
            Some(Ok(Item::new(info, PROVENANCE, None)))
        };
        Some(Box::pin(
            n0_future::stream::once_future(found).filter_map(|item| item),
        ))
    }
}
