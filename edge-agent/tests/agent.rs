//! The agent from the outside: the binary's configuration handling, and runs against a real
//! broker: Mosquitto where it is installed, else the embedded broker (the broker-restart test
//! needs a broker it can stop and start, so it runs on Mosquitto only and says when it skips);
//! and, in [`install`], the Raspberry Pi installer run into a temporary root.

// A failing set-up step should fail the test loudly; helpers are test code too.
#![allow(clippy::unwrap_used)]

#[path = "agent/install.rs"]
mod install;

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
use loopline_proto::v1::model_report::State as ModelState;
use loopline_proto::v1::{
    DeviceStatus, ModelRelease, ModelReport, TelemetryBatch, device_status::State,
};
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
        Broker::start_on(free_port())
    }

    fn start_on(port: u16) -> Broker {
        if mosquitto_wanted() != Some(false)
            && let Some(broker) = Broker::mosquitto_on(port)
        {
            announce(&format!("agent tests: mosquitto on 127.0.0.1:{port}"));
            return broker;
        }
        let url = loopline_common::embedded_broker::start(([127, 0, 0, 1], port).into()).unwrap();
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
        wait_listening(port);
        Some(broker)
    }

    fn url(&self) -> BrokerUrl {
        BrokerUrl::new("127.0.0.1", self.port)
    }
}

