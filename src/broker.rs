//! The embedded MQTT broker (rumqttd), for the demo and for machines without Mosquitto.
//!
//! It is a convenience, not the production path: one site runs Mosquitto, larger ones an MQTT
//! cluster. rumqttd runs its own threads and cannot be stopped; it lives as long as the
//! process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loopline_common::BrokerUrl;
use loopline_common::broker::MAX_PACKET_BYTES;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

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
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts the embedded broker on `listen` and returns once it accepts connections.
pub fn start(listen: SocketAddr) -> anyhow::Result<BrokerUrl> {
    let mut broker = rumqttd::Broker::new(config(listen));
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("starting the embedded broker thread")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("the embedded broker did not start listening on {listen} within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(BrokerUrl::new(listen.ip().to_string(), listen.port()))
}
