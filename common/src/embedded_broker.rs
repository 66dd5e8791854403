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

/// rumqttd settings for one MQTT 3.1.1 listener on `listen`.
fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "loopline-embedded".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PACKET_BYTES,
            max_inflight_count: 1000,
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
        v4: Some(HashMap::from([("loopline".to_owned(), server)])),
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

/// Starts the embedded broker on `listen` and returns once it accepts connections.
pub fn start(listen: SocketAddr) -> Result<BrokerUrl> {
    let mut broker = rumqttd::Broker::new(config(listen));
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| Error::EmbeddedBroker(format!("starting the broker thread: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(Error::EmbeddedBroker(format!(
                "not listening on {listen} within 10s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(BrokerUrl::new(listen.ip().to_string(), listen.port()))
}

/// Starts the embedded broker on a free loopback port.
pub fn start_on_free_port() -> Result<BrokerUrl> {
    start(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}