/// Waits (at most 5 s) until a broker accepts connections on `port`.
fn wait_listening(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mosquitto did not start listening on port {port}");
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

fn test_config(broker: &Broker, devices: &[&str], state: &Path) -> AgentConfig {
    AgentConfig {
        broker: broker.url(),
        state_dir: state.to_owned(),
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
    let mut config = test_config(&broker, &["a", "b"], dir.path());
    config.report_file = Some(dir.path().join("report.json"));
    // Short windows, so that five 100 ms batches hold inference results.
    config.window = Duration::from_millis(100);
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
    let mut reports: BTreeMap<String, Vec<ModelReport>> = BTreeMap::new();
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
            Kind::ModelReport => reports
                .entry(parsed.device.device)
                .or_default()
                .push(ModelReport::decode(payload.as_slice()).unwrap()),
            Kind::Model => {}
        }
    }
    for (name, device) in ["a", "b"].iter().zip(&report.devices) {
        // The bootstrap model ran from the first second, and the device said so.
        assert!(device.model_version.starts_with("bootstrap-"), "{device:?}");
        let model_report = reports[*name].last().unwrap();
        assert_eq!(model_report.state, ModelState::Running as i32);
        assert_eq!(model_report.running_version, device.model_version);
        assert_eq!(statuses[*name][0].npu_profile, "hailo-8l");
        let mut got = batches.remove(*name).unwrap();
        got.sort_by_key(|b| b.seq);
        assert_eq!(
            got.iter().map(|b| b.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let mut next_ts = t0;
        let mut samples = 0;
        let mut windows = 0;
        for batch in &got {
            assert_eq!(batch.boot_id, device.boot_id);
            assert_eq!(
                batch.base_ts_us, next_ts,
                "gap or overlap before seq {}",
                batch.seq
            );
            assert_eq!(batch.channels.len(), 8);
            assert_eq!(batch.model_version, device.model_version);
            // Windows of 100 samples (100 ms) from t0, whatever the batch cuts, each scored
            // on the NPU by the running model; and a health snapshot from the NPU.
            for inference in &batch.inferences {
                assert_eq!((inference.window_start_us - t0) % 100_000, 0);
                assert_eq!(inference.window_end_us - inference.window_start_us, 99_000);
                assert!(inference.score.is_finite() && inference.latency_us > 0);
                assert_eq!(inference.model_version, device.model_version);
            }
            windows += batch.inferences.len() as u64;
            let health = batch.health.as_ref().unwrap();
            assert!(health.npu_temperature_c > 0.0 && health.npu_power_w > 0.0);
            assert!(health.npu_clock_mhz > 0);
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
        assert_eq!(windows, samples / 8 / 100, "one result per whole window");
        assert_eq!(windows, device.windows_scored);
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
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&broker, &["a"], dir.path());
    config.batches = 30;
    let stats = Arc::new(AgentStats::new());
    let agent = tokio::spawn(run(
        config,
        None,
        CancellationToken::new(),
        Arc::clone(&stats),
    ));
    // Let some batches through (however long the agent takes to start on a busy machine),
    // then take the broker away for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().batches_acked == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch acknowledged within 30s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn what_the_broker_never_acknowledged_is_sent_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on yet.
    let port = free_port();
    let config = AgentConfig {
        broker: BrokerUrl::new("127.0.0.1", port),
        state_dir: dir.path().to_owned(),
        batch_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let token = CancellationToken::new();
    let stats = Arc::new(AgentStats::new());
    let agent = tokio::spawn(run(config.clone(), None, token.clone(), Arc::clone(&stats)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    let first = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = first.devices[0].clone();
    assert!(first.batches_sealed >= 3, "{first:?}");
    assert_eq!(first.batches_acked, 0);
    // Nothing is lost: it all waits in the spool.
    assert_eq!(first.lost_batches, 0, "{first:?}");
    assert_eq!(first.pending_batches, first.batches_sealed);
    assert!(stats.snapshot().connection_errors > 0);

    // The broker comes; the next start sends the earlier boot's batches first.
    let broker = Broker::start_on(port);
    let mut config = config;
    config.batches = 2;
    config.drain_timeout = Duration::from_secs(10);
    let recorder = Recorder::start(&broker).await;
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        run(
            config,
            None,
            CancellationToken::new(),
            Arc::new(AgentStats::new()),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let second = &second.devices[0];
    assert_eq!(
        second.earlier_boot_batches_acked, first.batches_sealed,
        "{second:?}"
    );
    assert_eq!(second.batches_acked, 2);
    assert_eq!(second.pending_batches, 0);
    let messages = recorder.stop().await;
    let mut earlier: Vec<u64> = messages
        .iter()
        .filter(|(topic, _)| topic.ends_with("/telemetry"))
        .map(|(_, payload)| TelemetryBatch::decode(payload.as_slice()).unwrap())
        .filter(|batch| batch.boot_id == first.boot_id)
        .map(|batch| batch.seq)
        .collect();
    earlier.sort_unstable();
    assert_eq!(earlier, (0..first.batches_sealed).collect::<Vec<_>>());
}

/// Mosquitto with persistence on a fixed port: stopped with SIGTERM it saves its sessions
/// and queues, and a restart on the same port restores them. `None` without Mosquitto.
struct PersistentBroker {
    child: Option<Child>,
    conf: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PersistentBroker {
    fn start(port: u16) -> Option<PersistentBroker> {
        if mosquitto_wanted() == Some(false) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user before it saves its persistence
        // file.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 1000000\nmax_queued_bytes 0\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut broker = PersistentBroker {
            child: None,
            conf,
            port,
            _dir: dir,
        };
        broker.spawn()?;
        Some(broker)
    }

    fn spawn(&mut self) -> Option<()> {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                assert_ne!(
                    mosquitto_wanted(),
                    Some(true),
                    "mosquitto cannot start: {e}"
                );
                return None;
            }
        };
        self.child = Some(child);
        wait_listening(self.port);
        Some(())
    }

    /// SIGTERM, as systemd stops it: it saves what it holds.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    fn restart(&mut self) {
        self.spawn().unwrap();
    }
}

impl Drop for PersistentBroker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A subscriber to every device's telemetry with a persistent session: the broker keeps its
/// subscription and queues for it across a broker restart, so everything the broker
/// acknowledged to an agent reaches it. It reconnects by itself.
struct PersistentRecorder {
    messages: Messages,
    task: tokio::task::JoinHandle<()>,
}

impl PersistentRecorder {
    async fn start(port: u16) -> PersistentRecorder {
        let mut options = MqttOptions::new(
            format!("recorder-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(1 << 24, 1 << 24);
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("loopline/v1/+/+/+/telemetry", QoS::AtLeastOnce)
            .await
            .unwrap();
        let messages: Messages = Arc::default();
        let sink = Arc::clone(&messages);
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
            .await
            .unwrap()
            .unwrap();
        PersistentRecorder { messages, task }
    }

    /// Waits (at most 20 s) until `batches` distinct batches arrived, then stops.
    async fn wait_for_batches(self, batches: u64) -> Vec<(String, Vec<u8>)> {
        for _ in 0..200 {
            let got: u64 = batches_by_boot(&self.messages.lock().unwrap())
                .values()
                .map(|seqs| seqs.len() as u64)
                .sum();
            if got >= batches {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.task.abort();
        self.messages.lock().unwrap().clone()
    }
}

/// Sends SIGTERM (what systemd sends) so that Mosquitto saves its persistence file.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mosquitto did not stop on SIGTERM");
}

/// Telemetry batches among recorded messages, grouped by (device, boot_id) with their
/// payloads, so that a re-sent batch can be compared with the first copy.
fn batches_by_boot(
    messages: &[(String, Vec<u8>)],
) -> BTreeMap<(String, String), BTreeMap<u64, Vec<u8>>> {
    let mut out: BTreeMap<(String, String), BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for (topic, payload) in messages {
        if !topic.ends_with("/telemetry") {
            continue;
        }
        let batch = TelemetryBatch::decode(payload.as_slice()).unwrap();
        let device = batch.device.as_ref().unwrap().device.clone();
        let seen = out.entry((device, batch.boot_id.clone())).or_default();
        if let Some(first) = seen.get(&batch.seq) {
            assert_eq!(
                first, payload,
                "seq {} was re-sent with other content",
                batch.seq
            );
        }
        seen.insert(batch.seq, payload.clone());
    }
    out
}

/// The seqs a spool folder still holds, by boot_id.
fn spooled_seqs(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let (mut spool, _) =
        loopline_spool::Spool::open(dir, loopline_spool::SpoolConfig::default()).unwrap();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(record) = spool.next_unsent().unwrap() {
        let batch = TelemetryBatch::decode(record.payload.as_slice()).unwrap();
        out.entry(batch.boot_id).or_default().push(batch.seq);
    }
    spool.close().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_spooled_batch() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let spool_dir = state.path().join("spool/site-1/line-1/k");
    let agent_args = |batches: u64| {
        let mut command = agent_command();
        command
            .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--devices", "k", "--batch-interval", "50ms"])
            .args(["--window", "200ms", "--spool-fsync", "interval:1s"])
            .args(["--batches", &batches.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };

    // With Mosquitto: publish for a while, lose the broker, keep spooling, then SIGKILL.
    // Without it the agent spools against a port where nothing listens yet.
    let persistent = PersistentBroker::start(port);
    let recorder = match &persistent {
        Some(_) => Some(PersistentRecorder::start(port).await),
        None => None,
    };
    let mut agent = agent_args(0).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut persistent = match persistent {
        Some(mut broker) => {
            announce("agent tests: the sigkill test publishes to mosquitto, then loses it");
            broker.stop();
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            Some(broker)
        }
        None => {
            announce("agent tests: mosquitto is not installed; the sigkill test spools offline");
            None
        }
    };
    agent.kill().unwrap();
    agent.wait().unwrap();

    let spooled = spooled_seqs(&spool_dir);
    assert_eq!(spooled.len(), 1, "one boot in the spool: {spooled:?}");
    let (boot, pending) = spooled.iter().next().unwrap();
    assert!(
        pending.len() >= 5,
        "the spool should hold the outage: {pending:?}"
    );
    let last = *pending.last().unwrap();

    // Restart everything: the agent sends what the killed boot left before anything new.
    let (_embedded, recorder) = match (&mut persistent, recorder) {
        (Some(broker), Some(recorder)) => {
            broker.restart();
            (None, recorder)
        }
        _ => {
            let broker = Broker::start_on(port);
            let recorder = PersistentRecorder::start(port).await;
            (Some(broker), recorder)
        }
    };
    let restarted = agent_args(3).output().unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let recorded = recorder.wait_for_batches(last + 1 + 3).await;

    let by_boot = batches_by_boot(&recorded);
    let killed: Vec<u64> = by_boot[&("k".to_owned(), boot.clone())]
        .keys()
        .copied()
        .collect();
    assert_eq!(
        killed,
        (0..=last).collect::<Vec<_>>(),
        "every batch the killed agent spooled arrived"
    );
    assert!(spooled_seqs(&spool_dir).is_empty(), "the spool drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_a_minute_under_load_loses_no_sample() {
    let port = free_port();
    let Some(mut persistent) = PersistentBroker::start(port) else {
        announce(
            "agent tests: mosquitto is not installed; skipping \
             broker_down_for_a_minute_under_load_loses_no_sample",
        );
        return;
    };
    let recorder = PersistentRecorder::start(port).await;

    // Load: 4 devices at 2 kHz x 8 channels, 100 ms batches.
    let state = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        broker: BrokerUrl::new("127.0.0.1", port),
        state_dir: state.path().to_owned(),
        devices: ["a", "b", "c", "d"].map(String::from).to_vec(),
        sample_rate_hz: std::num::NonZeroU32::new(2_000).unwrap(),
        batch_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(30),
        client_id_prefix: format!("outage-{}", std::process::id()),
        ..AgentConfig::default()
    };
    let token = CancellationToken::new();
    let stats = Arc::new(AgentStats::new());
    let agent = tokio::spawn(run(config, None, token.clone(), Arc::clone(&stats)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    persistent.stop();
    let during = stats.snapshot();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let sealed_in_outage = stats.snapshot().batches_sealed - during.batches_sealed;
    persistent.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    token.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Let the queue reach the subscriber.
    let expected: u64 = report.devices.iter().map(|d| d.batches_sealed).sum();
    let messages = recorder.wait_for_batches(expected).await;

    assert!(
        sealed_in_outage >= 4 * 500,
        "sealed during the outage: {sealed_in_outage}"
    );
    let by_boot = batches_by_boot(&messages);
    for device in &report.devices {
        assert_eq!(device.lost_batches, 0, "{device:?}");
        assert_eq!(device.pending_batches, 0, "{device:?}");
        assert_eq!(device.batches_acked, device.batches_sealed, "{device:?}");
        let seqs = &by_boot[&(device.device.clone(), device.boot_id.clone())];
        let missing: Vec<u64> = (0..device.batches_sealed)
            .filter(|seq| !seqs.contains_key(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: {} of {} batches never arrived: {missing:?}",
            device.device,
            missing.len(),
            device.batches_sealed
        );
        let samples: u64 = seqs
            .values()
            .map(|p| TelemetryBatch::decode(p.as_slice()).unwrap().sample_count() as u64)
            .sum();
        assert_eq!(
            samples, device.samples_acked,
            "{}: every sample arrived",
            device.device
        );
    }
    assert_eq!(stats.snapshot().lost_samples, 0);
}

/// A signed release of a model fitted like the bootstrap one (other seed, other version).
fn release(version: &str, key: &loopline_model::release::SigningKey) -> ModelRelease {
    use loopline_model::release;
    let mut artifact = loopline_agent::bootstrap::fit(loopline_agent::bootstrap::BootstrapKey {
        seed: 99,
        sample_rate_hz: std::num::NonZeroU32::new(1000).unwrap(),
        window_samples: 100,
    })
    .unwrap();
    artifact.metadata.model_version = version.to_owned();
    let bytes = artifact.to_bytes().unwrap();
    let digest = release::sha256(&bytes);
    ModelRelease {
        schema_version: 1,
        version: version.to_owned(),
        sha256: digest.to_vec(),
        size: bytes.len() as u64,
        signature: release::sign(&digest, key).to_vec(),
        artifact: bytes,
        created_ts_us: 0,
        key_id: "test".to_owned(),
    }
}

/// Waits until a retained model report satisfies `done`; returns it.
async fn report_where(recorder: &Recorder, done: impl Fn(&ModelReport) -> bool) -> ModelReport {
    for _ in 0..200 {
        let found = recorder
            .messages
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|(topic, _)| topic.ends_with("/model/report"))
            .map(|(_, payload)| ModelReport::decode(payload.as_slice()).unwrap())
            .next();
        if let Some(report) = found.filter(|r| done(r)) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such model report arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_releases_run_and_tampered_ones_are_refused() {
    use loopline_model::release::signing_key_from_seed;
    let broker = Broker::start();
    let recorder = Recorder::start(&broker).await;
    let state = tempfile::tempdir().unwrap();
    let key = signing_key_from_seed(7);
    let mut config = test_config(&broker, &["m"], state.path());
    config.batches = 0;
    config.window = Duration::from_millis(100);
    config.model_public_key = Some(hex::encode(key.verifying_key().as_bytes()));
    let token = CancellationToken::new();
    let agent = tokio::spawn(run(
        config.clone(),
        None,
        token.clone(),
        Arc::new(AgentStats::new()),
    ));
    let first = report_where(&recorder, |r| r.state == ModelState::Running as i32).await;
    assert!(first.running_version.starts_with("bootstrap-"), "{first:?}");

    let mut options = MqttOptions::new("releaser", "127.0.0.1", broker.port);
    options.set_max_packet_size(1 << 24, 1 << 24);
    let (publisher, mut eventloop) = AsyncClient::new(options, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let line_topic = topic::line_model_topic("plant", "l1");
    let publish = |release: ModelRelease| {
        let publisher = publisher.clone();
        let topic = line_topic.clone();
        async move {
            publisher
                .publish(topic, QoS::AtLeastOnce, true, release.encode_to_vec())
                .await
                .unwrap();
        }
    };

    // A good release runs from the next batch on.
    publish(release("v2", &key)).await;
    let running = report_where(&recorder, |r| r.running_version == "v2").await;
    assert_eq!(running.last_error, "");

    // Tampered: one byte of the artifact changed after signing.
    let mut tampered = release("v3", &key);
    let middle = tampered.artifact.len() / 2;
    tampered.artifact[middle] ^= 0x01;
    publish(tampered).await;
    let refused = report_where(&recorder, |r| r.rejected_version == "v3").await;
    assert_eq!(refused.state, ModelState::Rejected as i32);
    assert_eq!(refused.running_version, "v2");
    assert!(refused.last_error.contains("sha"), "{refused:?}");

    // Unsigned, and signed by another key.
    let mut unsigned = release("v4", &key);
    unsigned.signature.clear();
    publish(unsigned).await;
    let refused = report_where(&recorder, |r| r.rejected_version == "v4").await;
    assert!(refused.last_error.contains("unsigned"), "{refused:?}");
    publish(release("v5", &signing_key_from_seed(8))).await;
    let refused = report_where(&recorder, |r| r.rejected_version == "v5").await;
    assert!(refused.last_error.contains("signature"), "{refused:?}");
    assert_eq!(refused.running_version, "v2");

    // Batches sealed after the refusals still come from v2, with scores.
    let seen = recorder.messages.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later: Vec<TelemetryBatch> = recorder.messages.lock().unwrap()[seen..]
        .iter()
        .filter(|(topic, _)| topic.ends_with("/telemetry"))
        .map(|(_, payload)| TelemetryBatch::decode(payload.as_slice()).unwrap())
        .collect();
    assert!(!later.is_empty());
    for batch in &later {
        assert_eq!(batch.model_version, "v2");
        assert!(batch.inferences.iter().all(|i| i.model_version == "v2"));
    }
    token.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.devices[0].model_version, "v2");

    // The accepted release is kept: the next start runs it (after verifying it again).
    let mut again = config;
    again.batches = 1;
    let report = run(
        again,
        None,
        CancellationToken::new(),
        Arc::new(AgentStats::new()),
    )
    .await
    .unwrap();
    assert_eq!(report.devices[0].model_version, "v2");
}
