//! The agent from the outside: the binary's configuration handling, and runs against a real
//! broker: Mosquitto where it is installed, else the embedded broker (the broker-restart test
//! needs a broker it can stop and start, so it runs on Mosquitto only and says when it skips).

// A failing set-up step should fail the test loudly; helpers are test code too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use loopline_agent::{AgentConfig, AgentStats, run};
use loopline_common::{BrokerUrl, CancellationToken};
use loopline_proto::Message;
use loopline_proto::topic::{self, Kind};
use loopline_proto::v1::{DeviceStatus, TelemetryBatch, device_status::State};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const BIN: &str = env!("CARGO_BIN_EXE_loopline-agent");

fn agent_command() -> Command {
    let mut command = Command::new(BIN);
    // Start from a clean slate whatever the developer's shell exports.
    for (key, _) in std::env::vars() {
        if key.starts_with("LOOPLINE_") {
            command.env_remove(key);
        }
    }
    command
}

fn print_config(command: &mut Command) -> AgentConfig {
    let output = command.arg("--print-config").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    AgentConfig::parse(
        Path::new("stdout"),
        &String::from_utf8(output.stdout).unwrap(),
    )
    .unwrap()
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "site = \"file-site\"\nline = \"file-line\"\nseed = 5\nbatch_interval = \"2s\"\n",
    )
    .unwrap();

    // File over defaults.
    let config = print_config(agent_command().arg("--config").arg(&file));
    assert_eq!(
        (config.site.as_str(), config.line.as_str(), config.seed),
        ("file-site", "file-line", 5)
    );
    assert_eq!(config.devices, ["dev-1"]);

    // Environment over the file, the config file itself named by the environment.
    let config = print_config(
        agent_command()
            .env("LOOPLINE_AGENT_CONFIG", &file)
            .env("LOOPLINE_AGENT_SITE", "env-site")
            .env("LOOPLINE_AGENT_DEVICES", "x,y")
            .env("LOOPLINE_AGENT_BATCH_INTERVAL", "250ms")
            .env("LOOPLINE_BROKER", "mqtt://127.0.0.1:1999"),
    );
    assert_eq!(config.site, "env-site");
    assert_eq!(config.line, "file-line");
    assert_eq!(config.devices, ["x", "y"]);
    assert_eq!(config.batch_interval, Duration::from_millis(250));
    assert_eq!(config.broker, BrokerUrl::new("127.0.0.1", 1999));

    // Flags over the environment.
    let config = print_config(
        agent_command()
            .env("LOOPLINE_AGENT_CONFIG", &file)
            .env("LOOPLINE_AGENT_SITE", "env-site")
            .env("LOOPLINE_AGENT_SEED", "6")
            .args(["--site", "flag-site", "--devices", "p,q,r"]),
    );
    assert_eq!(config.site, "flag-site");
    assert_eq!(config.seed, 6);
    assert_eq!(config.devices, ["p", "q", "r"]);
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let output = agent_command()
        .args(["--check-config", "--devices", "a,a"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("devices"), "{stderr}");

    let output = agent_command().arg("--check-config").output().unwrap();
    assert_eq!(output.status.code(), Some(0));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "sample_rate = 5\n").unwrap();
    let output = agent_command()
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sample_rate"), "{stderr}");
}

#[test]
fn help_explains_itself() {
    let output = agent_command().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--batch-interval",
        "LOOPLINE_BROKER",
        "acknowledges",
        "--print-config",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
}

