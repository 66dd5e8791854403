//! The embedded MQTT broker (rumqttd), for the demo, for tests on machines without Mosquitto,
//! and for trying Loopline out. Behind the `embedded-broker` feature, so the agent's own
//! dependency tree stays free of it.
//!
//! It is a convenience, not the production path: one site runs Mosquitto, larger ones an MQTT
//! cluster. rumqttd runs its own threads and cannot be stopped; it lives as long as the
//! process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::broker::MAX_PACKET_BYTES;
use crate::{BrokerUrl, Error, Result};

/// rumqttd settings for an MQTT 3.1.1 listener on `listen` and, if given, an MQTT 5 listener
/// on `listen_v5` (rumqttd serves each protocol on its own port).
fn config(listen: SocketAddr, listen_v5: Option<SocketAddr>) -> Config {
    let server = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PACKET_BYTES,
            // Ingest acknowledges a message only once its file is committed, so it keeps up
            // to its Receive Maximum (2,048 by default) unacknowledged.
            max_inflight_count: usize::from(u16::MAX),
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([(
            "loopline".to_owned(),
            server("loopline", listen),
        )])),
        v5: listen_v5
            .map(|l| HashMap::from([("loopline-v5".to_owned(), server("loopline-v5", l))])),
        ..Config::default()
    }
}

/// A free port on 127.0.0.1 (the OS picks it; a tiny race with other processes remains).
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::EmbeddedBroker(format!("finding a free loopback port: {e}")))
}

/// The addresses of a broker started with [`start_with_v5`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// MQTT 3.1.1, for agents.
    pub v4: BrokerUrl,
    /// MQTT 5, for ingest.
    pub v5: BrokerUrl,
}

/// Starts the embedded broker with an MQTT 3.1.1 listener on `listen` only.
pub fn start(listen: SocketAddr) -> Result<BrokerUrl> {
    launch(listen, None)
}

/// Starts the embedded broker with MQTT 3.1.1 on `listen` and MQTT 5 on `listen_v5`.
pub fn start_with_v5(listen: SocketAddr, listen_v5: SocketAddr) -> Result<Listeners> {
    let v4 = launch(listen, Some(listen_v5))?;
    wait_listening(listen_v5)?;
    Ok(Listeners {
        v4,
        v5: BrokerUrl::new(listen_v5.ip().to_string(), listen_v5.port()),
    })
}

/// Starts the embedded broker with both listeners on free loopback ports.
pub fn start_on_free_ports() -> Result<Listeners> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let v4 = free_port()?;
    let mut v5 = free_port()?;
    while v5 == v4 {
        v5 = free_port()?;
    }
    start_with_v5(loopback(v4), loopback(v5))
}

fn launch(listen: SocketAddr, listen_v5: Option<SocketAddr>) -> Result<BrokerUrl> {
    let mut broker = rumqttd::Broker::new(config(listen, listen_v5));
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| Error::EmbeddedBroker(format!("starting the broker thread: {e}")))?;
    wait_listening(listen)?;
    Ok(BrokerUrl::new(listen.ip().to_string(), listen.port()))
}

fn wait_listening(listen: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(Error::EmbeddedBroker(format!(
                "not listening on {listen} within 10s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
