//! `loopline-bench-load`: publishes a deterministic telemetry load at QoS 1 and prints one
//! JSON line saying what it sent.
//!
//! Unpaced (the default), every batch is encoded into memory first, so the publishing loop
//! does nothing but hand ready bytes to the MQTT client: the rate measured is the broker's
//! and the subscriber's, not the generator's. Paced (`--rate`), batches are built in memory
//! first too, and each is stamped and encoded when its turn comes, its last sample at the
//! publish time, so that a subscriber's sample-to-lake latency can be measured from the
//! samples' own timestamps.
//!
//! Batches go out device-interleaved (device 0 seq 0, device 1 seq 0, …), as many devices
//! publishing at once would send them. The run ends when the broker has acknowledged every
//! batch (PUBACK).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use loopline_bench_ingest::{BROKER_MAX_PACKET, FIXED_START_US, LoadSpec, now_us};
use loopline_proto::Message;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Publishes a deterministic Loopline telemetry load at QoS 1 and prints a JSON summary.
#[derive(Debug, Parser)]
#[command(name = "loopline-bench-load")]
struct Args {
    /// Broker port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Devices publishing.
    #[arg(long, default_value_t = 40)]
    devices: usize,
    /// Sites the devices are spread over.
    #[arg(long, default_value_t = 2)]
    sites: usize,
    /// Lines per site.
    #[arg(long, default_value_t = 2)]
    lines_per_site: usize,
    /// Batches each device sends.
    #[arg(long, default_value_t = 100)]
    messages_per_device: u64,
    /// Channels per batch.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Samples per channel per batch.
    #[arg(long, default_value_t = 125)]
    samples: usize,
    /// Time between two samples of a channel, in microseconds (1000 = 1 kHz).
    #[arg(long, default_value_t = 1000)]
    sample_period_us: i64,
    /// Seed of the values and boot ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Batches per second over all devices; 0 publishes as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Give up when the broker has not acknowledged everything after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Debug, Serialize)]
struct DeviceSent {
    device: String,
    site: String,
    line: String,
    boot_id: String,
    seq_first: u64,
    seq_last: u64,
}

#[derive(Debug, Serialize)]
struct Summary {
    messages: u64,
    samples: u64,
    payload_bytes: u64,
    paced_rate: f64,
    encode_s: f64,
    /// When the first batch was written to the broker's socket.
    first_publish_us: i64,
    last_publish_us: i64,
    /// When the broker acknowledged the last batch.
    last_ack_us: i64,
    devices: Vec<DeviceSent>,
}

/// Times the event loop saw, handed back when every batch is acknowledged.
#[derive(Debug, Default, Clone, Copy)]
struct Acked {
    first_publish_us: i64,
    last_publish_us: i64,
    last_ack_us: i64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = LoadSpec {
        devices: args.devices,
        sites: args.sites,
        lines_per_site: args.lines_per_site,
        messages_per_device: args.messages_per_device,
        channels: args.channels,
        samples: args.samples,
        sample_period_us: args.sample_period_us,
        seed: args.seed,
    };
    if spec.devices == 0 || spec.messages_per_device == 0 || spec.samples_per_message() == 0 {
        bail!("the load is empty: devices, messages per device, channels and samples must be > 0");
    }
    let devices = spec.devices();
    let paced = args.rate > 0.0;

    // Everything is built before the first byte goes out.
    let encode_start = std::time::Instant::now();
    let mut batches = Vec::with_capacity(spec.messages() as usize);
    for seq in 0..spec.messages_per_device {
        for (d, device) in devices.iter().enumerate() {
            let base = FIXED_START_US + seq as i64 * spec.batch_span_us();
            let batch = spec.batch(device, seq, base);
            let payload = if paced {
                Payload::Batch(Box::new(batch))
            } else {
                Payload::Encoded(Bytes::from(batch.encode_to_vec()))
            };
            batches.push((d, payload));
        }
    }
    let encode_s = encode_start.elapsed().as_secs_f64();

    let mut options = MqttOptions::new(
        format!("loopline-bench-load-{}", std::process::id()),
        "127.0.0.1",
        args.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(BROKER_MAX_PACKET));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);

    let total = spec.messages();
    let (done_tx, done_rx) = oneshot::channel();
    let (connected_tx, connected_rx) = oneshot::channel();
    let events = tokio::spawn(async move {
        let mut acked = Acked::default();
        let mut acks = 0u64;
        let mut published = 0u64;
        let mut connected = Some(connected_tx);
        let mut done = Some(done_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                    let now = now_us();
                    if published == 0 {
                        acked.first_publish_us = now;
                    }
                    published += 1;
                    acked.last_publish_us = now;
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acks += 1;
                    if acks == total {
                        acked.last_ack_us = now_us();
                        if let Some(tx) = done.take() {
                            let _ = tx.send(acked);
                        }
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "broker connection on port {}: {e}",
                        args.port
                    ));
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected_rx)
        .await
        .context("no CONNACK from the broker within 10 s")?
        .context("the MQTT event loop ended before connecting")?;

    let start = Instant::now();
    let period = if paced {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::ZERO
    };
    let mut payload_bytes = 0u64;
    for (i, (d, payload)) in batches.into_iter().enumerate() {
        let bytes = match payload {
            Payload::Encoded(bytes) => bytes,
            Payload::Batch(mut batch) => {
                tokio::time::sleep_until(start + period * i as u32).await;
                // The last sample is stamped now: none lies in the future.
                let base = now_us() - (spec.samples as i64 - 1) * spec.sample_period_us;
                batch.base_ts_us = base;
                batch.sealed_ts_us = base + spec.batch_span_us();
                Bytes::from(batch.encode_to_vec())
            }
        };
        payload_bytes += bytes.len() as u64;
        client
            .publish_bytes(devices[d].topic.clone(), QoS::AtLeastOnce, false, bytes)
            .await
            .context("handing a batch to the MQTT client")?;
    }

    let acked = tokio::select! {
        acked = done_rx => acked.context("the MQTT event loop ended before every batch was acknowledged")?,
        () = tokio::time::sleep(Duration::from_secs(args.timeout_s)) => {
            bail!("the broker did not acknowledge all {total} batches within {} s", args.timeout_s)
        }
    };
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), events).await;

    let summary = Summary {
        messages: total,
        samples: spec.total_samples(),
        payload_bytes,
        paced_rate: args.rate,
        encode_s,
        first_publish_us: acked.first_publish_us,
        last_publish_us: acked.last_publish_us,
        last_ack_us: acked.last_ack_us,
        devices: devices
            .iter()
            .map(|d| DeviceSent {
                device: d.id.device.clone(),
                site: d.id.site.clone(),
                line: d.id.line.clone(),
                boot_id: d.boot_id.clone(),
                seq_first: 0,
                seq_last: spec.messages_per_device - 1,
            })
            .collect(),
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// A batch ready to send, or built but waiting for its publish-time stamp.
#[derive(Debug)]
enum Payload {
    Encoded(Bytes),
    Batch(Box<loopline_proto::v1::TelemetryBatch>),
}