/// Writes past the test harness's capture: which broker runs, or why a test is skipped.
fn announce(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A broker on a free loopback port: Mosquitto when it is on the PATH (killed on drop), else
/// the embedded broker in this process. `LOOPLINE_TEST_BROKER=mosquitto|embedded` forces one.
struct Broker {
    child: Option<Child>,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    loopline_common::embedded_broker::free_port().unwrap()
}

fn mosquitto_wanted() -> Option<bool> {
    match std::env::var("LOOPLINE_TEST_BROKER").as_deref() {
        Ok("mosquitto") => Some(true),
        Ok("embedded") => Some(false),
        _ => None,
    }
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        if mosquitto_wanted() != Some(false)
            && let Some(broker) = Broker::mosquitto_on(port)
        {
            announce(&format!("agent tests: mosquitto on 127.0.0.1:{port}"));
            return broker;
        }
        let url = loopline_common::embedded_broker::start_on_free_port().unwrap();
        announce(&format!(
            "agent tests: mosquitto not used; embedded broker on {url}"
        ));
        Broker {
            child: None,
            port: url.port,
            _dir: None,
        }
    }

    /// Mosquitto on `port`, listening on loopback only; `None` when it is not installed
    /// (a failure when `LOOPLINE_TEST_BROKER=mosquitto`).
    fn mosquitto_on(port: u16) -> Option<Broker> {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                assert_ne!(
                    mosquitto_wanted(),
                    Some(true),
                    "LOOPLINE_TEST_BROKER=mosquitto but mosquitto cannot start: {e}"
                );
                return None;
            }
        };
        let broker = Broker {
            child: Some(child),
            port,
            _dir: Some(dir),
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(broker);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not start listening on port {port}");
    }

    fn url(&self) -> BrokerUrl {
        BrokerUrl::new("127.0.0.1", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (topic, payload) as received.
type Messages = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Everything published under `loopline/v1/#`, collected in the background.
struct Recorder {
    messages: Messages,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(broker: &Broker) -> Recorder {
        let mut options = MqttOptions::new("recorder", "127.0.0.1", broker.port);
        options.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("loopline/v1/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => sink
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
            .await
            .unwrap()
            .unwrap();
        Recorder { messages, task }
    }

    async fn stop(self) -> Vec<(String, Vec<u8>)> {
        // Let the last messages arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.task.abort();
        self.messages.lock().unwrap().clone()
    }
}

fn test_config(broker: &Broker, devices: &[&str]) -> AgentConfig {
    AgentConfig {
        broker: broker.url(),
        site: "plant".into(),
        line: "l1".into(),
        devices: devices.iter().map(|d| d.to_string()).collect(),
        batch_interval: Duration::from_millis(100),
        batches: 5,
        drain_timeout: Duration::from_secs(10),
        client_id_prefix: format!("agent-test-{}", std::process::id()),
        ..AgentConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_exactly_n_contiguous_batches_per_device() {
    let broker = Broker::start();
    let recorder = Recorder::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&broker, &["a", "b"]);
    config.report_file = Some(dir.path().join("report.json"));
    let t0 = 1_700_000_000_000_000;
    let stats = Arc::new(AgentStats::new());
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run(
            config,
            Some(t0),
            CancellationToken::new(),
            Arc::clone(&stats),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let messages = recorder.stop().await;

    assert_eq!(report.devices.len(), 2);
    for device in &report.devices {
        assert_eq!(device.batches_sealed, 5, "{device:?}");
        assert_eq!(device.batches_acked, 5, "{device:?}");
        assert_eq!((device.first_seq, device.last_seq), (Some(0), Some(4)));
        assert_eq!(device.lost_batches, 0);
    }
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.batches_acked, 10);
    assert_eq!(snapshot.samples_acked, snapshot.samples_sealed);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(written["devices"][1]["last_seq"], 4);

    // What the broker delivered: per device, seq 0..4 whose timestamps join up from t0.
    let mut batches: BTreeMap<String, Vec<TelemetryBatch>> = BTreeMap::new();
    let mut statuses: BTreeMap<String, Vec<DeviceStatus>> = BTreeMap::new();
    for (topic, payload) in messages {
        let parsed = topic::parse(&topic).unwrap();
        match parsed.kind {
            Kind::Telemetry => {
                let batch = TelemetryBatch::decode(payload.as_slice()).unwrap();
                assert_eq!(batch.device.as_ref(), Some(&parsed.device));
                batches.entry(parsed.device.device).or_default().push(batch);
            }
            Kind::Status => statuses
                .entry(parsed.device.device)
                .or_default()
                .push(DeviceStatus::decode(payload.as_slice()).unwrap()),
            Kind::Model | Kind::ModelReport => {}
        }
    }
    for (name, device) in ["a", "b"].iter().zip(&report.devices) {
        let mut got = batches.remove(*name).unwrap();
        got.sort_by_key(|b| b.seq);
        assert_eq!(
            got.iter().map(|b| b.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let mut next_ts = t0;
        let mut samples = 0;
        for batch in &got {
            assert_eq!(batch.boot_id, device.boot_id);
            assert_eq!(
                batch.base_ts_us, next_ts,
                "gap or overlap before seq {}",
                batch.seq
            );
            assert_eq!(batch.channels.len(), 4);
            let ts: Vec<Vec<i64>> = batch
                .channels
                .iter()
                .map(|c| {
                    c.samples(batch.base_ts_us)
                        .unwrap()
                        .map(|s| s.ts_us)
                        .collect()
                })
                .collect();
            for channel in &ts {
                assert_eq!(channel, &ts[0]);
                for pair in channel.windows(2) {
                    assert_eq!(pair[1] - pair[0], 1_000);
                }
            }
            next_ts = ts[0].last().unwrap() + 1_000;
            samples += batch.sample_count() as u64;
        }
        assert_eq!(samples, device.samples_acked);
        // Online when connected, offline at the end.
        let states: Vec<i32> = statuses[*name].iter().map(|s| s.state).collect();
        assert_eq!(states.first(), Some(&(State::Online as i32)), "{states:?}");
        assert_eq!(states.last(), Some(&(State::Offline as i32)), "{states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let Some(broker) = Broker::mosquitto_on(free_port()) else {
        announce(
            "agent tests: mosquitto is not installed; skipping a_broker_restart_loses_nothing",
        );
        return;
    };
    let port = broker.port;
    let mut config = test_config(&broker, &["a"]);
    config.batches = 30;
    let stats = Arc::new(AgentStats::new());
    let agent = tokio::spawn(run(
        config,
        None,
        CancellationToken::new(),
        Arc::clone(&stats),
    ));
    // Let some batches through, then take the broker away for a while.
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(broker);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let _broker = Broker::mosquitto_on(port).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let device = &report.devices[0];
    assert_eq!(device.batches_acked, 30, "{device:?}");
    assert_eq!(device.lost_batches, 0);
    assert_eq!((device.first_seq, device.last_seq), (Some(0), Some(29)));
    assert!(stats.snapshot().connection_errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_broker_counts_what_is_lost() {
    // A port nothing listens on.
    let port = free_port();
    let config = AgentConfig {
        broker: BrokerUrl::new("127.0.0.1", port),
        batch_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let token = CancellationToken::new();
    let stats = Arc::new(AgentStats::new());
    let agent = tokio::spawn(run(config, None, token.clone(), Arc::clone(&stats)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    token.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let device = &report.devices[0];
    assert!(device.batches_sealed >= 3, "{device:?}");
    assert_eq!(device.batches_acked, 0);
    assert_eq!(device.lost_batches, device.batches_sealed);
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.lost_batches, device.batches_sealed);
    assert_eq!(snapshot.lost_samples, snapshot.samples_sealed);
    assert!(snapshot.connection_errors > 0);
}
